// FdBroker: hands file descriptors (GPU pool exports) to local engine processes. gRPC cannot carry
// descriptors, so GetPoolHandle answers with a one-time ticket and the engine fetches the descriptors
// from this unix socket (SOCK_SEQPACKET, mode 0660, next to the gRPC socket) with SCM_RIGHTS.
//
// Protocol (docs/gpu_pool_export.md): the engine connects and sends the 16-byte ticket; the broker
// answers with messages of a FdHeader each, carrying up to kMaxFdsPerMessage descriptors in their
// ancillary data, until `total` descriptors have gone (one message with total 0 and a non-zero status
// when the ticket is unknown or expired), then closes the connection. A ticket works once and expires
// after kTicketTtl; the broker closes the descriptors of tickets that expire unclaimed.
//
// Thread-safety: Offer may be called from any thread; one thread serves the socket.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/fd_transfer.h"
#include "tiering/sync.h"

namespace kvtier {

class FdBroker {
 public:
  static constexpr absl::Duration kTicketTtl = absl::Seconds(10);

  static absl::StatusOr<std::unique_ptr<FdBroker>> Start(const std::string& path);
  ~FdBroker();
  FdBroker(const FdBroker&) = delete;
  FdBroker& operator=(const FdBroker&) = delete;

  // Takes ownership of `fds`; returns the ticket that claims them.
  std::string Offer(std::vector<int> fds);
  const std::string& path() const { return path_; }

 private:
  struct Pending {
    std::vector<int> fds;
    absl::Time expires;
  };
  explicit FdBroker(std::string path) : path_(std::move(path)) {}
  void Loop();
  void Serve(int conn);
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  Mutex mu_;
  std::map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvtier
