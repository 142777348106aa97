#include "tests/reliability/stress_client.h"

#include <cmath>
#include <cstdio>

namespace kvtier::stress {

std::optional<Session> OpenSession(const Options& o, const std::string& name) {
  ClientOptions co;
  co.target = "unix:" + o.socket;
  co.client_name = name;
  co.connect_timeout_ms = 10000;
  auto c = Client::Connect(co);
  if (!c.ok()) {
    std::fprintf(stderr, "%s: connect: %s\n", name.c_str(), c.status().ToString().c_str());
    return std::nullopt;
  }
  Session s;
  s.client = std::move(*c);
  for (const StressLayout& sl : StressLayouts()) {
    auto reg = s.client->RegisterLayout(sl.spec);
    if (!reg.ok()) {
      std::fprintf(stderr, "%s: RegisterLayout: %s\n", name.c_str(), reg.status().ToString().c_str());
      return std::nullopt;
    }
    RegisteredLayout r;
    r.layout = sl;
    r.id = reg->layout_id();
    r.activation_page_bytes = reg->activation_page_bytes();
    r.shape = LayoutShape{sl.spec.num_layers(), sl.spec.num_kv_heads(), sl.spec.head_dim(), sl.spec.block_size()};
    auto g =
        PageGeometry::Uniform(r.shape, DefaultCodec(sl.dtype, Operand::kKey), DefaultCodec(sl.dtype, Operand::kValue));
    if (!g.ok()) return std::nullopt;
    r.geometry = std::make_unique<PageGeometry>(std::move(*g));
    s.layouts.push_back(std::move(r));
  }
  return s;
}

int VerifyPages(const Options& o, Shared* shared, const RegisteredLayout& l, const std::vector<int32_t>& prompt,
                int first_block, const std::vector<std::string>& pages, const char* what) {
  int bad = 0;
  for (size_t i = 0; i < pages.size(); ++i) {
    const int b = first_block + static_cast<int>(i);
    const uint64_t seed = testing::KeyedBlockSeed(prompt, l.shape.block_size, b, l.layout.tag);
    if (pages[i].size() != l.activation_page_bytes) {
      shared->torn_blocks.fetch_add(1);
      std::fprintf(stderr, "TORN %s layout=%s block=%d bytes=%zu expected=%llu\n", what,
                   l.layout.spec.model_name().c_str(), b, pages[i].size(),
                   static_cast<unsigned long long>(l.activation_page_bytes));
      ++bad;
      continue;
    }
    const testing::SegmentCheck c = testing::CheckActivationPageSegments(
        *l.geometry, l.layout.dtype, seed, reinterpret_cast<const uint8_t*>(pages[i].data()), o.tolerance);
    shared->blocks_verified.fetch_add(1, std::memory_order_relaxed);
    const uint64_t ppm = std::isfinite(c.max_rel_error) ? static_cast<uint64_t>(c.max_rel_error * 1e6) : UINT64_MAX;
    uint64_t prev = shared->max_rel_error_ppm.load();
    while (ppm > prev && !shared->max_rel_error_ppm.compare_exchange_weak(prev, ppm)) {
    }
    if (c.max_rel_error > 1.0f / 127.0f + 2e-3f) shared->drift_blocks.fetch_add(1, std::memory_order_relaxed);
    if (c.ok()) continue;
    ++bad;
    (c.wrong() ? shared->wrong_blocks : shared->torn_blocks).fetch_add(1);
    std::fprintf(stderr, "%s %s layout=%s block=%d bad_segments=%d/%d max_rel_error=%g\n", c.wrong() ? "WRONG" : "TORN",
                 what, l.layout.spec.model_name().c_str(), b, c.bad_segments, c.segments, c.max_rel_error);
  }
  return bad;
}

bool ReadAndVerify(const Options& o, Shared* shared, Session& s, const RegisteredLayout& l,
                   const std::vector<int32_t>& prompt, int first_block, const std::vector<uint64_t>& ids,
                   const char* what) {
  constexpr size_t kBatch = 32;
  for (size_t at = 0; at < ids.size(); at += kBatch) {
    const size_t n = std::min(kBatch, ids.size() - at);
    auto pages =
        Timed(o, shared, kRead, [&] { return s.client->ReadBlocks(std::span<const uint64_t>(ids.data() + at, n)); });
    if (!pages.ok()) return false;
    VerifyPages(o, shared, l, prompt, first_block + static_cast<int>(at), *pages, what);
  }
  return true;
}

bool DaemonGone(Session& s) {
  auto st = s.client->Stats();
  return !st.ok() &&
         (st.status().code() == absl::StatusCode::kUnavailable || st.status().code() == absl::StatusCode::kNotFound ||
          st.status().code() == absl::StatusCode::kCancelled);
}

}  // namespace kvtier::stress
