// The one place where absl::Status becomes grpc::Status (codes map one to one).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace kvtier {

inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace kvtier
