#include "daemon/server.h"
#include "daemon/config_policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "daemon/static_scales_file.h"
#include "daemon/fault_spec.h"
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
  auto faults = ParseFaultSpec(config.fault_spec());
  if (!faults.ok()) return faults.status();
  if (!faults->device.empty()) {
    KVTIER_LOG(kWarning, "fault_injection") << "target=device rules=" << faults->device.size()
                                            << " spec=\"" << config.fault_spec() << "\"";
    device = std::make_unique<FaultInjectingDeviceBackend>(std::move(device), faults->device, faults->seed);
  }
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
    if (config.ssd_io_timeout_ms() > 0) so.io_timeout = absl::Milliseconds(config.ssd_io_timeout_ms());
    if (config.ssd_min_free_fraction() > 0) so.min_free_fraction = config.ssd_min_free_fraction();
    so.durability =
        config.ssd_durability() == "power_loss" ? SsdDurability::kPowerLoss : SsdDurability::kProcessCrash;
    std::unique_ptr<IoBackend> io;
    if (!faults->ssd.empty()) {
      KVTIER_LOG(kWarning, "fault_injection") << "target=ssd rules=" << faults->ssd.size() << " spec=\""
                                              << config.fault_spec() << "\"";
      io = MakeFaultInjectingSsdBackend(so, *faults);
    }
    auto opened = SsdTier::Open(so, std::move(io));
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
  if (!config.tenant_token_file().empty()) {
    auto tokens = LoadTokenFile(config.tenant_token_file());
    if (!tokens.ok()) return tokens.status();
    KVTIER_LOG(kInfo, "tenant_tokens") << "file=" << config.tenant_token_file() << " tokens=" << tokens->size();
    s->service_->set_tokens(std::make_shared<const TokenTable>(std::move(*tokens)));
  }
  std::shared_ptr<grpc::ServerCredentials> tcp_credentials = grpc::InsecureServerCredentials();
  if (!config.tls_cert_file().empty()) {
    auto read = [](const std::string& path) -> absl::StatusOr<std::string> {
      std::ifstream in(path);
      if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read TLS file ", path));
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    auto cert = read(config.tls_cert_file());
    auto key = read(config.tls_key_file());
    absl::StatusOr<std::string> ca = std::string();
    if (!config.tls_client_ca_file().empty()) ca = read(config.tls_client_ca_file());
    for (const auto* st : {&cert.status(), &key.status(), &ca.status()})
      if (!st->ok()) return *st;
    grpc::SslServerCredentialsOptions tls(config.tls_client_ca_file().empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    tls.pem_key_cert_pairs.push_back({*key, *cert});
    tls.pem_root_certs = *ca;
    tcp_credentials = grpc::SslServerCredentials(tls);
  }

  if (!config.socket_path().empty()) {
    // Next to the gRPC socket; without it (path too long) GetPoolHandle answers UNAVAILABLE.
    auto broker = FdBroker::Start(config.socket_path() + ".fds");
    if (broker.ok()) {
      s->fd_broker_ = std::move(*broker);
      s->service_->set_fd_broker(s->fd_broker_.get());
    } else {
      KVTIER_LOG(kWarning, "fd_socket_unavailable") << "error=\"" << broker.status() << "\"";
    }
  }
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
  if (!config.tcp_address().empty()) builder.AddListeningPort(config.tcp_address(), tcp_credentials, &s->tcp_port_);
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
  if (!config.tcp_address().empty() && s->tcp_port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on tcp_address ", config.tcp_address()));
  KVTIER_LOG(kInfo, "listening") << "socket=" << socket << " tcp=" << config.tcp_address()
                                 << " tls=" << (config.tls_cert_file().empty() ? "off" : "on")
                                 << " device=" << s->device_name_ << " gpu_pool_bytes=" << options.gpu_pool_bytes
                                 << " host_tier_bytes=" << options.host_tier_bytes;
  return s;
}

void KvTierServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (!server_) return;  // Start failed before the server was built (e.g. the SSD tier did not open)
  if (service_) service_->StopBackgroundWork();  // answers callers waiting on prefetches: no call stays open
  if (!server_) return;  // Start failed before the server ran
  // Stop accepting, let in-flight calls finish for up to 5 s, then cancel the rest (Attach streams).
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
  for (const Session& s : sessions_->List()) sessions_->Close(s.id);
  if (!config_.socket_path().empty()) ::unlink(config_.socket_path().c_str());
  KVTIER_LOG(kInfo, "shutdown") << "state=complete";
}

KvTierServer::~KvTierServer() { Shutdown(); }

}  // namespace kvtier
