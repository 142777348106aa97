// Prometheus metrics for kvtierd: the text exposition format (version 0.0.4) rendered from the block
// store's counters and the session registry at scrape time, served at GET /metrics by civetweb.
//
// Nothing is cached: each scrape takes one BlockStore::Stats() snapshot (one short lock), reads the
// movement latency histograms (lock-free) and the session count. Metric names are `kvtier_*`; counters
// end in `_total` and count since the daemon started (ssd_restored counts the blocks found on SSD at
// start); per-tier gauges carry a `tier` label (gpu, host, ssd — ssd only when the SSD tier is on).
// docs/operations.md lists every metric and what to alert on.
//
// Lifetime: the store and the registry must outlive the MetricsServer; destroying it stops the listener
// and waits for running requests, so it is destroyed before them.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/session_registry.h"
#include "tiering/block_store.h"

struct mg_context;
struct mg_connection;

namespace kvtier {

// What one scrape reports; RenderPrometheusText is pure so it can be tested without a server.
struct MetricsSample {
  StoreStats store;
  LatencyHistogram::Snapshot page_out, page_in, ssd_write, ssd_read;
  uint64_t sessions = 0;
  // Cache policy (metrics_policy.cc).
  PolicyStats policy;
  std::vector<KvEventLog::ConsumerInfo> event_consumers;
  absl::flat_hash_map<uint64_t, std::string> tenant_names;  // namespace id -> name, from live sessions
};

MetricsSample TakeMetricsSample(const BlockStore& store, const SessionRegistry& sessions);
std::string RenderPrometheusText(const MetricsSample& sample);
// The cache-policy families (hit rate per tier, removals by reason, admission, pins, quotas, event lag).
void TakePolicySample(const BlockStore& store, const SessionRegistry& sessions, MetricsSample* sample);
void AppendPolicyMetrics(const MetricsSample& sample, std::string* out);

class MetricsServer {
 public:
  // Listens on `address` ("host:port"; port 0 picks a free one, see port()). Fails with a message naming
  // the address when it cannot listen (in use, bad address).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address, const BlockStore* store,
                                                              const SessionRegistry* sessions);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port actually bound (the configured one, or the one the kernel picked for port 0).
  int port() const { return port_; }

 private:
  MetricsServer(const BlockStore* store, const SessionRegistry* sessions) : store_(store), sessions_(sessions) {}
  static int HandleMetrics(mg_connection* conn, void* self);

  const BlockStore* store_;
  const SessionRegistry* sessions_;
  bool library_initialized_ = false;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace kvtier
