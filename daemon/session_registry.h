// SessionRegistry: the daemon's live sessions. A session is opened by Attach and lives exactly as long
// as its Attach stream; Close (stream broken, cancelled, or daemon shutdown) releases every pin and
// private block the session holds in the BlockStore.
//
// Thread-safety: all methods are thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "tiering/sync.h"
#include "absl/time/time.h"
#include "tiering/block_store.h"

namespace kvtier {

struct Session {
  SessionId id = 0;
  std::string tenant;
  std::string salt;  // prefix-hash salt of the tenant's namespace
  bool admin = false;
  std::string client_name;
  int64_t pid = 0;
  absl::Time attached;
};

class SessionRegistry {
 public:
  explicit SessionRegistry(BlockStore* store) : store_(store) {}

  // Registers a new session with an unguessable id.
  Session Open(std::string tenant, std::string salt, bool admin, std::string client_name, int64_t pid);
  // Ends a session and releases what it holds; no-op if already closed.
  void Close(SessionId id);
  std::optional<Session> Find(SessionId id) const;
  bool Contains(SessionId id) const;
  std::vector<Session> List() const;
  size_t size() const;

 private:
  BlockStore* store_;
  mutable Mutex mu_;
  absl::flat_hash_map<SessionId, Session> sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
