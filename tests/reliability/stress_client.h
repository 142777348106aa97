// Helpers shared by the stress roles: a connected client with the stress layouts registered, timed calls,
// and verification of served pages against the oracle.
#pragma once

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "client/client.h"
#include "tests/reliability/stress_model.h"
#include "tests/reliability/stress_shared.h"

namespace kvtier::stress {

struct RegisteredLayout {
  StressLayout layout;
  uint64_t id = 0;
  uint64_t activation_page_bytes = 0;
  std::unique_ptr<PageGeometry> geometry;
  LayoutShape shape;
};

struct Session {
  std::unique_ptr<Client> client;
  std::vector<RegisteredLayout> layouts;
};

// Connects and registers the stress layouts; nullopt (with a line on stderr) when the daemon is not there.
std::optional<Session> OpenSession(const Options& o, const std::string& name);

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <class T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

// Times a call into shared->latency[op] and counts it (and its failure); flags calls past o.hang_ms.
template <class Fn>
auto Timed(const Options& o, Shared* shared, Op op, Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = fn();
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  shared->latency[op].Record(us);
  shared->all_latency.Record(us);
  shared->ops[op].fetch_add(1, std::memory_order_relaxed);
  if (us > o.hang_ms * 1000.0) shared->hung_calls.fetch_add(1);
  if (!r.ok()) {
    shared->errors[op].fetch_add(1, std::memory_order_relaxed);
    const int code = static_cast<int>(StatusOf(r).code());
    shared->error_codes[code < 17 ? code : 2].fetch_add(1, std::memory_order_relaxed);
    static thread_local int printed = 0;
    if (printed++ < 3) std::fprintf(stderr, "call %s failed: %s\n", OpName(op), StatusOf(r).ToString().c_str());
  }
  return r;
}

// Verifies pages[i] as block first_block + i of `prompt`; counts verified, wrong and torn blocks.
// Returns the number of bad pages.
int VerifyPages(const Options& o, Shared* shared, const RegisteredLayout& l, const std::vector<int32_t>& prompt,
                int first_block, const std::vector<std::string>& pages, const char* what);

// Reads `ids` (blocks first_block.. of prompt) in batches and verifies them. Returns false if a read failed.
bool ReadAndVerify(const Options& o, Shared* shared, Session& s, const RegisteredLayout& l,
                   const std::vector<int32_t>& prompt, int first_block, const std::vector<uint64_t>& ids,
                   const char* what);

// True when the daemon is gone (a cheap call fails as unreachable).
bool DaemonGone(Session& s);

}  // namespace kvtier::stress
