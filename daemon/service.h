// KvTierService: the kvtier.v1.KvTier gRPC service. Each handler validates its (untrusted) request,
// resolves the session, calls the BlockStore, and maps the result to a gRPC status in one place
// (status_map.h). Handlers never block on I/O other than the store's own bounded work.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <optional>

#include "absl/functional/function_ref.h"

#include "kvtier/v1/config.pb.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "daemon/arena_allocator.h"
#include "daemon/fd_broker.h"
#include "daemon/prefetcher.h"
#include "daemon/session_registry.h"
#include "daemon/token_file.h"
#include "absl/container/flat_hash_map.h"
#include "daemon/session_registry.h"
#include "tiering/sync.h"
#include "tiering/block_store.h"

namespace kvtier {

// Limits on what one request may ask for (beyond the gRPC message size cap).
inline constexpr int kMaxBlocksPerCall = 4096;
inline constexpr int kMaxLookupTokens = 1 << 20;

class KvTierService final : public kvtier::v1::KvTier::CallbackService {
 public:
  KvTierService(const kvtier::v1::DaemonConfig& config, BlockStore* store, SessionRegistry* sessions);

  grpc::ServerWriteReactor<kvtier::v1::SessionEvent>* Attach(grpc::CallbackServerContext* ctx,
                                                             const kvtier::v1::AttachRequest* req) override;
  grpc::ServerUnaryReactor* RegisterLayout(grpc::CallbackServerContext* ctx,
                                           const kvtier::v1::RegisterLayoutRequest* req,
                                           kvtier::v1::RegisterLayoutResponse* resp) override;
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* ctx, const kvtier::v1::AllocateRequest* req,
                                     kvtier::v1::AllocateResponse* resp) override;
  grpc::ServerUnaryReactor* WriteBlocks(grpc::CallbackServerContext* ctx, const kvtier::v1::WriteBlocksRequest* req,
                                        kvtier::v1::WriteBlocksResponse* resp) override;
  grpc::ServerUnaryReactor* ReadBlocks(grpc::CallbackServerContext* ctx, const kvtier::v1::ReadBlocksRequest* req,
                                       kvtier::v1::ReadBlocksResponse* resp) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* ctx, const kvtier::v1::CommitRequest* req,
                                   kvtier::v1::CommitResponse* resp) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx, const kvtier::v1::LookupRequest* req,
                                   kvtier::v1::LookupResponse* resp) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx, const kvtier::v1::ReleaseRequest* req,
                                    kvtier::v1::ReleaseResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const kvtier::v1::StatsRequest* req,
                                  kvtier::v1::StatsResponse* resp) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* ctx, const kvtier::v1::AttendRequest* req,
                                   kvtier::v1::AttendResponse* resp) override;
  grpc::ServerUnaryReactor* Evict(grpc::CallbackServerContext* ctx, const kvtier::v1::EvictRequest* req,
                                  kvtier::v1::EvictResponse* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx,
                                         const kvtier::v1::ListSessionsRequest* req,
                                         kvtier::v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* SetTierLimits(grpc::CallbackServerContext* ctx,
                                          const kvtier::v1::SetTierLimitsRequest* req,
                                          kvtier::v1::SetTierLimitsResponse* resp) override;
  // Calibration and static scales (docs/calibration.md).
  grpc::ServerUnaryReactor* StartCalibration(grpc::CallbackServerContext* ctx,
                                             const kvtier::v1::StartCalibrationRequest* req,
                                             kvtier::v1::StartCalibrationResponse* resp) override;
  grpc::ServerUnaryReactor* StopCalibration(grpc::CallbackServerContext* ctx,
                                            const kvtier::v1::StopCalibrationRequest* req,
                                            kvtier::v1::StopCalibrationResponse* resp) override;
  grpc::ServerUnaryReactor* ExportCalibration(grpc::CallbackServerContext* ctx,
                                              const kvtier::v1::ExportCalibrationRequest* req,
                                              kvtier::v1::ExportCalibrationResponse* resp) override;
  grpc::ServerUnaryReactor* LoadStaticScales(grpc::CallbackServerContext* ctx,
                                             const kvtier::v1::LoadStaticScalesRequest* req,
                                             kvtier::v1::LoadStaticScalesResponse* resp) override;

  // The static scales of the config's default policy, applied to every RegisterLayout (set before serving).
  void SetDefaultStaticScales(std::optional<StaticScalesPolicy> policy) { default_static_ = std::move(policy); }
  // Flush, Drain (service_admin.cc); Prefetch, GetPrefetch (service_prefetch.cc).
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* ctx, const kvtier::v1::FlushRequest* req,
                                  kvtier::v1::FlushResponse* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx, const kvtier::v1::DrainRequest* req,
                                  kvtier::v1::DrainResponse* resp) override;
  grpc::ServerUnaryReactor* Prefetch(grpc::CallbackServerContext* ctx, const kvtier::v1::PrefetchRequest* req,
                                     kvtier::v1::PrefetchResponse* resp) override;
  grpc::ServerUnaryReactor* GetPrefetch(grpc::CallbackServerContext* ctx, const kvtier::v1::GetPrefetchRequest* req,
                                        kvtier::v1::GetPrefetchResponse* resp) override;

  // GetPoolHandle (service_pool.cc).
  grpc::ServerUnaryReactor* GetPoolHandle(grpc::CallbackServerContext* ctx,
                                          const kvtier::v1::GetPoolHandleRequest* req,
                                          kvtier::v1::GetPoolHandleResponse* resp) override;

  // Ends background work (prefetches; their waiting callers are answered) before the server shuts down.
  void StopBackgroundWork();
  // Where GetPoolHandle's descriptors are handed out (null: pool handles are unavailable).
  void set_fd_broker(FdBroker* broker) { fd_broker_ = broker; }
  // The tenant token file's table (null: no token file). Set before the server starts.
  void set_tokens(std::shared_ptr<const TokenTable> tokens) { tokens_ = std::move(tokens); }
  // Cache policy (service_policy.cc).
  grpc::ServerWriteReactor<kvtier::v1::KvEventBatch>* StreamKvEvents(
      grpc::CallbackServerContext* ctx, const kvtier::v1::StreamKvEventsRequest* req) override;
  grpc::ServerUnaryReactor* KvSnapshot(grpc::CallbackServerContext* ctx, const kvtier::v1::KvSnapshotRequest* req,
                                       kvtier::v1::KvSnapshotResponse* resp) override;
  grpc::ServerUnaryReactor* PinPrefix(grpc::CallbackServerContext* ctx, const kvtier::v1::PinPrefixRequest* req,
                                      kvtier::v1::PinPrefixResponse* resp) override;
  grpc::ServerUnaryReactor* ReleasePin(grpc::CallbackServerContext* ctx, const kvtier::v1::ReleasePinRequest* req,
                                       kvtier::v1::ReleasePinResponse* resp) override;
  grpc::ServerUnaryReactor* Invalidate(grpc::CallbackServerContext* ctx, const kvtier::v1::InvalidateRequest* req,
                                       kvtier::v1::InvalidateResponse* resp) override;
  grpc::ServerWriteReactor<kvtier::v1::WarmProgress>* Warm(grpc::CallbackServerContext* ctx,
                                                           const kvtier::v1::WarmRequest* req) override;
  grpc::ServerUnaryReactor* SetTenantQuota(grpc::CallbackServerContext* ctx,
                                           const kvtier::v1::SetTenantQuotaRequest* req,
                                           kvtier::v1::SetTenantQuotaResponse* resp) override;
  grpc::ServerUnaryReactor* PolicyStats(grpc::CallbackServerContext* ctx, const kvtier::v1::PolicyStatsRequest* req,
                                        kvtier::v1::PolicyStatsResponse* resp) override;

  // A new session (Attach): its private blocks are charged to its tenant; its tenant's name is kept for
  // events and stats.
  void OnSessionOpened(const Session& s);
  // The tenant name of a namespace id (what events and stats show).
  std::string TenantName(uint64_t tenant_ns) const;
  // The namespace id of a tenant name under this daemon's tenant list (salt = name unless configured).
  uint64_t TenantNsOf(const std::string& tenant) const;
  // Per-tenant usage, quotas and pins per tier: every tenant for an admin session, else its own.
  void FillTenantStats(const Session& s,
                       google::protobuf::RepeatedPtrField<kvtier::v1::TenantPolicyStats>* out) const;

 private:
  class AttachReactor;
  template <class Msg>
  class ThreadedWriter;
  class EventStream;
  class WarmStream;
  mutable Mutex tenant_mu_;
  absl::flat_hash_map<uint64_t, std::string> tenant_names_ ABSL_GUARDED_BY(tenant_mu_);
  std::atomic<int> event_streams_{0};

  // The session named by a request, or NOT_FOUND; admin-only calls also need an admin session.
  grpc::Status ResolveSession(uint64_t id, bool need_admin, Session* out) const;
  // Runs a handler for a session-bound call and, if the session ended meanwhile, releases whatever the
  // handler gave it (closes the race between a call in flight and the lease ending).
  template <class Fn>
  grpc::ServerUnaryReactor* WithSession(grpc::CallbackServerContext* ctx, uint64_t id, bool need_admin, Fn&& fn);
  // The same for handlers defined in other files (the template lives in service_handlers.cc).
  grpc::ServerUnaryReactor* WithSessionFn(grpc::CallbackServerContext* ctx, uint64_t id, bool need_admin,
                                          absl::FunctionRef<grpc::Status(const Session&)> fn);

  const kvtier::v1::DaemonConfig config_;
  BlockStore* store_;
  SessionRegistry* sessions_;
  std::optional<StaticScalesPolicy> default_static_;
  std::unique_ptr<Prefetcher> prefetcher_;
  FdBroker* fd_broker_ = nullptr;
  std::shared_ptr<const TokenTable> tokens_;
  // Arena-allocated messages for the hot per-request calls.
  ArenaMessageAllocator<kvtier::v1::LookupRequest, kvtier::v1::LookupResponse> lookup_alloc_;
  ArenaMessageAllocator<kvtier::v1::CommitRequest, kvtier::v1::CommitResponse> commit_alloc_;
  ArenaMessageAllocator<kvtier::v1::AllocateRequest, kvtier::v1::AllocateResponse> allocate_alloc_;
  ArenaMessageAllocator<kvtier::v1::ReleaseRequest, kvtier::v1::ReleaseResponse> release_alloc_;
};

}  // namespace kvtier
