// KvTierServer: assembles a running kvtierd — device backend, block store, sessions, the gRPC service
// (with health checking and reflection) on a unix socket (mode 0660) and optionally TCP, and the
// Prometheus /metrics listener when metrics_address is set.
// Start returns once the server accepts calls; Shutdown stops accepting, ends open calls (sessions are
// released), stops the movers and frees the tiers.
#pragma once

#include <grpcpp/server.h>

#include <memory>

#include "absl/status/statusor.h"
#include "daemon/kv_event_zmq.h"
#include "daemon/metrics.h"
#include "daemon/service.h"
#include "daemon/session_registry.h"
#include "kvtier/v1/config.pb.h"
#include "tiering/block_store.h"

namespace kvtier {

class KvTierServer {
 public:
  static absl::StatusOr<std::unique_ptr<KvTierServer>> Start(const kvtier::v1::DaemonConfig& config);
  ~KvTierServer();

  void Shutdown();
  const std::string& device_name() const { return device_name_; }
  BlockStore& store() { return *store_; }
  // The bound metrics port (useful with metrics_address "host:0"); 0 when metrics are off.
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // The bound TCP port (useful with tcp_address "host:0"); 0 without a TCP listener.
  int tcp_port() const { return tcp_port_; }

 private:
  KvTierServer() = default;

  kvtier::v1::DaemonConfig config_;
  std::string device_name_;
  std::unique_ptr<BlockStore> store_;
  std::unique_ptr<SessionRegistry> sessions_;
  std::unique_ptr<FdBroker> fd_broker_;  // GetPoolHandle's descriptor socket (unix socket_path only)
  std::unique_ptr<KvTierService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<KvEventZmqPublisher> kv_events_zmq_;  // reads the store's events; stops before it
  std::unique_ptr<MetricsServer> metrics_;  // declared last: stops before what it reads is destroyed
  bool shut_down_ = false;
  int tcp_port_ = 0;
};

}  // namespace kvtier
