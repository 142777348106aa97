// KvTierService: the cache-policy RPCs — KV event stream and snapshot, pins with TTL, invalidation,
// warm-up, tenant quotas and policy stats (docs/cache_policy.md). Visibility: a tenant's session sees and
// changes only its own tenant's blocks; admin sessions see all and may name any tenant.
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/service.h"
#include "daemon/status_map.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

constexpr int kMaxEventStreams = 64;
constexpr int kMaxWarmPrefixes = 4096;

grpc::Status Invalid(std::string msg) { return {grpc::StatusCode::INVALID_ARGUMENT, std::move(msg)}; }
grpc::Status Denied(std::string msg) { return {grpc::StatusCode::PERMISSION_DENIED, std::move(msg)}; }

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  r->Finish(status);
  return r;
}

v1::Tier TierToWire(uint8_t t) {
  switch (static_cast<Tier>(t)) {
    case Tier::kGpu: return v1::TIER_GPU;
    case Tier::kHost: return v1::TIER_HOST;
    case Tier::kSsd: return v1::TIER_SSD;
  }
  return v1::TIER_UNSPECIFIED;
}

v1::RemoveReason ReasonToWire(RemoveReason r) { return static_cast<v1::RemoveReason>(static_cast<int>(r)); }

}  // namespace

// A server-streaming reactor whose body runs on its own thread (it waits for events or does store work
// that may take a while, which must not hold a gRPC callback thread). The body sends messages one at a
// time with Send, which returns once the message is written (false when the call is broken or
// cancelled), and returns the final status.
template <class Msg>
class KvTierService::ThreadedWriter : public grpc::ServerWriteReactor<Msg> {
 public:
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    write_pending_ = false;
    write_ok_ = ok;
    cv_.notify_all();
  }
  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      cv_.notify_all();
    }
    Interrupt();
  }
  void OnDone() override {
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();  // Finish completed inline on the body's own thread
    } else if (thread_.joinable()) {
      thread_.join();
    }
    Cleanup();
    delete this;
  }

 protected:
  virtual ~ThreadedWriter() = default;
  void Start(std::function<grpc::Status()> body) {
    thread_ = std::thread([this, body = std::move(body)] {
      const grpc::Status st = body();
      this->Finish(st);  // the last thing the thread does: OnDone may delete this at once
    });
  }
  bool Send(const Msg& m) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return false;
      write_pending_ = true;
    }
    this->StartWrite(&m);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !write_pending_ || cancelled_; });
    if (write_pending_) {  // cancelled while the write is in flight: its completion still comes
      cv_.wait(lock, [&] { return !write_pending_; });
      return false;
    }
    return write_ok_ && !cancelled_;
  }
  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  // Wakes a body blocked in something other than Send (the event log).
  virtual void Interrupt() {}
  // Runs in OnDone, after the body's thread is finished.
  virtual void Cleanup() {}

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool write_pending_ = false, write_ok_ = true, cancelled_ = false;
  std::thread thread_;
};

class KvTierService::EventStream final : public ThreadedWriter<v1::KvEventBatch> {
 public:
  EventStream(KvTierService* service, SessionId session, uint64_t cursor, uint64_t only_ns, int max_batch,
              std::string consumer_name)
      : service_(service), log_(service->store_->events()), session_(session), cursor_(cursor), only_ns_(only_ns),
        max_batch_(max_batch) {
    consumer_ = log_.AddConsumer(std::move(consumer_name));
    if (cursor_ == 0) cursor_ = log_.next_seq();  // from the next event on
    sent_next_ = cursor_;
    Start([this] { return Run(); });
  }

