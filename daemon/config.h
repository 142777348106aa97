// kvtierd configuration: a kvtier.v1.DaemonConfig read from a file (protobuf text format, or JSON when
// the name ends in .json), completed with built-in defaults, overridden by flags, then validated.
// An invalid configuration is rejected at start with a message naming the field.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvtier/v1/config.pb.h"

namespace kvtier {

// The built-in default configuration (what kvtierd runs with when given no file).
kvtier::v1::DaemonConfig DefaultConfig();

// Default socket: /run/kvtier/kvtierd.sock for root, $XDG_RUNTIME_DIR/kvtier/kvtierd.sock otherwise,
// falling back to /tmp/kvtier-<uid>/kvtierd.sock.
std::string DefaultSocketPath();

// Parses a config file and merges it over the defaults.
absl::StatusOr<kvtier::v1::DaemonConfig> LoadConfigFile(const std::string& path);

// Applies --key=value overrides (e.g. --socket_path=/tmp/k.sock --limits.host_tier_bytes=1073741824);
// returns the arguments it did not recognize as an error.
absl::Status ApplyFlags(const std::vector<std::string>& flags, kvtier::v1::DaemonConfig* config);

absl::Status ValidateConfig(const kvtier::v1::DaemonConfig& config);

}  // namespace kvtier
