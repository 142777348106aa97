// RunOperator (stress_roles.h): tier resizes, evictions, Stats sampling and the dead-session leak check,
// interleaved with the workers' traffic at random moments.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/prompt_kv.h"
#include "tests/reliability/stress_client.h"
#include "tests/reliability/stress_roles.h"

namespace kvtier::stress {
namespace v1 = kvtier::v1;
namespace {

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t Between(std::mt19937_64& rng, uint64_t lo, uint64_t hi) {
  const uint64_t v = hi > lo ? lo + rng() % (hi - lo + 1) : lo;
  return std::max<uint64_t>(1 << 20, v / (1 << 20) * (1 << 20));
}

void SampleStats(Shared* shared, Session& s) {
  auto st = s.client->Stats();
  if (!st.ok()) return;
  for (const auto& t : st->tiers()) {
    if (t.tier() == v1::TIER_GPU) shared->stats_gpu_used.store(t.used_bytes());
    if (t.tier() == v1::TIER_HOST) {
      shared->stats_host_used.store(t.used_bytes());
      shared->stats_host_capacity.store(t.capacity_bytes());
    }
    if (t.tier() == v1::TIER_SSD) {
      shared->stats_ssd_used.store(t.used_bytes());
      uint64_t prev = shared->ssd_used_max_since_ack.load();
      while (t.used_bytes() > prev && !shared->ssd_used_max_since_ack.compare_exchange_weak(prev, t.used_bytes())) {
      }
    }
  }
  shared->stats_pinned_blocks.store(st->pinned_blocks());
  shared->stats_blocks_dropped.store(st->blocks_dropped());
  shared->stats_checksum_failures.store(st->checksum_failures());
  shared->stats_sessions.store(st->sessions());
}

// Sessions of processes killed more than a lease (plus slack) ago must be gone with their pins. A session
// attached after the kill belongs to a later worker that was given the same pid (pids wrap around on a
// busy machine), not to the killed one.
void CheckDeadSessions(const Options& o, Shared* shared, Session& s, absl::flat_hash_set<int64_t>& reported) {
  auto ls = s.client->ListSessions();
  if (!ls.ok()) return;
  const int64_t now = SteadyMs();
  for (const auto& info : ls->sessions()) {
    for (int i = 0; i < Shared::kKilled; ++i) {
      if (shared->killed_pid[i].load() != info.pid()) continue;
      if (info.attached_unix_ms() > shared->killed_at_unix_ms[i].load()) continue;  // a later process
      const int64_t at = shared->killed_at_ms[i].load();
      if (at == 0 || now - at < o.lease_ms + 3000) continue;
      const auto id = static_cast<int64_t>(info.session_id());
      if (reported.contains(id)) continue;
      reported.insert(id);
      shared->leaked_sessions.fetch_add(1);
      shared->leaked_pins.fetch_add(info.pinned_blocks());
      std::fprintf(stderr, "LEAKED session %llu of killed pid %lld: %lld pins, %lld ms after the kill\n",
                   static_cast<unsigned long long>(info.session_id()), static_cast<long long>(info.pid()),
                   static_cast<long long>(info.pinned_blocks()), static_cast<long long>(now - at));
    }
  }
}

// Crash mode: writes a few prompts of families no worker uses, keeps them pinned, flushes, and when the
// daemon acknowledges every committed block as durable records them: after kill -9 and a restart each
// of their blocks must be found again (stress_worker.cc, RunVerifier).
void WriteAndAcknowledge(const Options& o, Shared* shared, Session& s, std::mt19937_64& rng) {
  std::vector<std::pair<PromptId, int>> written;
  for (int k = 0; k < 3; ++k) {
    PromptId id{static_cast<int>(rng() % s.layouts.size()), o.families + static_cast<int>(rng() % 8),
                static_cast<int>(rng() % o.variants), 0};
    const RegisteredLayout& l = s.layouts[id.layout];
    const std::vector<int32_t> prompt = MakePrompt(o, id, l.shape.block_size);
    auto fill = [&](int b, uint8_t* page) {
      testing::FillActivationPage(*l.geometry, l.layout.dtype,
                                  testing::KeyedBlockSeed(prompt, l.shape.block_size, b, l.layout.tag), page);
    };
    auto w = Timed(o, shared, kWrite,
                   [&] { return WritePromptKv(*s.client, l.id, l.shape, l.activation_page_bytes, prompt, fill); });
    if (w.ok()) written.emplace_back(id, static_cast<int>(w->block_ids.size()));  // pins kept until the crash
  }
  if (written.empty()) return;
  auto f = Timed(o, shared, kAdmin, [&] { return s.client->Flush(v1::TIER_SSD); });
  shared->flushes.fetch_add(1);
  if (!f.ok()) return;
  shared->flush_not_written.fetch_add(f->blocks_not_written());
  if (f->blocks_not_written() != 0 || !f->durable()) return;
  SampleStats(shared, s);
  shared->ssd_used_max_since_ack.store(shared->stats_ssd_used.load());
  for (const auto& [id, blocks] : written) {
    const uint64_t slot = shared->acked_next.fetch_add(1);
    if (slot >= Shared::kAcked) break;
    shared->acked_blocks[slot].store(blocks);
    shared->acked_prompt[slot].store(id.Packed() + 1);
    shared->acked_prompts_total.fetch_add(1);
  }
}

}  // namespace

int RunOperator(const Options& o, Shared* shared, bool crash_mode, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto session = OpenSession(o, "stress-operator");
  if (!session) return 3;
  Session& s = *session;
  absl::flat_hash_set<int64_t> reported;
  std::exponential_distribution<double> gap(1.0 / std::max(1, o.admin_every_ms));
  bool ssd_grown = false;
  if (crash_mode && o.flush) WriteAndAcknowledge(o, shared, s, rng);
  while (shared->stop.load() == 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(gap(rng) * 1000)));
    SampleStats(shared, s);
    if (o.admin_every_ms <= 0) {
      CheckDeadSessions(o, shared, s, reported);
      continue;
    }
    const int action = static_cast<int>(rng() % 10);
    absl::Status st;
    if (action <= 2) {
      v1::TierLimits lim;
      lim.set_gpu_pool_bytes(Between(rng, o.gpu_min, o.gpu_max));
      lim.set_host_tier_bytes(Between(rng, o.host_min, o.host_max));
      // The SSD tier grows by a slab and shrinks back (relocating records), except in crash mode where
      // the audit reopens it at its configured size.
      if (!crash_mode && rng() % 8 == 0) {
        lim.set_ssd_tier_bytes(ssd_grown ? o.ssd_bytes : 2 * o.ssd_bytes);
        ssd_grown = !ssd_grown;
      }
      st = Timed(o, shared, kAdmin, [&] { return s.client->SetTierLimits(lim); }).status();
    } else if (action <= 5) {
      const int64_t n = rng() % 8 == 0 ? 0 : 1 + static_cast<int64_t>(rng() % 128);
      st = Timed(o, shared, kAdmin, [&] { return s.client->Evict(v1::TIER_GPU, n); }).status();
    } else if (action <= 7) {
      const int64_t n = rng() % 8 == 0 ? 0 : 1 + static_cast<int64_t>(rng() % 128);
      st = Timed(o, shared, kAdmin, [&] { return s.client->Evict(v1::TIER_HOST, n); }).status();
    } else if (action == 8 && o.flush) {
      if (rng() % 2 == 0) {
        auto f = Timed(o, shared, kAdmin, [&] { return s.client->Flush(v1::TIER_SSD); });
        st = f.status();
        shared->flushes.fetch_add(1);
        if (f.ok()) shared->flush_not_written.fetch_add(f->blocks_not_written());
      } else {
        const v1::Tier t = rng() % 2 ? v1::TIER_GPU : v1::TIER_HOST;
        st = Timed(o, shared, kAdmin, [&] { return s.client->Drain(t, static_cast<int64_t>(rng() % 200)); }).status();
        shared->drains.fetch_add(1);
      }
    } else {
      CheckDeadSessions(o, shared, s, reported);
    }
    shared->admin_actions.fetch_add(1, std::memory_order_relaxed);
    if (!st.ok() && DaemonGone(s)) return 4;
  }
  return 0;
}

}  // namespace kvtier::stress
