#include "daemon/token_file.h"

#include <sys/stat.h>

#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvtier {

absl::StatusOr<TokenTable> LoadTokenFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat("tenant_token_file ", path, " not found"));
  if ((st.st_mode & 077) != 0)
    return absl::PermissionDeniedError(absl::StrCat("tenant_token_file ", path,
                                                    " is accessible by group or others (chmod 600 it)"));
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tenant_token_file ", path));
  TokenTable table;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view l = line;
    if (const auto hash = l.find('#'); hash != absl::string_view::npos) l = l.substr(0, hash);
    std::vector<absl::string_view> f = absl::StrSplit(l, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (f.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": ", why));
    };
    if (f.size() < 2 || f.size() > 3) return bad("expected TOKEN TENANT [pool_access]");
    if (f[0].size() < 16) return bad("token shorter than 16 characters");
    if (f.size() == 3 && f[2] != "pool_access") return bad(absl::StrCat("unknown option '", f[2], "'"));
    if (!table.emplace(std::string(f[0]), TokenGrant{std::string(f[1]), f.size() == 3}).second)
      return bad("token listed twice");
  }
  if (table.empty()) return absl::InvalidArgumentError(absl::StrCat("tenant_token_file ", path, " has no tokens"));
  return table;
}

}  // namespace kvtier
