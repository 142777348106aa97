// KvTierService: the unary handlers.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/static_scales_file.h"
#include "daemon/layout_spec.h"
#include "daemon/service.h"
#include "daemon/status_map.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

v1::Tier ToWire(Tier t) {
  switch (t) {
    case Tier::kGpu: return v1::TIER_GPU;
    case Tier::kHost: return v1::TIER_HOST;
    case Tier::kSsd: return v1::TIER_SSD;
  }
  return v1::TIER_UNSPECIFIED;
}

grpc::Status Invalid(std::string msg) { return {grpc::StatusCode::INVALID_ARGUMENT, std::move(msg)}; }

grpc::Status CheckBlockCount(int n) {
  if (n > kMaxBlocksPerCall) return Invalid(absl::StrCat(n, " blocks in one call; the limit is ", kMaxBlocksPerCall));
  return grpc::Status::OK;
}

}  // namespace

grpc::Status KvTierService::ResolveSession(uint64_t id, bool need_admin, Session* out) const {
  auto s = sessions_->Find(id);
  if (!s) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown or expired session_id ", id)};
  if (need_admin && !s->admin) return {grpc::StatusCode::PERMISSION_DENIED, "admin call from a non-admin session"};
  *out = *s;
  return grpc::Status::OK;
}

template <class Fn>
grpc::ServerUnaryReactor* KvTierService::WithSession(grpc::CallbackServerContext* ctx, uint64_t id, bool need_admin,
                                                     Fn&& fn) {
  Session session;
  grpc::Status status = ResolveSession(id, need_admin, &session);
  if (status.ok()) {
    status = fn(session);
    if (!sessions_->Contains(id)) store_->ReleaseSession(id);
  }
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  r->Finish(status);
  return r;
}

grpc::ServerUnaryReactor* KvTierService::WithSessionFn(grpc::CallbackServerContext* ctx, uint64_t id, bool need_admin,
                                                       absl::FunctionRef<grpc::Status(const Session&)> fn) {
  return WithSession(ctx, id, need_admin, fn);
}

grpc::ServerUnaryReactor* KvTierService::RegisterLayout(grpc::CallbackServerContext* ctx,
                                                        const v1::RegisterLayoutRequest* req,
                                                        v1::RegisterLayoutResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session&) -> grpc::Status {
    auto spec = ToLayoutSpec(req->layout(), config_.default_policy());
    if (!spec.ok()) return ToGrpc(spec.status());
    if (default_static_) spec->static_scales = *default_static_;
    auto layout = store_->RegisterLayout(*spec);
    if (!layout.ok()) return ToGrpc(layout.status());
    const Layout& l = **layout;
    if (l.static_plan && !config_.ssd_dir().empty())
      if (absl::Status st = PersistStaticScaleSet(config_.ssd_dir(), *l.static_plan->set); !st.ok())
        KVTIER_LOG(kWarning, "static_scales") << "persist_failed error=\"" << st << "\"";
    if (l.static_plan)
      KVTIER_LOG(kInfo, "static_scales") << "layout=" << l.id << " scale_set=" << l.static_plan->set->id
                                         << " static_layers=" << l.static_plan->num_static_layers()
                                         << " unmatched_patterns=\"" << absl::StrJoin(l.static_plan->unmatched_patterns, ", ")
                                         << "\"";
    resp->set_layout_id(l.id);
    resp->set_page_bytes(l.resident.page_bytes());
    resp->set_offload_page_bytes(l.offload_record_bytes());
    resp->set_activation_page_bytes(l.activation_geometry.page_bytes());
    KVTIER_LOG(kInfo, "layout") << "layout=" << l.id << " model=" << l.model_name << " "
                                << l.resident.DebugString() << " offload_bytes=" << l.offload_record_bytes();
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Allocate(grpc::CallbackServerContext* ctx, const v1::AllocateRequest* req,
                                                  v1::AllocateResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (req->count() < 1 || req->count() > kMaxBlocksPerCall)
      return Invalid(absl::StrCat("count=", req->count(), " outside [1, ", kMaxBlocksPerCall, "]"));
    auto blocks = store_->Allocate(s.id, req->layout_id(), req->count());
    if (!blocks.ok()) return ToGrpc(blocks.status());
    for (const auto& b : *blocks) {
      resp->add_block_ids(b.id);
      resp->add_slots(b.slot);
    }
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::WriteBlocks(grpc::CallbackServerContext* ctx,
                                                     const v1::WriteBlocksRequest* req, v1::WriteBlocksResponse*) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (auto st = CheckBlockCount(req->blocks_size()); !st.ok()) return st;
    std::vector<BlockId> ids;
    std::vector<std::string_view> data;
    for (const auto& b : req->blocks()) {
      ids.push_back(b.block_id());
      data.push_back(b.data());
    }
    return ToGrpc(store_->Write(s.id, ids, data));
  });
}

