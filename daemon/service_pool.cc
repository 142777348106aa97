// KvTierService: GetPoolHandle — the GPU-tier pool export for engines that launch kvtier's kernels
// themselves. The descriptors go through the FdBroker (gRPC cannot carry them).
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/service.h"
#include "daemon/status_map.h"
#include "tiering/log.h"

namespace kvtier {

grpc::ServerUnaryReactor* KvTierService::GetPoolHandle(grpc::CallbackServerContext* ctx,
                                                       const v1::GetPoolHandleRequest* req,
                                                       v1::GetPoolHandleResponse* resp) {
  const std::string peer = ctx->peer();
  return WithSessionFn(ctx, req->session_id(), false, [&](const Session& s) -> grpc::Status {
    // Handles only to local processes: a TCP peer could not use a descriptor or a CUDA IPC handle anyway.
    if (!absl::StartsWith(peer, "unix:"))
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "pool handles are given only to sessions on the local unix socket"};
    // A mapping sees every block of the layout, whoever's: only trusted tenants get one.
    bool trusted = s.admin || (config_.tenants_size() == 0 && tokens_ == nullptr);  // or auth is off
    for (const auto& t : config_.tenants())
      if (t.name() == s.tenant && t.pool_access()) trusted = true;
    if (tokens_ != nullptr)
      for (const auto& [token, grant] : *tokens_)
        if (grant.tenant == s.tenant && grant.pool_access) trusted = true;
    if (!trusted)
      return {grpc::StatusCode::PERMISSION_DENIED,
              absl::StrCat("tenant '", s.tenant, "' has no pool_access (a mapped pool exposes every tenant's blocks)")};
    if (fd_broker_ == nullptr)
      return {grpc::StatusCode::UNAVAILABLE, "the descriptor socket is not running (no unix socket_path)"};
    const Layout* layout = store_->layouts().Find(req->layout_id());
    if (layout == nullptr) return {grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown layout_id=", req->layout_id())};
    auto e = store_->ExportPool(layout->id);
    if (!e.ok()) return ToGrpc(e.status());
    switch (e->kind) {
      case PoolExport::Kind::kHostMemfd: resp->set_kind(v1::POOL_KIND_HOST_MEMFD); break;
      case PoolExport::Kind::kCudaVmm: resp->set_kind(v1::POOL_KIND_CUDA_VMM); break;
      case PoolExport::Kind::kCudaIpc: resp->set_kind(v1::POOL_KIND_CUDA_IPC); break;
    }
    resp->set_device(e->device);
    resp->set_reserved_bytes(e->reserved_bytes);
    resp->set_granularity(e->granularity);
    std::vector<int> fds;
    for (const auto& c : e->chunks) {
      auto* chunk = resp->add_chunks();
      chunk->set_offset(c.offset);
      chunk->set_bytes(c.bytes);
      fds.push_back(c.fd);
    }
    resp->set_cuda_ipc_handle(e->ipc_handle);
    resp->set_num_slots(e->num_slots);
    resp->set_page_bytes(e->page_bytes);
    resp->set_param_bytes(e->param_bytes);
    resp->set_params_offset(e->params_offset);
    const LayoutShape& shape = layout->shape;
    for (int layer = 0; layer < shape.num_layers; ++layer)
      for (Operand op : {Operand::kKey, Operand::kValue})
        for (int head = 0; head < shape.num_kv_heads; ++head) {
          const SegmentCodec& c = layout->resident.segment(layer, op, head).codec;
          auto* w = resp->add_resident_codecs();
          w->set_format(static_cast<uint32_t>(c.format));
          w->set_grouping(static_cast<uint32_t>(c.grouping));
          w->set_group_size(c.group_size);
        }
    auto* l = resp->mutable_layout();
    l->set_num_layers(shape.num_layers);
    l->set_num_kv_heads(shape.num_kv_heads);
    l->set_head_dim(shape.head_dim);
    l->set_block_size(shape.block_size);
    l->set_dtype(layout->activation == Format::kBf16 ? v1::ACTIVATION_DTYPE_BF16 : v1::ACTIVATION_DTYPE_FP16);
    l->set_model_name(layout->model_name);
    resp->set_fd_socket(fd_broker_->path());
    resp->set_fd_ticket(fd_broker_->Offer(std::move(fds)));  // the broker owns the descriptors now
    resp->set_ticket_ttl_ms(absl::ToInt64Milliseconds(FdBroker::kTicketTtl));
    KVTIER_LOG(kInfo, "pool_handle") << "session=" << s.id << " layout=" << layout->id
                                     << " chunks=" << resp->chunks_size();
    return grpc::Status::OK;
  });
}

}  // namespace kvtier
