#include "daemon/server.h"
#include "daemon/config_policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "daemon/static_scales_file.h"
#include "tiering/cuda_device_backend.h"
#include "tiering/log.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<KvTierServer>> KvTierServer::Start(const kvtier::v1::DaemonConfig& config) {
  // A bad scales file stops the start before anything is built.
  auto static_scales = LoadConfiguredStaticScales(config);
  if (!static_scales.ok())
    return absl::InvalidArgumentError(
        absl::StrCat("default_policy.static_scales: ", static_scales.status().message()));
  if (*static_scales)
    KVTIER_LOG(kInfo, "static_scales") << "file=" << config.default_policy().static_scales().file()
                                       << " scale_set=" << (**static_scales).set->id
                                       << " calibrated_layout=" << (**static_scales).set->calibrated_layout_id
                                       << " tokens=" << (**static_scales).set->token_count;
  std::unique_ptr<KvTierServer> s(new KvTierServer());
  s->config_ = config;

  DeviceChoice choice = ChooseDevice(config.mover_threads());
  KVTIER_LOG(kInfo, "device") << choice.why;
  std::unique_ptr<DeviceBackend> device = std::move(choice.device);
  s->device_name_ = device->name();

  BlockStoreOptions options;
  options.gpu_pool_bytes = config.limits().gpu_pool_bytes();
  options.host_tier_bytes = config.limits().host_tier_bytes();
  options.policy = CachePolicyOptionsFromConfig(config);
  std::unique_ptr<SsdTier> ssd;
  if (!config.ssd_dir().empty() && config.limits().ssd_tier_bytes() > 0) {
    SsdTierOptions so;
    so.dir = config.ssd_dir();
    so.capacity_bytes = config.limits().ssd_tier_bytes();
    so.slab_bytes = std::min<uint64_t>(so.capacity_bytes, 1ull << 30) / 4096 * 4096;
    so.worker_threads = std::max(1, config.mover_threads() - 1);
    so.log = [](std::string_view line) { KVTIER_LOG(kInfo, "ssd") << line; };
    auto opened = SsdTier::Open(so);
    if (!opened.ok())
      return absl::FailedPreconditionError(absl::StrCat("SSD tier at ", so.dir, ": ", opened.status().message()));
    ssd = std::move(*opened);
    KVTIER_LOG(kInfo, "ssd_tier") << "dir=" << so.dir << " bytes=" << so.capacity_bytes
                                  << " backend=" << ssd->backend_name();
  }
  s->store_ =
      std::make_unique<BlockStore>(options, std::move(device), std::move(choice.host_allocator), std::move(ssd));
  if (auto st = ApplyConfiguredQuotas(config, *s->store_); !st.ok()) return st;
  s->sessions_ = std::make_unique<SessionRegistry>(s->store_.get());
  s->service_ = std::make_unique<KvTierService>(config, s->store_.get(), s->sessions_.get());
  s->service_->SetDefaultStaticScales(*std::move(static_scales));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::string socket = config.socket_path();
  if (!socket.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(socket).parent_path(), ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot create socket dir for ", socket, ": ", ec.message()));
    ::unlink(socket.c_str());  // a stale socket of a previous (killed) daemon
    builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
  }
  if (!config.tcp_address().empty()) builder.AddListeningPort(config.tcp_address(), grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes()));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes()));
  // Detect dead peers on TCP too (unix sockets report the close at once).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config.lease_ms() / 2));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(config.lease_ms() / 2));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr)
    return absl::UnavailableError(absl::StrCat("gRPC server failed to start on unix:", socket, " ",
                                               config.tcp_address()));
  if (!config.cache_policy().kv_events_zmq_endpoint().empty()) {
    auto zmq = KvEventZmqPublisher::Start(config.cache_policy().kv_events_zmq_endpoint(),
                                          config.cache_policy().kv_events_zmq_topic(), s->store_.get());
    if (!zmq.ok()) return zmq.status();
    s->kv_events_zmq_ = std::move(*zmq);
  }
  if (!config.metrics_address().empty()) {
    auto metrics = MetricsServer::Start(config.metrics_address(), s->store_.get(), s->sessions_.get());
    if (!metrics.ok()) return metrics.status();
    s->metrics_ = std::move(*metrics);
  }
  if (!socket.empty() && ::chmod(socket.c_str(), 0660) != 0)
    KVTIER_LOG(kWarning, "socket_chmod_failed") << "path=" << socket << " errno=" << std::strerror(errno);
  KVTIER_LOG(kInfo, "listening") << "socket=" << socket << " tcp=" << config.tcp_address()
                                 << " device=" << s->device_name_ << " gpu_pool_bytes=" << options.gpu_pool_bytes
                                 << " host_tier_bytes=" << options.host_tier_bytes;
  return s;
}

void KvTierServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (!server_) return;  // Start failed before the server was built (e.g. the SSD tier did not open)
  // Stop accepting, let in-flight calls finish for up to 5 s, then cancel the rest (Attach streams).
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
  for (const Session& s : sessions_->List()) sessions_->Close(s.id);
  if (!config_.socket_path().empty()) ::unlink(config_.socket_path().c_str());
  KVTIER_LOG(kInfo, "shutdown") << "state=complete";
}

KvTierServer::~KvTierServer() { Shutdown(); }

}  // namespace kvtier
