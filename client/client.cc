#include "client/client.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"
#include "client/fd_transfer.h"

namespace kvtier {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

template <class Resp, class Req, class Method>
absl::StatusOr<Resp> Call(v1::KvTier::Stub& stub, Method method, const Req& req) {
  grpc::ClientContext ctx;
  Resp resp;
  grpc::Status st = (stub.*method)(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  return resp;
}

}  // namespace

std::string DefaultTarget() {
  if (const char* env = std::getenv("KVTIER_SOCKET"); env != nullptr && *env != '\0') return absl::StrCat("unix:", env);
  if (geteuid() == 0) return "unix:/run/kvtier/kvtierd.sock";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0')
    return absl::StrCat("unix:", xdg, "/kvtier/kvtierd.sock");
  return absl::StrCat("unix:/tmp/kvtier-", geteuid(), "/kvtierd.sock");
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  std::unique_ptr<Client> c(new Client());
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  const std::string target = options.target.empty() ? DefaultTarget() : options.target;
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_file.empty()) {
    grpc::SslCredentialsOptions tls;
    for (auto [path, field] : {std::pair{&options.tls_ca_file, &tls.pem_root_certs},
                               std::pair{&options.tls_cert_file, &tls.pem_cert_chain},
                               std::pair{&options.tls_key_file, &tls.pem_private_key}}) {
      if (path->empty()) continue;
      std::ifstream in(*path);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot read TLS file ", *path));
      std::stringstream ss;
      ss << in.rdbuf();
      *field = ss.str();
    }
    credentials = grpc::SslCredentials(tls);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  c->channel_ = grpc::CreateCustomChannel(target, credentials, args);
  if (!c->channel_->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::milliseconds(options.connect_timeout_ms)))
    return absl::UnavailableError(absl::StrCat("kvtierd not reachable at ", target));
  c->stub_ = v1::KvTier::NewStub(c->channel_);
  v1::AttachRequest req;
  req.set_tenant(options.tenant);
  req.set_token(options.token);
  req.set_client_name(options.client_name);
  req.set_pid(getpid());
  c->attach_ = c->stub_->Attach(&c->attach_ctx_, req);
  v1::SessionEvent first;
  if (!c->attach_->Read(&first)) {
    const grpc::Status st = c->attach_->Finish();
    c->attach_.reset();  // finished: the destructor must not finish it again
    return FromGrpc(st);
  }
  c->session_id_ = first.session_id();
  c->is_admin_ = first.is_admin();
  c->events_ = std::thread([raw = c.get()] { raw->ReadEvents(); });
  return c;
}

void Client::ReadEvents() {
  v1::SessionEvent ev;
  while (attach_->Read(&ev)) {
  }
}

Client::~Client() {
  if (attach_) {
    attach_ctx_.TryCancel();
    if (events_.joinable()) events_.join();
    (void)attach_->Finish();
  }
}

absl::StatusOr<v1::RegisterLayoutResponse> Client::RegisterLayout(const v1::LayoutSpec& layout) {
  v1::RegisterLayoutRequest req;
  req.set_session_id(session_id_);
  *req.mutable_layout() = layout;
  return Call<v1::RegisterLayoutResponse>(*stub_, &v1::KvTier::Stub::RegisterLayout, req);
}

absl::StatusOr<v1::AllocateResponse> Client::Allocate(uint64_t layout_id, int count) {
  v1::AllocateRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  req.set_count(count);
  return Call<v1::AllocateResponse>(*stub_, &v1::KvTier::Stub::Allocate, req);
}

absl::Status Client::WriteBlocks(std::span<const uint64_t> block_ids, std::span<const std::string> pages) {
  if (block_ids.size() != pages.size()) return absl::InvalidArgumentError("block_ids and pages differ in count");
  v1::WriteBlocksRequest req;
  req.set_session_id(session_id_);
  for (size_t i = 0; i < block_ids.size(); ++i) {
    auto* b = req.add_blocks();
    b->set_block_id(block_ids[i]);
    b->set_data(pages[i]);
  }
  return Call<v1::WriteBlocksResponse>(*stub_, &v1::KvTier::Stub::WriteBlocks, req).status();
}

absl::StatusOr<std::vector<std::string>> Client::ReadBlocks(std::span<const uint64_t> block_ids) {
  v1::ReadBlocksRequest req;
  req.set_session_id(session_id_);
  for (uint64_t id : block_ids) req.add_block_ids(id);
  auto resp = Call<v1::ReadBlocksResponse>(*stub_, &v1::KvTier::Stub::ReadBlocks, req);
  if (!resp.ok()) return resp.status();
  std::vector<std::string> out;
  for (auto& b : *resp->mutable_blocks()) out.push_back(std::move(*b.mutable_data()));
  return out;
}

absl::StatusOr<v1::CommitResponse> Client::Commit(std::span<const v1::CommitEntry> entries) {
  v1::CommitRequest req;
  req.set_session_id(session_id_);
  for (const auto& e : entries) *req.add_entries() = e;
  return Call<v1::CommitResponse>(*stub_, &v1::KvTier::Stub::Commit, req);
}

absl::StatusOr<v1::LookupResponse> Client::Lookup(uint64_t layout_id, std::span<const int32_t> tokens, bool pin,
                                                  bool promote) {
  v1::LookupRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  req.mutable_tokens()->Add(tokens.begin(), tokens.end());
  req.set_pin(pin);
  req.set_promote(promote);
  return Call<v1::LookupResponse>(*stub_, &v1::KvTier::Stub::Lookup, req);
}