grpc::ServerUnaryReactor* KvTierService::ReadBlocks(grpc::CallbackServerContext* ctx, const v1::ReadBlocksRequest* req,
                                                    v1::ReadBlocksResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (auto st = CheckBlockCount(req->block_ids_size()); !st.ok()) return st;
    std::vector<BlockId> ids(req->block_ids().begin(), req->block_ids().end());
    auto pages = store_->Read(s.id, ids);
    if (!pages.ok()) return ToGrpc(pages.status());
    uint64_t bytes = 0;
    for (const auto& p : *pages) bytes += p.size();
    if (bytes > static_cast<uint64_t>(config_.max_message_bytes()))
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              absl::StrCat("reply of ", bytes, " bytes exceeds max_message_bytes; read fewer blocks per call")};
    for (size_t i = 0; i < ids.size(); ++i) {
      auto* b = resp->add_blocks();
      b->set_block_id(ids[i]);
      b->set_data(std::move((*pages)[i]));
    }
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Commit(grpc::CallbackServerContext* ctx, const v1::CommitRequest* req,
                                                v1::CommitResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (auto st = CheckBlockCount(req->entries_size()); !st.ok()) return st;
    std::vector<CommitItem> items;
    for (const auto& e : req->entries()) {
      if (e.tokens_size() > 64) return Invalid("a committed block has at most 64 tokens");
      items.push_back({e.block_id(), e.parent_key(), std::vector<int32_t>(e.tokens().begin(), e.tokens().end()),
                       e.chain_previous()});
    }
    auto out = store_->Commit(s.id, s.salt, items);
    if (!out.ok()) return ToGrpc(out.status());
    for (const auto& c : *out) {
      auto* r = resp->add_results();
      r->set_key(c.key.ToBytes());
      r->set_block_id(c.block_id);
      r->set_deduplicated(c.deduplicated);
    }
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* req,
                                                v1::LookupResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (req->tokens_size() > kMaxLookupTokens)
      return Invalid(absl::StrCat(req->tokens_size(), " tokens; the limit is ", kMaxLookupTokens));
    const std::span<const int32_t> tokens(req->tokens().data(), req->tokens_size());
    auto out = store_->Lookup(s.id, s.salt, req->layout_id(), tokens, req->pin() || req->promote(), req->promote());
    if (!out.ok()) return ToGrpc(out.status());
    for (const auto& b : out->blocks) {
      auto* loc = resp->add_blocks();
      loc->set_key(b.key.ToBytes());
      loc->set_block_id(b.block_id);
      loc->set_tier(ToWire(b.tier));
      loc->set_slot(b.slot);
      loc->set_eta_seconds(b.eta_seconds);
      resp->set_eta_seconds(resp->eta_seconds() + b.eta_seconds);
    }
    resp->set_matched_tokens(out->matched_tokens);
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Release(grpc::CallbackServerContext* ctx, const v1::ReleaseRequest* req,
                                                 v1::ReleaseResponse*) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    if (auto st = CheckBlockCount(req->block_ids_size()); !st.ok()) return st;
    std::vector<BlockId> ids(req->block_ids().begin(), req->block_ids().end());
    return ToGrpc(store_->Release(s.id, ids));
  });
}

