// The one place where kernels/' KernelStatus becomes an absl::Status.
#pragma once

#include "absl/status/status.h"
#include "kernels/status.h"

namespace kvtier {

inline absl::Status ToStatus(const KernelStatus& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

}  // namespace kvtier