 private:
  grpc::Status Run() {
    auto filter = [this](const KvEvent& e) { return only_ns_ == 0 || e.tenant_ns == only_ns_; };
    while (!cancelled()) {
      if (!service_->sessions_->Find(session_)) return {grpc::StatusCode::CANCELLED, "the session ended"};
      const uint64_t from = cursor_;
      KvEventLog::ReadResult r = log_.Read(cursor_, max_batch_, filter, std::chrono::milliseconds(200));
      log_.UpdateConsumer(consumer_, r.next, r.lost);
      if (r.events.empty() && r.lost == 0) {
        cursor_ = r.next;
        continue;
      }
      batch_.Clear();
      // Reads that found only other tenants' events sent nothing: this batch continues from the last one
      // sent unless events were lost.
      batch_.set_from_seq(r.lost > 0 ? from + r.lost : sent_next_);
      batch_.set_next_seq(r.next);
      batch_.set_lost(r.lost);
      batch_.set_head_seq(log_.next_seq() - 1);
      for (const KvEvent& e : r.events) {
        v1::KvEvent* w = batch_.add_events();
        w->set_seq(e.seq);
        w->set_time_unix_ns(e.time_unix_ns);
        w->set_type(static_cast<v1::KvEventType>(static_cast<int>(e.type)));
        w->set_key(e.key.ToBytes());
        if (!e.parent.IsZero()) w->set_parent_key(e.parent.ToBytes());
        w->set_layout_id(e.layout_id);
        w->set_tenant(service_->TenantName(e.tenant_ns));
        w->set_tier(TierToWire(e.tier));
        if (e.type == KvEventType::kMoved) w->set_from_tier(TierToWire(e.from_tier));
        if (e.type == KvEventType::kRemoved) w->set_reason(ReasonToWire(e.reason));
        w->set_format(e.format);
        w->set_block_size(e.block_size);
        for (int32_t t : e.tokens) w->add_tokens(t);
      }
      cursor_ = r.next;
      sent_next_ = r.next;
      if (!Send(batch_)) return grpc::Status::CANCELLED;
    }
    return grpc::Status::CANCELLED;
  }
  void Interrupt() override { log_.WakeAll(); }
  void Cleanup() override {
    log_.RemoveConsumer(consumer_);
    --service_->event_streams_;
  }

  KvTierService* service_;
  KvEventLog& log_;
  SessionId session_;
  uint64_t cursor_;
  uint64_t sent_next_ = 0;  // next_seq of the last batch sent
  uint64_t only_ns_;
  size_t max_batch_;
  uint64_t consumer_ = 0;
  v1::KvEventBatch batch_;
};

class KvTierService::WarmStream final : public ThreadedWriter<v1::WarmProgress> {
 public:
  WarmStream(KvTierService* service, Session session, const v1::WarmRequest& req, Tier target)
      : service_(service), session_(std::move(session)), req_(req), target_(target) {
    Start([this] { return Run(); });
  }

 private:
  grpc::Status Run() {
    v1::WarmProgress p;
    p.set_prefixes_total(req_.prefixes_size());
    for (const auto& prefix : req_.prefixes()) {
      if (cancelled() || !service_->sessions_->Find(session_.id)) return grpc::Status::CANCELLED;
      const std::vector<int32_t> tokens(prefix.tokens().begin(), prefix.tokens().end());
      auto out = service_->store_->Warm(session_.id, session_.salt, prefix.layout_id(), tokens, target_);
      if (!out.ok()) return ToGrpc(out.status());
      p.set_prefixes_done(p.prefixes_done() + 1);
      p.set_blocks_found(p.blocks_found() + out->found);
      p.set_blocks_in_target(p.blocks_in_target() + out->in_target);
      if (!Send(p)) return grpc::Status::CANCELLED;
    }
    KVTIER_LOG(kInfo, "warm") << "session=" << session_.id << " prefixes=" << p.prefixes_done()
                              << " found=" << p.blocks_found() << " in_target=" << p.blocks_in_target()
                              << " target=" << TierName(target_);
    return grpc::Status::OK;
  }

  KvTierService* service_;
  Session session_;
  v1::WarmRequest req_;
  Tier target_;
};

