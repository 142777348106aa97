#include "client/fd_transfer.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::StatusOr<std::vector<int>> FetchFds(const std::string& path, const std::string& ticket, absl::Duration timeout) {
  if (ticket.size() != kFdTicketBytes) return absl::InvalidArgumentError("a descriptor ticket has 16 bytes");
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError("descriptor socket path too long");
  const int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  std::vector<int> fds;
  auto fail = [&](absl::Status st) {
    for (int fd : fds) close(fd);
    close(s);
    return st;
  };
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return fail(absl::UnavailableError(absl::StrCat("cannot reach the descriptor socket ", path, ": ",
                                                    std::strerror(errno))));
  if (send(s, ticket.data(), ticket.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(ticket.size()))
    return fail(absl::UnavailableError(absl::StrCat("sending the ticket: ", std::strerror(errno))));
  const absl::Time deadline = absl::Now() + timeout;
  uint32_t total = 0;
  do {
    pollfd p{s, POLLIN, 0};
    const int wait_ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (poll(&p, 1, wait_ms) != 1) return fail(absl::DeadlineExceededError("the descriptor socket did not answer"));
    FdHeader h;
    iovec iov{&h, sizeof(h)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    // Take every descriptor that arrived first, so that none leaks on the error paths below.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.push_back(fd);
        }
      }
    if (n != static_cast<ssize_t>(sizeof(h)) || h.magic != FdHeader{}.magic || (msg.msg_flags & MSG_CTRUNC))
      return fail(absl::DataLossError("malformed answer from the descriptor socket"));
    if (h.status != 0) return fail(absl::PermissionDeniedError("unknown, used or expired descriptor ticket"));
    total = h.total;
  } while (fds.size() < total);
  if (fds.size() != total) return fail(absl::DataLossError("the descriptor socket sent more descriptors than announced"));
  close(s);
  return fds;
}

}  // namespace kvtier
