// KvTierService: the kvtier.v1.KvTier gRPC service. Each handler validates its (untrusted) request,
// resolves the session, calls the BlockStore, and maps the result to a gRPC status in one place
// (status_map.h). Handlers never block on I/O other than the store's own bounded work.
#pragma once

#include <memory>

#include "absl/functional/function_ref.h"

#include "kvtier/v1/config.pb.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "daemon/prefetcher.h"
#include "daemon/session_registry.h"
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
  // Flush, Drain (service_admin.cc); Prefetch, GetPrefetch (service_prefetch.cc).
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* ctx, const kvtier::v1::FlushRequest* req,
                                  kvtier::v1::FlushResponse* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx, const kvtier::v1::DrainRequest* req,
                                  kvtier::v1::DrainResponse* resp) override;
  grpc::ServerUnaryReactor* Prefetch(grpc::CallbackServerContext* ctx, const kvtier::v1::PrefetchRequest* req,
                                     kvtier::v1::PrefetchResponse* resp) override;
  grpc::ServerUnaryReactor* GetPrefetch(grpc::CallbackServerContext* ctx, const kvtier::v1::GetPrefetchRequest* req,
                                        kvtier::v1::GetPrefetchResponse* resp) override;

  // Ends background work (prefetches; their waiting callers are answered) before the server shuts down.
  void StopBackgroundWork();

 private:
  class AttachReactor;

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
  std::unique_ptr<Prefetcher> prefetcher_;
};

}  // namespace kvtier