namespace {
template <class Msg>
grpc::ServerWriteReactor<Msg>* RefuseStream(const grpc::Status& status) {
  class Refuse final : public grpc::ServerWriteReactor<Msg> {
   public:
    explicit Refuse(const grpc::Status& st) { this->Finish(st); }
    void OnDone() override { delete this; }
  };
  return new Refuse(status);
}
}  // namespace

void KvTierService::OnSessionOpened(const Session& s) {
  store_->SetSessionTenant(s.id, s.salt);
  MutexLock lock(&tenant_mu_);
  tenant_names_[BlockStore::TenantNs(s.salt)] = s.tenant;
}

uint64_t KvTierService::TenantNsOf(const std::string& tenant) const {
  for (const auto& t : config_.tenants())
    if (t.name() == tenant) return BlockStore::TenantNs(t.salt().empty() ? t.name() : t.salt());
  return BlockStore::TenantNs(tenant);  // without a tenant list the salt is the name
}

std::string KvTierService::TenantName(uint64_t tenant_ns) const {
  {
    MutexLock lock(&tenant_mu_);
    if (auto it = tenant_names_.find(tenant_ns); it != tenant_names_.end()) return it->second;
  }
  for (const auto& t : config_.tenants())
    if (BlockStore::TenantNs(t.salt().empty() ? t.name() : t.salt()) == tenant_ns) return t.name();
  return absl::StrFormat("ns:%016x", tenant_ns);  // blocks restored from SSD of a tenant not seen yet
}

grpc::ServerWriteReactor<v1::KvEventBatch>* KvTierService::StreamKvEvents(grpc::CallbackServerContext*,
                                                                          const v1::StreamKvEventsRequest* req) {
  Session s;
  if (auto st = ResolveSession(req->session_id(), false, &s); !st.ok()) return RefuseStream<v1::KvEventBatch>(st);
  if (req->max_batch() < 0 || req->max_batch() > 4096)
    return RefuseStream<v1::KvEventBatch>(Invalid(absl::StrCat("max_batch=", req->max_batch(), " outside [0, 4096]")));
  uint64_t only_ns = BlockStore::TenantNs(s.salt);
  if (!req->tenant().empty() && req->tenant() != s.tenant) {
    if (!s.admin) return RefuseStream<v1::KvEventBatch>(Denied("events of another tenant need an admin session"));
    only_ns = TenantNsOf(req->tenant());
  } else if (req->tenant().empty() && s.admin) {
    only_ns = 0;
  }
  if (++event_streams_ > kMaxEventStreams) {
    --event_streams_;
    return RefuseStream<v1::KvEventBatch>(
        {grpc::StatusCode::RESOURCE_EXHAUSTED, absl::StrCat("more than ", kMaxEventStreams, " event streams")});
  }
  KVTIER_LOG(kInfo, "event_stream") << "session=" << s.id << " tenant=" << s.tenant << " start_seq=" << req->start_seq()
                                    << " all_tenants=" << (only_ns == 0);
  return new EventStream(this, s.id, req->start_seq(), only_ns, req->max_batch() == 0 ? 256 : req->max_batch(),
                         absl::StrCat("grpc:", s.client_name.empty() ? "session" : s.client_name, ":", s.id));
}

