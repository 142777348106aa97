#include "daemon/fd_broker.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

bool SendHeader(int conn, const FdHeader& h, const int* fds, int n) {
  iovec iov{const_cast<FdHeader*>(&h), sizeof(h)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (n > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  }
  return sendmsg(conn, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof(h));
}

}  // namespace

absl::StatusOr<std::unique_ptr<FdBroker>> FdBroker::Start(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path))
    return absl::InvalidArgumentError(absl::StrCat("descriptor socket path too long: ", path));
  std::unique_ptr<FdBroker> b(new FdBroker(path));
  b->listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (b->listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  ::unlink(path.c_str());  // a stale socket of a previous (killed) daemon
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (bind(b->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(b->listen_fd_, 16) != 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", path, ": ", std::strerror(errno)));
  if (::chmod(path.c_str(), 0660) != 0)
    KVTIER_LOG(kWarning, "fd_socket_chmod_failed") << "path=" << path << " errno=" << std::strerror(errno);
  if (pipe2(b->stop_pipe_, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  b->thread_ = std::thread([raw = b.get()] { raw->Loop(); });
  return b;
}

FdBroker::~FdBroker() {
  if (thread_.joinable()) {
    const char x = 0;
    (void)!write(stop_pipe_[1], &x, 1);
    thread_.join();
  }
  for (int fd : {listen_fd_, stop_pipe_[0], stop_pipe_[1]})
    if (fd >= 0) close(fd);
  ::unlink(path_.c_str());
  MutexLock lock(&mu_);
  for (auto& [ticket, p] : pending_) CloseAll(p.fds);
}

std::string FdBroker::Offer(std::vector<int> fds) {
  std::string ticket(kFdTicketBytes, '\0');
  MutexLock lock(&mu_);
  ExpireLocked(absl::Now());
  do {  // from the kernel's CSPRNG: a ticket is a bearer credential for the pool's memory
    size_t got = 0;
    while (got < kFdTicketBytes) {
      const ssize_t n = getrandom(ticket.data() + got, kFdTicketBytes - got, 0);
      if (n > 0) got += static_cast<size_t>(n);
    }
  } while (pending_.contains(ticket));
  pending_[ticket] = {std::move(fds), absl::Now() + kTicketTtl};
  return ticket;
}

void FdBroker::ExpireLocked(absl::Time now) {
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.expires <= now) {
      CloseAll(it->second.fds);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

void FdBroker::Loop() {
  while (true) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    const int n = poll(p, 2, 1000);
    if (n < 0 && errno != EINTR) return;
    if (p[1].revents) return;
    {
      MutexLock lock(&mu_);
      ExpireLocked(absl::Now());
    }
    if (n <= 0 || !(p[0].revents & POLLIN)) continue;
    const int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    Serve(conn);
    close(conn);
  }
}

void FdBroker::Serve(int conn) {
  // One connection at a time, each bounded: a peer that does not send its ticket within 1 s is dropped.
  pollfd p{conn, POLLIN, 0};
  std::string ticket(kFdTicketBytes + 1, '\0');
  if (poll(&p, 1, 1000) != 1) return;
  const ssize_t got = recv(conn, ticket.data(), ticket.size(), MSG_DONTWAIT);
  std::vector<int> fds;
  bool found = false;
  if (got == static_cast<ssize_t>(kFdTicketBytes)) {
    ticket.resize(kFdTicketBytes);
    MutexLock lock(&mu_);
    auto it = pending_.find(ticket);
    if (it != pending_.end() && it->second.expires > absl::Now()) {
      fds = std::move(it->second.fds);
      found = true;
    }
    if (it != pending_.end()) pending_.erase(it);  // once, whether it was still valid or not
  }
  if (!found) {
    FdHeader h;
    h.status = 1;
    (void)SendHeader(conn, h, nullptr, 0);
    KVTIER_LOG(kWarning, "fd_ticket_refused") << "bytes=" << got;
    return;
  }
  FdHeader h;
  h.total = static_cast<uint32_t>(fds.size());
  size_t sent = 0;
  do {
    h.in_message = static_cast<uint32_t>(std::min<size_t>(fds.size() - sent, kMaxFdsPerMessage));
    if (!SendHeader(conn, h, fds.data() + sent, static_cast<int>(h.in_message))) break;
    sent += h.in_message;
  } while (sent < fds.size());
  CloseAll(fds);  // the peer holds its own copies now
}

}  // namespace kvtier
