// KvTierService: Prefetch and GetPrefetch (the work itself is the Prefetcher's).
#include "absl/strings/str_cat.h"
#include "daemon/service.h"
#include "daemon/status_map.h"

namespace kvtier {
namespace {

inline constexpr int64_t kMaxPrefetchWaitMs = 60000;

v1::Tier ToWireTier(Tier t) {
  switch (t) {
    case Tier::kGpu: return v1::TIER_GPU;
    case Tier::kHost: return v1::TIER_HOST;
    case Tier::kSsd: return v1::TIER_SSD;
  }
  return v1::TIER_UNSPECIFIED;
}

}  // namespace

grpc::ServerUnaryReactor* KvTierService::Prefetch(grpc::CallbackServerContext* ctx, const v1::PrefetchRequest* req,
                                                  v1::PrefetchResponse* resp) {
  return WithSessionFn(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    const Layout* layout = store_->layouts().Find(req->layout_id());
    if (layout == nullptr) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id=", req->layout_id())};
    if (req->keys_size() > 0 && req->tokens_size() > 0)
      return {grpc::StatusCode::INVALID_ARGUMENT, "give the prefix as keys or as tokens, not both"};
    if (req->keys_size() > Prefetcher::kMaxKeys)
      return {grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat(req->keys_size(), " keys in one prefetch; the limit is ", Prefetcher::kMaxKeys)};
    if (req->tokens_size() > kMaxLookupTokens)
      return {grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat(req->tokens_size(), " tokens; the limit is ", kMaxLookupTokens)};
    std::vector<BlockKey> keys;
    for (int i = 0; i < req->keys_size(); ++i) {
      BlockKey k;
      if (!BlockKey::FromBytes(req->keys(i), &k))
        return {grpc::StatusCode::INVALID_ARGUMENT,
                absl::StrCat("keys[", i, "] has ", req->keys(i).size(), " bytes; a block key has 16")};
      keys.push_back(k);
    }
    const int bs = layout->shape.block_size;
    const std::span<const int32_t> tokens(req->tokens().data(), req->tokens_size());
    const std::vector<BlockKey> chained = PrefixKeys(layout->id, s.salt, tokens, bs);
    keys.insert(keys.end(), chained.begin(), chained.end());
    const int32_t n = static_cast<int32_t>(keys.size());
    auto id = prefetcher_->Start(s, layout->id, std::move(keys), req->pin());
    if (!id.ok()) return ToGrpc(id.status());
    resp->set_prefetch_id(*id);
    resp->set_blocks_requested(n);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::GetPrefetch(grpc::CallbackServerContext* ctx,
                                                     const v1::GetPrefetchRequest* req, v1::GetPrefetchResponse* resp) {
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  Session s;
  if (grpc::Status st = ResolveSession(req->session_id(), false, &s); !st.ok()) {
    r->Finish(st);
    return r;
  }
  if (req->wait_ms() < 0 || req->wait_ms() > kMaxPrefetchWaitMs) {
    r->Finish({grpc::StatusCode::INVALID_ARGUMENT,
               absl::StrCat("wait_ms=", req->wait_ms(), " outside [0, ", kMaxPrefetchWaitMs, "]")});
    return r;
  }
  // Answered when the prefetch finishes or the wait is over (possibly from the prefetcher's thread).
  prefetcher_->Get(s.id, req->prefetch_id(), absl::Milliseconds(req->wait_ms()),
                   [r, resp](absl::StatusOr<PrefetchProgress> p) {
                     if (!p.ok()) {
                       r->Finish(ToGrpc(p.status()));
                       return;
                     }
                     switch (p->state) {
                       case PrefetchProgress::State::kRunning: resp->set_state(v1::PREFETCH_STATE_RUNNING); break;
                       case PrefetchProgress::State::kDone: resp->set_state(v1::PREFETCH_STATE_DONE); break;
                       case PrefetchProgress::State::kCancelled:
                         resp->set_state(v1::PREFETCH_STATE_CANCELLED);
                         break;
                     }
                     resp->set_blocks_requested(p->requested);
                     resp->set_blocks_ready(p->ready);
                     resp->set_prefix_end(p->state == PrefetchProgress::State::kRunning ? p->ready : p->prefix_end);
                     if (p->state == PrefetchProgress::State::kDone)
                       for (const auto& b : p->blocks) {
                         auto* loc = resp->add_blocks();
                         loc->set_key(b.key.ToBytes());
                         loc->set_block_id(b.block_id);
                         loc->set_tier(ToWireTier(b.tier));
                         loc->set_slot(b.slot);
                       }
                     r->Finish(grpc::Status::OK);
                   });
  return r;
}

}  // namespace kvtier
