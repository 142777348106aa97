// The tenant token file (DaemonConfig.tenant_token_file): one "TOKEN TENANT [pool_access]" per line,
// '#' starts a comment. Tokens are unique and at least 16 characters; the file must not be readable or
// writable by group or others (it holds credentials). An invalid file is rejected at start with a
// message naming the line.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvtier {

struct TokenGrant {
  std::string tenant;
  bool pool_access = false;
};

using TokenTable = absl::flat_hash_map<std::string, TokenGrant>;  // token -> grant

absl::StatusOr<TokenTable> LoadTokenFile(const std::string& path);

}  // namespace kvtier