grpc::ServerUnaryReactor* KvTierService::KvSnapshot(grpc::CallbackServerContext* ctx, const v1::KvSnapshotRequest* req,
                                                    v1::KvSnapshotResponse* resp) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), false, &s);
  if (!st.ok()) return Done(ctx, st);
  uint64_t only_ns = BlockStore::TenantNs(s.salt);
  if (!req->tenant().empty() && req->tenant() != s.tenant) {
    if (!s.admin) return Done(ctx, Denied("another tenant's blocks need an admin session"));
    only_ns = TenantNsOf(req->tenant());
  } else if (req->tenant().empty() && s.admin) {
    only_ns = 0;
  }
  const BlockStore::KvSnapshot snap = store_->TakeSnapshot(only_ns);
  resp->set_next_seq(snap.next_seq);
  for (const auto& b : snap.blocks) {
    auto* w = resp->add_blocks();
    w->set_key(b.key.ToBytes());
    if (!b.parent.IsZero()) w->set_parent_key(b.parent.ToBytes());
    w->set_layout_id(b.layout_id);
    w->set_tenant(TenantName(b.tenant_ns));
    w->set_tier(TierToWire(static_cast<uint8_t>(b.tier)));
    w->set_format(b.format);
    w->set_block_size(b.block_size);
  }
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KvTierService::PinPrefix(grpc::CallbackServerContext* ctx, const v1::PinPrefixRequest* req,
                                                   v1::PinPrefixResponse* resp) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), false, &s);
  if (!st.ok()) return Done(ctx, st);
  if (req->tokens_size() > kMaxLookupTokens)
    return Done(ctx, Invalid(absl::StrCat(req->tokens_size(), " tokens; the limit is ", kMaxLookupTokens)));
  if (req->mode() != v1::PIN_MODE_UNSPECIFIED && req->mode() != v1::PIN_MODE_HARD && req->mode() != v1::PIN_MODE_RETAIN)
    return Done(ctx, Invalid("unknown pin mode"));
  const std::vector<int32_t> tokens(req->tokens().begin(), req->tokens().end());
  auto out = store_->PinPrefix(s.salt, req->layout_id(), tokens, req->ttl_ms(), req->mode() != v1::PIN_MODE_RETAIN);
  if (!out.ok()) return Done(ctx, ToGrpc(out.status()));
  resp->set_pin_id(out->pin_id);
  resp->set_blocks(out->blocks);
  resp->set_expires_unix_ms(out->expires_unix_ms);
  KVTIER_LOG(kInfo, "pin") << "session=" << s.id << " tenant=" << s.tenant << " pin=" << out->pin_id
                           << " blocks=" << out->blocks << " ttl_ms=" << req->ttl_ms()
                           << " mode=" << (req->mode() == v1::PIN_MODE_RETAIN ? "retain" : "hard");
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KvTierService::ReleasePin(grpc::CallbackServerContext* ctx, const v1::ReleasePinRequest* req,
                                                    v1::ReleasePinResponse*) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), false, &s);
  if (!st.ok()) return Done(ctx, st);
  return Done(ctx, ToGrpc(store_->ReleasePin(req->pin_id(), s.admin ? 0 : BlockStore::TenantNs(s.salt))));
}

