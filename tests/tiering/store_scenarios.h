// Self-verifying BlockStore scenarios shared by the host-device and CUDA-device store tests: write a
// prompt's blocks with oracle content, and many sessions reading their prompts back while blocks move.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/testing/kv_oracle.h"
#include "tiering/block_store.h"

namespace kvtier::testing {

// The tiering tests' usual layout: fp16 pages on the GPU, int8 (K per-channel, V per-token) below.
inline LayoutSpec Fp16Int8Spec(const LayoutShape& shape) {
  LayoutSpec spec;
  spec.shape = shape;
  spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
  spec.policy_fingerprint = "fp16/int8";
  return spec;
}

// An empty path for the running test's files (SSD tier), named after the test; the caller removes it.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  const auto dir = std::filesystem::temp_directory_path() /
                   (prefix + std::to_string(::getpid()) + "-" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  return dir;
}

inline std::vector<int32_t> ScenarioPrompt(int n, int salt) {
  std::vector<int32_t> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 7919 + salt * 104729) % 32000;
  return p;
}

// Allocates, writes (oracle content) and commits every full block of `prompt` for `session` as one chain;
// returns the committed block ids (deduplicated ids where the prefix was already published), or the error.
inline absl::StatusOr<std::vector<BlockId>> WritePromptBlocks(BlockStore& store, const Layout& layout,
                                                              SessionId session, const std::vector<int32_t>& prompt,
                                                              std::string_view salt = "t") {
  const int bs = layout.shape.block_size;
  const int n = static_cast<int>(prompt.size()) / bs;
  auto blocks = store.Allocate(session, layout.id, n);
  if (!blocks.ok()) return blocks.status();
  std::vector<std::string> pages(n, std::string(layout.activation_geometry.page_bytes(), '\0'));
  std::vector<BlockId> ids;
  std::vector<std::string_view> views;
  std::vector<CommitItem> items;
  for (int b = 0; b < n; ++b) {
    FillActivationPage(layout.activation_geometry, Format::kFp16, BlockSeed(prompt, bs, b),
                       reinterpret_cast<uint8_t*>(pages[b].data()));
    ids.push_back((*blocks)[b].id);
    views.push_back(pages[b]);
    items.push_back({ids[b], "", std::vector<int32_t>(prompt.begin() + b * bs, prompt.begin() + (b + 1) * bs),
                     /*chain_previous=*/b > 0});
  }
  if (auto st = store.Write(session, ids, views); !st.ok()) return st;
  auto committed = store.Commit(session, salt, items);
  if (!committed.ok()) return committed.status();
  std::vector<BlockId> out;
  for (const auto& c : *committed) out.push_back(c.block_id);
  return out;
}

struct ConcurrentOutcome {
  int failures = 0;       // failed calls and pages that did not match their prompt's oracle
  int pages_checked = 0;
  std::string first_failure;  // what the first failure was, for the test's message
};

// `threads` sessions, each `iterations` times: write and commit a prompt drawn from a small shared set,
// end the session, sometimes demote (GPU -> host, and host -> SSD when `demote_host`), look the prompt up
// with page-in, and check every page read against the oracle (tolerance: int8, relative to the segment).
inline ConcurrentOutcome RunConcurrentSessions(BlockStore& store, const Layout& layout, int threads, int iterations,
                                               bool demote_host) {
  std::atomic<int> failures{0}, checked{0};
  std::mutex first_mu;
  std::string first_failure;
  auto fail = [&](const std::string& what) {
    if (failures.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(first_mu);
      first_failure = what;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937 rng(t);
      const SessionId sid = 100 + t;
      for (int iter = 0; iter < iterations; ++iter) {
        const auto prompt = ScenarioPrompt(16 * (1 + rng() % 6), static_cast<int>(rng() % 8));
        if (auto w = WritePromptBlocks(store, layout, sid, prompt); !w.ok()) fail("write: " + w.status().ToString());
        store.ReleaseSession(sid);
        if (rng() % 3 == 0) store.DemoteFromGpu(4);
        if (demote_host && rng() % 3 == 0) store.DemoteFromHost(4);
        auto hit = store.Lookup(sid, "t", layout.id, prompt, true, true);
        if (!hit.ok()) {
          fail("lookup: " + hit.status().ToString());
          continue;
        }
        std::vector<BlockId> ids;
        for (const auto& b : hit->blocks) ids.push_back(b.block_id);
        auto pages = store.Read(sid, ids);
        if (!pages.ok()) {
          fail("read: " + pages.status().ToString());
          continue;
        }
        for (size_t b = 0; b < ids.size(); ++b) {
          const auto r = CheckActivationPage(layout.activation_geometry, Format::kFp16,
                                             BlockSeed(prompt, layout.shape.block_size, static_cast<int>(b)),
                                             reinterpret_cast<const uint8_t*>((*pages)[b].data()), 1.0f / 127.0f);
          if (r.bad_values) fail("block " + std::to_string(b) + " of a prompt: " + std::to_string(r.bad_values) + " bad values");
          ++checked;
        }
        store.ReleaseSession(sid);
      }
    });
  }
  for (auto& th : pool) th.join();
  std::lock_guard<std::mutex> lock(first_mu);
  return {failures.load(), checked.load(), first_failure};
}

}  // namespace kvtier::testing
