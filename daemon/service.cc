#include "daemon/service.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "daemon/layout_spec.h"
#include "daemon/status_map.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

}  // namespace

// One Attach stream: the session lives until the stream ends. It sends one SessionEvent and then holds
// the call open; when the client goes away (process death closes its socket) gRPC cancels the call and
// the session is closed, which releases its pins and private blocks.
class KvTierService::AttachReactor final : public grpc::ServerWriteReactor<v1::SessionEvent> {
 public:
  AttachReactor(SessionRegistry* sessions, Session session, int64_t lease_ms)
      : sessions_(sessions), session_id_(session.id) {
    event_.set_session_id(session.id);
    event_.set_lease_ms(lease_ms);
    event_.set_server_time_ms(absl::ToUnixMillis(absl::Now()));
    event_.set_is_admin(session.admin);
    StartWrite(&event_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "session stream broken"));
  }
  void OnCancel() override { End(grpc::Status::CANCELLED); }
  void OnDone() override {
    sessions_->Close(session_id_);
    delete this;
  }

 private:
  void End(const grpc::Status& status) {
    sessions_->Close(session_id_);
    if (!finished_.exchange(true)) Finish(status);
  }

  SessionRegistry* sessions_;
  SessionId session_id_;
  v1::SessionEvent event_;
  std::atomic<bool> finished_{false};
};

KvTierService::KvTierService(const v1::DaemonConfig& config, BlockStore* store, SessionRegistry* sessions)
    : config_(config),
      store_(store),
      sessions_(sessions),
      prefetcher_(std::make_unique<Prefetcher>(store, sessions)) {
  SetMessageAllocatorFor_Lookup(&lookup_alloc_);
  SetMessageAllocatorFor_Commit(&commit_alloc_);
  SetMessageAllocatorFor_Allocate(&allocate_alloc_);
  SetMessageAllocatorFor_Release(&release_alloc_);
}

void KvTierService::StopBackgroundWork() { prefetcher_->Stop(); }

grpc::ServerWriteReactor<v1::SessionEvent>* KvTierService::Attach(grpc::CallbackServerContext* ctx,
                                                                  const v1::AttachRequest* req) {
  std::string tenant = req->tenant().empty() ? "default" : req->tenant();
  std::string salt = tenant;
  const bool admin_token_ok = !config_.admin_token().empty() && req->token() == config_.admin_token();
  bool admin = config_.admin_token().empty() || admin_token_ok;
  // Credentials: a token of the tenant token file names its tenant; else the admin token; else the
  // config's tenant list (when there is one). With neither file nor list, auth is off.
  bool refused = false;
  const TokenGrant* grant = nullptr;
  if (tokens_ != nullptr)
    if (auto it = tokens_->find(req->token()); it != tokens_->end()) grant = &it->second;
  if (grant != nullptr) {
    refused = !req->tenant().empty() && req->tenant() != grant->tenant;
    tenant = salt = grant->tenant;
  } else if (!admin_token_ok && (tokens_ != nullptr || config_.tenants_size() > 0)) {
    const v1::Tenant* found = nullptr;
    for (const auto& t : config_.tenants())
      if (t.name() == tenant) found = &t;
    refused = found == nullptr || (!found->token().empty() && found->token() != req->token());
  }
  for (const auto& t : config_.tenants())
    if (t.name() == tenant && !t.salt().empty()) salt = t.salt();
  if (refused) {
    class Refuse final : public grpc::ServerWriteReactor<v1::SessionEvent> {
     public:
      Refuse() { Finish({grpc::StatusCode::UNAUTHENTICATED, "unknown tenant or bad credentials"}); }
      void OnDone() override { delete this; }
    };
    KVTIER_LOG(kWarning, "attach_refused") << "tenant=" << tenant << " peer=" << ctx->peer();
    return new Refuse();
  }
  Session s = sessions_->Open(std::move(tenant), std::move(salt), admin, req->client_name(), req->pid());
  OnSessionOpened(s);
  return new AttachReactor(sessions_, std::move(s), config_.lease_ms());
}

}  // namespace kvtier
