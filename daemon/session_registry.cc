#include "daemon/session_registry.h"

#include <random>

#include "tiering/log.h"

namespace kvtier {

Session SessionRegistry::Open(std::string tenant, std::string salt, bool admin, std::string client_name,
                              int64_t pid) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  Session s;
  s.tenant = std::move(tenant);
  s.salt = std::move(salt);
  s.admin = admin;
  s.client_name = std::move(client_name);
  s.pid = pid;
  s.attached = absl::Now();
  MutexLock lock(&mu_);
  do {
    s.id = rng();
  } while (s.id == 0 || sessions_.contains(s.id));
  sessions_.emplace(s.id, s);
  KVTIER_LOG(kInfo, "session_open") << "session=" << s.id << " tenant=" << s.tenant << " client=" << s.client_name
                                    << " pid=" << s.pid << " admin=" << s.admin;
  return s;
}

void SessionRegistry::Close(SessionId id) {
  {
    MutexLock lock(&mu_);
    if (sessions_.erase(id) == 0) return;
  }
  const int64_t pins = store_->PinnedBy(id);
  store_->ReleaseSession(id);
  KVTIER_LOG(kInfo, "session_close") << "session=" << id << " released_pins=" << pins;
}

std::optional<Session> SessionRegistry::Find(SessionId id) const {
  MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return std::nullopt;
  return it->second;
}

bool SessionRegistry::Contains(SessionId id) const {
  MutexLock lock(&mu_);
  return sessions_.contains(id);
}

std::vector<Session> SessionRegistry::List() const {
  MutexLock lock(&mu_);
  std::vector<Session> out;
  for (const auto& [id, s] : sessions_) out.push_back(s);
  return out;
}

size_t SessionRegistry::size() const {
  MutexLock lock(&mu_);
  return sessions_.size();
}

}  // namespace kvtier
