// Minimal --key=value argument parsing shared by kvtierctl and the demo worker.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace kvtier {

struct CliArgs {
  std::map<std::string, std::string> flags;  // --key=value, or --key (value "true")
  std::vector<std::string> positional;

  static CliArgs Parse(int argc, char** argv) {
    CliArgs a;
    for (int i = 1; i < argc; ++i) {
      std::string s = argv[i];
      if (s.rfind("--", 0) == 0) {
        const auto eq = s.find('=');
        if (eq == std::string::npos) {
          a.flags[s.substr(2)] = "true";
        } else {
          a.flags[s.substr(2, eq - 2)] = s.substr(eq + 1);
        }
      } else {
        a.positional.push_back(s);
      }
    }
    return a;
  }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
  int64_t GetInt(const std::string& k, int64_t def) const {
    auto it = flags.find(k);
    return it == flags.end() ? def : std::strtoll(it->second.c_str(), nullptr, 0);
  }
  bool Has(const std::string& k) const { return flags.count(k) != 0; }
};

}  // namespace kvtier