grpc::ServerUnaryReactor* KvTierService::Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* req,
                                               v1::StatsResponse* resp) {
  // Stats are tier totals and counters, with no per-tenant content: any attached session may ask.
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    const StoreStats st = store_->Stats();
    for (const auto& t : st.tiers) {
      auto* w = resp->add_tiers();
      w->set_tier(ToWire(t.tier));
      w->set_capacity_bytes(t.capacity_bytes);
      w->set_used_bytes(t.used_bytes);
      w->set_blocks(t.blocks);
    }
    resp->set_lookups(st.lookups);
    resp->set_lookup_blocks_requested(st.lookup_blocks_requested);
    resp->set_lookup_blocks_hit(st.lookup_blocks_hit);
    resp->set_blocks_committed(st.blocks_committed);
    resp->set_blocks_deduplicated(st.blocks_deduplicated);
    resp->set_page_outs(st.page_outs);
    resp->set_page_ins(st.page_ins);
    resp->set_bytes_saved_by_quantization(st.bytes_saved_by_quantization);
    resp->set_sessions(sessions_->size());
    resp->set_layouts(st.layouts);
    resp->set_pinned_blocks(st.pinned_blocks);
    resp->set_static_scale_clipped(st.static_scale_clipped);
    resp->set_calibrating(store_->calibrator().active());
    resp->set_blocks_dropped(st.blocks_dropped);
    resp->set_checksum_failures(st.checksum_failures);
    resp->set_ssd_writes(st.ssd_writes);
    resp->set_ssd_reads(st.ssd_reads);
    resp->set_ssd_restored(st.ssd_restored);
    FillTenantStats(s, resp->mutable_tenants());  // service_policy.cc
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Attend(grpc::CallbackServerContext* ctx, const v1::AttendRequest* req,
                                                v1::AttendResponse* resp) {
  return WithSession(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    const Layout* layout = store_->layouts().Find(req->layout_id());
    if (layout == nullptr) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id=", req->layout_id())};
    const LayoutShape& shape = layout->shape;
    if (req->layer() < 0 || req->layer() >= shape.num_layers)
      return Invalid(absl::StrCat("layer=", req->layer(), " outside [0, ", shape.num_layers, ")"));
    if (req->num_q_heads() < shape.num_kv_heads || req->num_q_heads() > 1024 ||
        req->num_q_heads() % shape.num_kv_heads != 0)
      return Invalid(absl::StrCat("num_q_heads=", req->num_q_heads(), " must be a multiple of num_kv_heads=",
                                  shape.num_kv_heads));
    if (req->sequences_size() < 1 || req->sequences_size() > kMaxBlocksPerCall)
      return Invalid(absl::StrCat(req->sequences_size(), " sequences; 1..", kMaxBlocksPerCall, " allowed"));
    if (!(req->sm_scale() >= 0.0f) || req->sm_scale() > 1e6f) return Invalid("sm_scale must be finite and >= 0");
    AttendBatch batch;
    batch.layer = req->layer();
    batch.num_q_heads = req->num_q_heads();
    batch.sm_scale = req->sm_scale();
    batch.q_indptr.push_back(0);
    std::vector<std::vector<BlockId>> blocks;
    int64_t total_blocks = 0;
    for (const auto& seq : req->sequences()) {
      const int64_t nblocks = seq.block_ids_size();
      total_blocks += nblocks;
      if (total_blocks > kMaxBlocksPerCall * 64) return Invalid("too many blocks in one Attend");
      if (seq.seq_len() < 1 || seq.seq_len() > nblocks * shape.block_size ||
          seq.seq_len() <= (nblocks - 1) * shape.block_size)
        return Invalid(absl::StrCat("seq_len=", seq.seq_len(), " does not fit its ", nblocks, " blocks of ",
                                    shape.block_size, " tokens"));
      if (seq.num_queries() < 1 || seq.num_queries() > seq.seq_len())
        return Invalid(absl::StrCat("num_queries=", seq.num_queries(), " outside [1, seq_len]"));
      batch.seq_lens.push_back(seq.seq_len());
      batch.q_indptr.push_back(batch.q_indptr.back() + seq.num_queries());
      blocks.emplace_back(seq.block_ids().begin(), seq.block_ids().end());
    }
    const uint64_t q_bytes =
        static_cast<uint64_t>(batch.q_indptr.back()) * req->num_q_heads() * shape.head_dim * 2;  // fp16/bf16
    if (req->queries().size() != q_bytes)
      return Invalid(absl::StrCat("queries has ", req->queries().size(), " bytes; expected ", q_bytes));
    std::string out(q_bytes, '\0');
    batch.q = reinterpret_cast<const uint8_t*>(req->queries().data());
    batch.out = reinterpret_cast<uint8_t*>(out.data());
    if (auto st = store_->Attend(s.id, req->layout_id(), blocks, batch); !st.ok()) return ToGrpc(st);
    resp->set_output(std::move(out));
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::Evict(grpc::CallbackServerContext* ctx, const v1::EvictRequest* req,
                                               v1::EvictResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session& s) -> grpc::Status {
    if (req->max_blocks() < 0) return Invalid("max_blocks must be >= 0");
    EvictOutcome o;
    if (req->from_tier() == v1::TIER_GPU) {
      o = store_->DemoteFromGpu(req->max_blocks());
    } else if (req->from_tier() == v1::TIER_HOST) {
      if (!store_->has_ssd()) return {grpc::StatusCode::FAILED_PRECONDITION, "no SSD tier is configured"};
      o = store_->DemoteFromHost(req->max_blocks());
    } else {
      return Invalid("Evict needs from_tier TIER_GPU or TIER_HOST");
    }
    resp->set_blocks_moved(o.moved);
    resp->set_blocks_dropped(o.dropped);
    KVTIER_LOG(kInfo, "admin_evict") << "session=" << s.id << " moved=" << o.moved << " dropped=" << o.dropped;
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::ListSessions(grpc::CallbackServerContext* ctx,
                                                      const v1::ListSessionsRequest* req,
                                                      v1::ListSessionsResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    for (const Session& s : sessions_->List()) {
      auto* info = resp->add_sessions();
      info->set_session_id(s.id);
      info->set_tenant(s.tenant);
      info->set_client_name(s.client_name);
      info->set_pid(s.pid);
      info->set_is_admin(s.admin);
      info->set_attached_unix_ms(absl::ToUnixMillis(s.attached));
      info->set_pinned_blocks(store_->PinnedBy(s.id));
    }
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::SetTierLimits(grpc::CallbackServerContext* ctx,
                                                       const v1::SetTierLimitsRequest* req,
                                                       v1::SetTierLimitsResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    const auto& l = req->limits();
    if (l.gpu_pool_bytes() != 0 && l.gpu_pool_bytes() < (1u << 20)) return Invalid("gpu_pool_bytes below 1 MiB");
    if (auto st = store_->SetLimits(l.gpu_pool_bytes(), l.host_tier_bytes(), l.ssd_tier_bytes()); !st.ok())
      return ToGrpc(st);
    const StoreStats st = store_->Stats();
    resp->mutable_limits()->set_gpu_pool_bytes(st.tiers[0].capacity_bytes);
    resp->mutable_limits()->set_host_tier_bytes(st.tiers[1].capacity_bytes);
    if (st.tiers.size() > 2) resp->mutable_limits()->set_ssd_tier_bytes(st.tiers[2].capacity_bytes);
    return grpc::Status::OK;
  });
}

// Calibration and static scales (docs/calibration.md).

grpc::ServerUnaryReactor* KvTierService::StartCalibration(grpc::CallbackServerContext* ctx,
                                                          const v1::StartCalibrationRequest* req,
                                                          v1::StartCalibrationResponse*) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    if (req->layout_id() != 0 && store_->layouts().Find(req->layout_id()) == nullptr)
      return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id ", req->layout_id())};
    if (req->target_session_id() != 0 && !sessions_->Find(req->target_session_id()))
      return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown or expired target_session_id ", req->target_session_id())};
    store_->calibrator().Start(req->layout_id(), req->target_session_id());
    KVTIER_LOG(kInfo, "calibration") << "action=start layout=" << req->layout_id()
                                     << " session=" << req->target_session_id();
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::StopCalibration(grpc::CallbackServerContext* ctx,
                                                         const v1::StopCalibrationRequest* req,
                                                         v1::StopCalibrationResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    if (!store_->calibrator().Stop())
      return {grpc::StatusCode::FAILED_PRECONDITION, "calibration is not running"};
    for (const auto& [id, tokens] : store_->calibrator().Layouts()) {
      auto* l = resp->add_layouts();
      l->set_layout_id(id);
      l->set_token_count(tokens);
    }
    KVTIER_LOG(kInfo, "calibration") << "action=stop layouts=" << resp->layouts_size();
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::ExportCalibration(grpc::CallbackServerContext* ctx,
                                                           const v1::ExportCalibrationRequest* req,
                                                           v1::ExportCalibrationResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    auto snap = store_->calibrator().Snapshot(req->layout_id());
    if (!snap.ok()) return ToGrpc(snap.status());
    const Layout* layout = store_->layouts().Find(snap->first);
    if (layout == nullptr) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id ", snap->first)};
    resp->set_scales_file(FormatStaticScalesFile(snap->second, layout->id, layout->model_name, layout->spec.layer_names));
    resp->set_layout_id(layout->id);
    resp->set_token_count(snap->second.tokens());
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KvTierService::LoadStaticScales(grpc::CallbackServerContext* ctx,
                                                          const v1::LoadStaticScalesRequest* req,
                                                          v1::LoadStaticScalesResponse* resp) {
  return WithSession(ctx, req->session_id(), true, [&](const Session&) -> grpc::Status {
    const Layout* base = store_->layouts().Find(req->layout_id());
    if (base == nullptr) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id ", req->layout_id())};
    if (!req->policy().file().empty())
      return Invalid("LoadStaticScales takes the file's content in scales_file, not a path in policy.file");
    auto set = ParseStaticScalesFile(req->scales_file(), "(request)");
    if (!set.ok()) return ToGrpc(set.status());
    auto policy = MakeStaticScalesPolicy(*std::move(set), req->policy());
    if (!policy.ok()) return ToGrpc(policy.status());
    LayoutSpec spec = base->spec;
    spec.static_scales = *std::move(policy);
    auto layout = store_->RegisterLayout(spec);
    if (!layout.ok()) return ToGrpc(layout.status());
    const Layout& l = **layout;
    if (!config_.ssd_dir().empty())
      if (absl::Status st = PersistStaticScaleSet(config_.ssd_dir(), *l.static_plan->set); !st.ok())
        KVTIER_LOG(kWarning, "static_scales") << "persist_failed error=\"" << st << "\"";
    resp->set_layout_id(l.id);
    resp->set_offload_page_bytes(l.offload_record_bytes());
    resp->set_scale_set_id(l.static_plan->set->id);
    for (int i = 0; i < l.shape.num_layers; ++i)
      if (l.static_plan->static_layers[i])
        resp->add_static_layers(l.spec.layer_names.empty() ? std::to_string(i) : l.spec.layer_names[i]);
    for (const auto& u : l.static_plan->unmatched_patterns) resp->add_unmatched_patterns(u);
    KVTIER_LOG(kInfo, "static_scales") << "action=load base_layout=" << base->id << " layout=" << l.id
                                       << " scale_set=" << l.static_plan->set->id
                                       << " static_layers=" << resp->static_layers_size() << " unmatched_patterns=\""
                                       << absl::StrJoin(l.static_plan->unmatched_patterns, ", ") << "\"";
    return grpc::Status::OK;
  });
}

}  // namespace kvtier
