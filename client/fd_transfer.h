// The descriptor socket's wire format (daemon/fd_broker.h serves it) and the engine's side of it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvtier {

struct FdHeader {
  uint32_t magic = 0x4446564b;  // "KVFD"
  uint32_t status = 0;          // 0: ok; 1: unknown or expired ticket
  uint32_t total = 0;           // descriptors in the whole answer
  uint32_t in_message = 0;      // descriptors attached to this message
};

inline constexpr int kMaxFdsPerMessage = 250;  // below the kernel's SCM_MAX_FD (253)
inline constexpr size_t kFdTicketBytes = 16;

// Fetches the descriptors of `ticket` from the descriptor socket at `path`; the caller owns them.
// PERMISSION_DENIED for an unknown, used or expired ticket.
absl::StatusOr<std::vector<int>> FetchFds(const std::string& path, const std::string& ticket,
                                          absl::Duration timeout = absl::Seconds(5));

}  // namespace kvtier