grpc::ServerUnaryReactor* KvTierService::Invalidate(grpc::CallbackServerContext* ctx, const v1::InvalidateRequest* req,
                                                    v1::InvalidateResponse* resp) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), false, &s);
  if (!st.ok()) return Done(ctx, st);
  BlockStore::InvalidateScope scope;
  switch (req->scope_case()) {
    case v1::InvalidateRequest::kPrefix:
      if (req->prefix().tokens_size() > kMaxLookupTokens) return Done(ctx, Invalid("too many tokens"));
      scope.kind = BlockStore::InvalidateScope::Kind::kPrefix;
      scope.tenant_salt = s.salt;
      scope.layout_id = req->prefix().layout_id();
      scope.tokens.assign(req->prefix().tokens().begin(), req->prefix().tokens().end());
      break;
    case v1::InvalidateRequest::kTenant:
      if (req->tenant().empty()) return Done(ctx, Invalid("tenant is empty"));
      if (req->tenant() != s.tenant && !s.admin) return Done(ctx, Denied("another tenant's blocks need an admin session"));
      scope.kind = BlockStore::InvalidateScope::Kind::kTenant;
      scope.tenant_ns = req->tenant() == s.tenant ? BlockStore::TenantNs(s.salt) : TenantNsOf(req->tenant());
      break;
    case v1::InvalidateRequest::kLayoutId:
      if (!s.admin) return Done(ctx, Denied("invalidating a layout needs an admin session"));
      if (req->layout_id() == 0) return Done(ctx, Invalid("layout_id is 0"));
      scope.kind = BlockStore::InvalidateScope::Kind::kLayout;
      scope.layout_id = req->layout_id();
      break;
    default:
      return Done(ctx, Invalid("Invalidate needs a scope: prefix, tenant or layout_id"));
  }
  auto out = store_->Invalidate(scope);
  if (!out.ok()) return Done(ctx, ToGrpc(out.status()));
  resp->set_blocks_removed(out->removed);
  resp->set_blocks_skipped_pinned(out->skipped_pinned);
  KVTIER_LOG(kInfo, "invalidate_rpc") << "session=" << s.id << " tenant=" << s.tenant << " removed=" << out->removed
                                      << " skipped_pinned=" << out->skipped_pinned;
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerWriteReactor<v1::WarmProgress>* KvTierService::Warm(grpc::CallbackServerContext*,
                                                               const v1::WarmRequest* req) {
  Session s;
  if (auto st = ResolveSession(req->session_id(), false, &s); !st.ok()) return RefuseStream<v1::WarmProgress>(st);
  Tier target = Tier::kHost;
  if (req->target() == v1::TIER_GPU) {
    target = Tier::kGpu;
  } else if (req->target() != v1::TIER_HOST && req->target() != v1::TIER_UNSPECIFIED) {
    return RefuseStream<v1::WarmProgress>(Invalid("warm-up target must be TIER_GPU or TIER_HOST"));
  }
  if (req->prefixes_size() < 1 || req->prefixes_size() > kMaxWarmPrefixes)
    return RefuseStream<v1::WarmProgress>(
        Invalid(absl::StrCat(req->prefixes_size(), " prefixes; 1..", kMaxWarmPrefixes, " allowed")));
  // Validate the whole request before doing anything: a malformed one changes nothing.
  int64_t total_tokens = 0;
  for (int i = 0; i < req->prefixes_size(); ++i) {
    const auto& p = req->prefixes(i);
    const Layout* layout = store_->layouts().Find(p.layout_id());
    if (layout == nullptr)
      return RefuseStream<v1::WarmProgress>(
          {grpc::StatusCode::NOT_FOUND, absl::StrCat("prefix ", i, ": unknown layout_id=", p.layout_id())});
    if (p.tokens_size() < layout->shape.block_size)
      return RefuseStream<v1::WarmProgress>(Invalid(absl::StrCat("prefix ", i, ": ", p.tokens_size(),
                                                                 " tokens, less than one block of ",
                                                                 layout->shape.block_size)));
    total_tokens += p.tokens_size();
  }
  if (total_tokens > kMaxLookupTokens)
    return RefuseStream<v1::WarmProgress>(Invalid(absl::StrCat(total_tokens, " tokens; the limit is ", kMaxLookupTokens)));
  return new WarmStream(this, s, *req, target);
}

