// kvtierctl's cache-policy commands (policy, events, pin, unpin, invalidate, warm, quota).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "client/cli_args.h"
#include "client/client.h"

namespace kvtier {

// Runs a cache-policy command when args.positional[0] names one (*handled), and returns the exit code.
int RunPolicyCommand(Client& client, const CliArgs& args, bool json, bool* handled);

// A warm file: one prefix per line, "LAYOUT_ID: t1,t2,..."; blank lines and lines starting with '#' are
// skipped. Any malformed line fails the whole file (INVALID_ARGUMENT naming the line).
absl::StatusOr<kvtier::v1::WarmRequest> ParseWarmFile(const std::string& path);

}  // namespace kvtier
