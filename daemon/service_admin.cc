// KvTierService: the operator's Flush and Drain.
#include "absl/strings/str_cat.h"
#include "daemon/service.h"
#include "daemon/status_map.h"
#include "tiering/log.h"

namespace kvtier {

// The longest a Drain may wait for pins to go away.
inline constexpr int64_t kMaxDrainWaitMs = 600000;

grpc::ServerUnaryReactor* KvTierService::Flush(grpc::CallbackServerContext* ctx, const v1::FlushRequest* req,
                                               v1::FlushResponse* resp) {
  return WithSessionFn(ctx, req->session_id(), true, [&](const Session& s) -> grpc::Status {
    Tier to;
    switch (req->to_tier()) {
      case v1::TIER_UNSPECIFIED: to = store_->has_ssd() ? Tier::kSsd : Tier::kHost; break;
      case v1::TIER_SSD: to = Tier::kSsd; break;
      case v1::TIER_HOST: to = Tier::kHost; break;
      default:
        return {grpc::StatusCode::INVALID_ARGUMENT,
                absl::StrCat("Flush to_tier must be TIER_SSD or TIER_HOST (got ", req->to_tier(), ")")};
    }
    auto out = store_->Flush(to);
    if (!out.ok()) return ToGrpc(out.status());
    resp->set_blocks_written(out->written);
    resp->set_blocks_already_copied(out->already_copied);
    resp->set_blocks_not_written(out->not_written);
    resp->set_durable(to == Tier::kSsd);
    KVTIER_LOG(kInfo, "admin_flush") << "session=" << s.id << " to=" << TierName(to) << " written=" << out->written
                                     << " not_written=" << out->not_written;
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Drain(grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
                                               v1::DrainResponse* resp) {
  return WithSessionFn(ctx, req->session_id(), true, [&](const Session& s) -> grpc::Status {
    Tier tier;
    if (req->tier() == v1::TIER_GPU) {
      tier = Tier::kGpu;
    } else if (req->tier() == v1::TIER_HOST) {
      tier = Tier::kHost;
    } else {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat("Drain tier must be TIER_GPU or TIER_HOST (got ", req->tier(), ")")};
    }
    if (req->wait_ms() < 0 || req->wait_ms() > kMaxDrainWaitMs)
      return {grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat("wait_ms=", req->wait_ms(), " outside [0, ", kMaxDrainWaitMs, "]")};
    auto out = store_->Drain(tier, absl::Milliseconds(req->wait_ms()));
    if (!out.ok()) return ToGrpc(out.status());
    resp->set_blocks_moved(out->moved);
    resp->set_blocks_remaining(out->remaining);
    resp->set_blocks_pinned(out->pinned);
    resp->set_blocks_private(out->private_blocks);
    resp->set_drained(out->remaining == 0);
    KVTIER_LOG(kInfo, "admin_drain") << "session=" << s.id << " tier=" << TierName(tier) << " moved=" << out->moved
                                     << " remaining=" << out->remaining;
    return grpc::Status::OK;
  });
}

}  // namespace kvtier