grpc::ServerUnaryReactor* KvTierService::SetTenantQuota(grpc::CallbackServerContext* ctx,
                                                        const v1::SetTenantQuotaRequest* req,
                                                        v1::SetTenantQuotaResponse* resp) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), true, &s);
  if (!st.ok()) return Done(ctx, st);
  if (req->tenant().empty()) return Done(ctx, Invalid("tenant is empty"));
  const auto& q = req->quota();
  if (q.gpu_bytes() < 0 || q.host_bytes() < 0 || q.ssd_bytes() < 0)
    return Done(ctx, Invalid("quota bytes must be >= 0 (0: no quota)"));
  if (config_.tenants_size() > 0) {
    bool known = false;
    for (const auto& t : config_.tenants()) known |= t.name() == req->tenant();
    if (!known) return Done(ctx, {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown tenant '", req->tenant(), "'")});
  }
  TenantQuota quota{static_cast<uint64_t>(q.gpu_bytes()), static_cast<uint64_t>(q.host_bytes()),
                    static_cast<uint64_t>(q.ssd_bytes())};
  const uint64_t ns = TenantNsOf(req->tenant());
  if (auto set = store_->SetTenantQuota(ns, quota); !set.ok()) return Done(ctx, ToGrpc(set));
  {
    MutexLock lock(&tenant_mu_);
    tenant_names_.try_emplace(ns, req->tenant());
  }
  *resp->mutable_quota() = q;
  KVTIER_LOG(kInfo, "set_tenant_quota") << "session=" << s.id << " tenant=" << req->tenant()
                                        << " gpu_bytes=" << q.gpu_bytes() << " host_bytes=" << q.host_bytes()
                                        << " ssd_bytes=" << q.ssd_bytes();
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KvTierService::PolicyStats(grpc::CallbackServerContext* ctx,
                                                     const v1::PolicyStatsRequest* req, v1::PolicyStatsResponse* resp) {
  Session s;
  grpc::Status st = ResolveSession(req->session_id(), false, &s);
  if (!st.ok()) return Done(ctx, st);
  const kvtier::PolicyStats p = store_->GetPolicyStats();
  resp->set_lookup_blocks_requested(p.lookup_blocks_requested);
  for (Tier t : {Tier::kGpu, Tier::kHost, Tier::kSsd}) {
    const int i = static_cast<int>(t);
    if (t == Tier::kSsd && !store_->has_ssd()) continue;
    auto* w = resp->add_tiers();
    w->set_tier(TierToWire(static_cast<uint8_t>(t)));
    w->set_eviction_policy(p.eviction_policy[i]);
    w->set_lookup_hits(p.lookup_hits_by_tier[i]);
    w->set_admission_rejections(p.admission_rejections[i]);
    w->set_quota_evictions(p.quota_evictions[i]);
  }
  for (int r = 1; r < kNumRemoveReasons; ++r)
    (*resp->mutable_removed_by_reason())[RemoveReasonName(static_cast<RemoveReason>(r))] = p.removed_by_reason[r];
  resp->set_pins_active(p.pins_active);
  resp->set_pins_created(p.pins_created);
  resp->set_pins_expired(p.pins_expired);
  resp->set_pinned_blocks(p.pinned_blocks_by_pins);
  resp->set_retention_hint_blocks(p.retention_hint_blocks);
  resp->set_blocks_invalidated(p.invalidated);
  resp->set_blocks_warmed(p.warmed_blocks);
  resp->set_host_to_gpu_bytes_per_second(p.host_to_gpu_bytes_per_second);
  resp->set_ssd_read_bytes_per_second(p.ssd_read_bytes_per_second);
  resp->set_event_next_seq(p.event_next_seq);
  resp->set_bytes_saved_by_quantization(store_->Stats().bytes_saved_by_quantization);
  if (s.admin)
    for (const auto& c : store_->events().Consumers()) {
      auto* w = resp->add_event_consumers();
      w->set_name(c.name);
      w->set_lag(c.lag);
      w->set_lost(c.lost);
    }
  FillTenantStats(s, resp->mutable_tenants());
  return Done(ctx, grpc::Status::OK);
}

void KvTierService::FillTenantStats(const Session& s,
                                    google::protobuf::RepeatedPtrField<v1::TenantPolicyStats>* out) const {
  const uint64_t own = BlockStore::TenantNs(s.salt);
  for (const TenantUsage& u : store_->GetPolicyStats().tenants) {
    if (!s.admin && u.tenant_ns != own) continue;
    auto* w = out->Add();
    w->set_tenant(TenantName(u.tenant_ns));
    w->set_pins(u.retention_pins);
    for (Tier t : {Tier::kGpu, Tier::kHost, Tier::kSsd}) {
      if (t == Tier::kSsd && !store_->has_ssd()) continue;
      const int i = static_cast<int>(t);
      auto* tu = w->add_tiers();
      tu->set_tier(TierToWire(static_cast<uint8_t>(t)));
      tu->set_used_bytes(u.used_bytes[i]);
      tu->set_quota_bytes(u.quota_bytes[i]);
      tu->set_pinned_bytes(u.pinned_bytes[i]);
    }
  }
}

}  // namespace kvtier
