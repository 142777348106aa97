// RunWorker and RunVerifier (stress_roles.h).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <random>
#include <thread>

#include "client/prompt_kv.h"
#include "tests/reliability/stress_client.h"
#include "tests/reliability/stress_roles.h"

namespace kvtier::stress {
namespace {

// A prompt whose blocks the worker holds pinned (hits of its lookup plus what it committed).
struct Held {
  PromptId id;
  int layout = 0;
  std::vector<int32_t> prompt;
  std::vector<uint64_t> pinned;  // one pin each
  int prefix_blocks = 0;         // blocks 0..prefix_blocks-1 are pinned: a lookup must find them all
  uint64_t tail = 0;             // private partial block
};

void ReleaseHeld(const Options& o, Shared* shared, Session& s, Held& h) {
  (void)Timed(o, shared, kRelease, [&] { return s.client->Release(h.pinned); });
  if (h.tail != 0)
    (void)Timed(o, shared, kRelease, [&] { return s.client->Release(std::span<const uint64_t>(&h.tail, 1)); });
}

// Pinned blocks are never moved out of reach or dropped: a lookup without pin or page-in (no I/O) must
// still walk the whole pinned prefix.
void CheckHeld(const Options& o, Shared* shared, Session& s, const Held& h) {
  const RegisteredLayout& l = s.layouts[h.layout];
  auto r = Timed(o, shared, kLookup, [&] { return s.client->Lookup(l.id, h.prompt, false, false); });
  if (!r.ok()) return;
  if (r->blocks_size() < h.prefix_blocks) {
    shared->acked_lost.fetch_add(h.prefix_blocks - r->blocks_size());
    std::fprintf(stderr, "LOST pinned blocks: layout=%s family=%d variant=%d pinned_prefix=%d found=%d\n",
                 l.layout.spec.model_name().c_str(), h.id.family, h.id.variant, h.prefix_blocks, r->blocks_size());
  }
}

}  // namespace

int RunWorker(const Options& o, Shared* shared, int index, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto session = OpenSession(o, "stress-worker-" + std::to_string(index));
  if (!session) return 3;
  Session& s = *session;
  shared->worker_starts.fetch_add(1);
  std::deque<Held> held;
  int failures_in_a_row = 0;
  while (shared->stop.load() == 0) {
    PromptId id;
    id.layout = static_cast<int>(rng() % s.layouts.size());
    id.family = static_cast<int>(rng() % o.families);
    // Mostly shared variants (prefix reuse across workers); one in five a one-off prompt.
    id.variant = rng() % 5 == 0 ? o.variants : static_cast<int>(rng() % o.variants);
    id.private_seed = rng();
    const RegisteredLayout& l = s.layouts[id.layout];
    Held h{id, id.layout, MakePrompt(o, id, l.shape.block_size), {}, 0, 0};
    shared->prompts.fetch_add(1, std::memory_order_relaxed);

    bool failed = false;
    auto hit = Timed(o, shared, kLookup, [&] { return s.client->Lookup(l.id, h.prompt, true, true); });
    std::vector<uint64_t> hit_ids;
    std::string parent;
    if (hit.ok()) {
      for (const auto& b : hit->blocks()) hit_ids.push_back(b.block_id());
      if (hit->matched_tokens() != hit->blocks_size() * l.shape.block_size) shared->inconsistent.fetch_add(1);
      shared->blocks_hit.fetch_add(hit_ids.size(), std::memory_order_relaxed);
      h.pinned = hit_ids;
      h.prefix_blocks = static_cast<int>(hit_ids.size());
      if (!ReadAndVerify(o, shared, s, l, h.prompt, 0, hit_ids, "lookup-hit")) failed = true;
      if (!hit_ids.empty()) parent = hit->blocks(hit->blocks_size() - 1).key();
    } else {
      failed = true;
    }
    if (!failed) {
      // Prefill what missed, commit it, and read it back.
      auto fill = [&](int b, uint8_t* page) {
        testing::FillActivationPage(*l.geometry, l.layout.dtype,
                                    testing::KeyedBlockSeed(h.prompt, l.shape.block_size, b, l.layout.tag), page);
      };
      auto w = Timed(o, shared, kWrite, [&] {
        return WritePromptKv(*s.client, l.id, l.shape, l.activation_page_bytes, h.prompt, fill,
                             static_cast<int>(hit_ids.size()), parent);
      });
      if (w.ok()) {
        shared->blocks_written.fetch_add(w->block_ids.size(), std::memory_order_relaxed);
        h.pinned.insert(h.pinned.end(), w->block_ids.begin(), w->block_ids.end());
        h.prefix_blocks += static_cast<int>(w->block_ids.size());
        h.tail = w->tail_block_id;
        // Read the whole prompt back through a second lookup: committed blocks that were deduplicated
        // against another session's (possibly paged-out or restored) blocks are served that way too.
        auto again = Timed(o, shared, kLookup, [&] { return s.client->Lookup(l.id, h.prompt, true, true); });
        if (again.ok()) {
          std::vector<uint64_t> ids;
          for (const auto& b : again->blocks()) ids.push_back(b.block_id());
          if (!ReadAndVerify(o, shared, s, l, h.prompt, 0, ids, "committed")) failed = true;
          (void)Timed(o, shared, kRelease, [&] { return s.client->Release(ids); });
        } else {
          failed = true;
        }
      } else {
        failed = true;
      }
    }
    // A failed write may leave blocks allocated but uncommitted: they are the session's private blocks
    // and go when it ends; the pins taken so far are released with the held prompt.
    held.push_back(std::move(h));
    while (static_cast<int>(held.size()) > o.hold || (!held.empty() && rng() % 50 == 0)) {
      CheckHeld(o, shared, s, held.front());
      ReleaseHeld(o, shared, s, held.front());
      held.pop_front();
    }
    if (failed) {
      if (DaemonGone(s)) return 4;
      if (++failures_in_a_row > 200) return 5;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    } else {
      failures_in_a_row = 0;
    }
  }
  for (Held& h : held) {
    CheckHeld(o, shared, s, h);
    ReleaseHeld(o, shared, s, h);
  }
  return 0;
}

int RunVerifier(const Options& o, Shared* shared, bool final_check, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto session = OpenSession(o, "stress-verifier");
  if (!session) return 3;
  Session& s = *session;
  if (auto st = s.client->Stats(); st.ok()) shared->restart_ssd_restored.fetch_add(st->ssd_restored());
  // Every shared prompt (or a sample of verify_prompts of them): everything served must verify.
  const int all = static_cast<int>(s.layouts.size()) * o.families * o.variants;
  const int n = o.verify_prompts > 0 ? std::min(o.verify_prompts, all) : all;
  for (int i = 0; i < n; ++i) {
    const int k = o.verify_prompts > 0 ? static_cast<int>(rng() % all) : i;
    PromptId id{k / (o.families * o.variants), (k / o.variants) % o.families, k % o.variants, 0};
    const RegisteredLayout& l = s.layouts[id.layout];
    const std::vector<int32_t> prompt = MakePrompt(o, id, l.shape.block_size);
    auto hit = Timed(o, shared, kLookup, [&] { return s.client->Lookup(l.id, prompt, true, true); });
    if (!hit.ok()) continue;
    std::vector<uint64_t> ids;
    for (const auto& b : hit->blocks()) ids.push_back(b.block_id());
    const uint64_t before = shared->blocks_verified.load();
    ReadAndVerify(o, shared, s, l, prompt, 0, ids, "after-restart");
    shared->restart_verified_blocks.fetch_add(shared->blocks_verified.load() - before);
    (void)s.client->Release(ids);
  }
  // Prompts acknowledged as durable before the crash: all their blocks must still be there.
  const uint64_t acked = std::min<uint64_t>(shared->acked_next.load(), Shared::kAcked);
  for (uint64_t i = 0; i < acked; ++i) {
    const uint64_t packed = shared->acked_prompt[i].load();
    if (packed == 0) continue;
    const PromptId id{static_cast<int>((packed - 1) >> 40), static_cast<int>(((packed - 1) >> 20) & 0xfffff),
                      static_cast<int>((packed - 1) & 0xfffff), 0};
    const RegisteredLayout& l = s.layouts[id.layout];
    const std::vector<int32_t> prompt = MakePrompt(o, id, l.shape.block_size);
    auto hit = Timed(o, shared, kLookup, [&] { return s.client->Lookup(l.id, prompt, false, false); });
    if (!hit.ok()) continue;
    shared->acked_checked.fetch_add(1);
    const uint64_t want = shared->acked_blocks[i].load();
    if (static_cast<uint64_t>(hit->blocks_size()) < want) {
      shared->acked_lost.fetch_add(want - hit->blocks_size());
      std::fprintf(stderr,
                   "LOST acknowledged blocks after restart: layout=%d family=%d variant=%d acked=%llu found=%d\n",
                   id.layout, id.family, id.variant, static_cast<unsigned long long>(want), hit->blocks_size());
    }
  }
  // Checked once: the restarted daemon's blocks are unpinned and may be evicted from here on.
  for (uint64_t i = 0; i < acked; ++i) shared->acked_prompt[i].store(0);
  shared->acked_next.store(0);
  if (!final_check) return 0;
  // Every other session is gone (workers stopped or killed): no pins may remain once leases are over.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.lease_ms + 10000);
  while (std::chrono::steady_clock::now() < deadline) {
    auto ls = s.client->ListSessions();
    if (ls.ok() && ls->sessions_size() <= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto ls = s.client->ListSessions();
  if (ls.ok() && ls->sessions_size() > 1) shared->leaked_sessions.fetch_add(ls->sessions_size() - 1);
  auto st = s.client->Stats();
  if (st.ok()) {
    shared->leaked_pins.fetch_add(st->pinned_blocks());
    if (st->pinned_blocks() != 0)
      std::fprintf(stderr, "LEAKED pins: %llu pinned blocks with no live session\n",
                   static_cast<unsigned long long>(st->pinned_blocks()));
  }
  return 0;
}

}  // namespace kvtier::stress