absl::Status Client::Release(std::span<const uint64_t> block_ids) {
  v1::ReleaseRequest req;
  req.set_session_id(session_id_);
  for (uint64_t id : block_ids) req.add_block_ids(id);
  return Call<v1::ReleaseResponse>(*stub_, &v1::KvTier::Stub::Release, req).status();
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  v1::StatsRequest req;
  req.set_session_id(session_id_);
  return Call<v1::StatsResponse>(*stub_, &v1::KvTier::Stub::Stats, req);
}

absl::StatusOr<v1::AttendResponse> Client::Attend(v1::AttendRequest req) {
  req.set_session_id(session_id_);
  return Call<v1::AttendResponse>(*stub_, &v1::KvTier::Stub::Attend, req);
}

absl::StatusOr<v1::EvictResponse> Client::Evict(v1::Tier from, int64_t max_blocks) {
  v1::EvictRequest req;
  req.set_session_id(session_id_);
  req.set_from_tier(from);
  req.set_max_blocks(max_blocks);
  return Call<v1::EvictResponse>(*stub_, &v1::KvTier::Stub::Evict, req);
}

absl::StatusOr<v1::ListSessionsResponse> Client::ListSessions() {
  v1::ListSessionsRequest req;
  req.set_session_id(session_id_);
  return Call<v1::ListSessionsResponse>(*stub_, &v1::KvTier::Stub::ListSessions, req);
}

absl::StatusOr<v1::SetTierLimitsResponse> Client::SetTierLimits(const v1::TierLimits& limits) {
  v1::SetTierLimitsRequest req;
  req.set_session_id(session_id_);
  *req.mutable_limits() = limits;
  return Call<v1::SetTierLimitsResponse>(*stub_, &v1::KvTier::Stub::SetTierLimits, req);
}

absl::Status Client::StartCalibration(uint64_t layout_id, uint64_t target_session_id) {
  v1::StartCalibrationRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  req.set_target_session_id(target_session_id);
  return Call<v1::StartCalibrationResponse>(*stub_, &v1::KvTier::Stub::StartCalibration, req).status();
}

absl::StatusOr<v1::StopCalibrationResponse> Client::StopCalibration() {
  v1::StopCalibrationRequest req;
  req.set_session_id(session_id_);
  return Call<v1::StopCalibrationResponse>(*stub_, &v1::KvTier::Stub::StopCalibration, req);
}

absl::StatusOr<v1::ExportCalibrationResponse> Client::ExportCalibration(uint64_t layout_id) {
  v1::ExportCalibrationRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  return Call<v1::ExportCalibrationResponse>(*stub_, &v1::KvTier::Stub::ExportCalibration, req);
}

absl::StatusOr<v1::LoadStaticScalesResponse> Client::LoadStaticScales(uint64_t layout_id, std::string scales_file,
                                                                      const v1::StaticScalesPolicy& policy) {
  v1::LoadStaticScalesRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  req.set_scales_file(std::move(scales_file));
  *req.mutable_policy() = policy;
  return Call<v1::LoadStaticScalesResponse>(*stub_, &v1::KvTier::Stub::LoadStaticScales, req);
}

absl::StatusOr<v1::FlushResponse> Client::Flush(v1::Tier to) {
  v1::FlushRequest req;
  req.set_session_id(session_id_);
  req.set_to_tier(to);
  return Call<v1::FlushResponse>(*stub_, &v1::KvTier::Stub::Flush, req);
}

absl::StatusOr<v1::DrainResponse> Client::Drain(v1::Tier tier, int64_t wait_ms) {
  v1::DrainRequest req;
  req.set_session_id(session_id_);
  req.set_tier(tier);
  req.set_wait_ms(wait_ms);
  return Call<v1::DrainResponse>(*stub_, &v1::KvTier::Stub::Drain, req);
}

absl::StatusOr<v1::PrefetchResponse> Client::Prefetch(uint64_t layout_id, std::span<const std::string> keys,
                                                      std::span<const int32_t> tokens, bool pin) {
  v1::PrefetchRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  for (const auto& k : keys) req.add_keys(k);
  req.mutable_tokens()->Add(tokens.begin(), tokens.end());
  req.set_pin(pin);
  return Call<v1::PrefetchResponse>(*stub_, &v1::KvTier::Stub::Prefetch, req);
}

absl::StatusOr<v1::GetPrefetchResponse> Client::GetPrefetch(uint64_t prefetch_id, int64_t wait_ms) {
  v1::GetPrefetchRequest req;
  req.set_session_id(session_id_);
  req.set_prefetch_id(prefetch_id);
  req.set_wait_ms(wait_ms);
  return Call<v1::GetPrefetchResponse>(*stub_, &v1::KvTier::Stub::GetPrefetch, req);
}

absl::StatusOr<v1::GetPoolHandleResponse> Client::GetPoolHandle(uint64_t layout_id) {
  v1::GetPoolHandleRequest req;
  req.set_session_id(session_id_);
  req.set_layout_id(layout_id);
  return Call<v1::GetPoolHandleResponse>(*stub_, &v1::KvTier::Stub::GetPoolHandle, req);
}

absl::StatusOr<std::unique_ptr<MappedPool>> Client::MapPool(uint64_t layout_id) {
  auto handle = GetPoolHandle(layout_id);
  if (!handle.ok()) return handle.status();
  auto fds = FetchFds(handle->fd_socket(), handle->fd_ticket());
  if (!fds.ok()) return fds.status();
  auto pool = MappedPool::Map(*handle, *fds);
  for (int fd : *fds) close(fd);  // the mapping keeps what it needs
  return pool;
}

}  // namespace kvtier
