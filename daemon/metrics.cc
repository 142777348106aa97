#include "daemon/metrics.h"

#include <civetweb.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "tiering/log.h"

namespace kvtier {
namespace {

// Appends the HELP and TYPE lines of one metric family.
void Family(std::string* out, absl::string_view name, absl::string_view type, absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void Scalar(std::string* out, absl::string_view name, absl::string_view type, absl::string_view help, uint64_t v) {
  Family(out, name, type, help);
  absl::StrAppend(out, name, " ", v, "\n");
}

// Prometheus renders floats in Go's strconv format; %.9g is exact enough and parses everywhere.
std::string Float(double v) { return absl::StrFormat("%.9g", v); }

void Histogram(std::string* out, absl::string_view name, absl::string_view help, const LatencyHistogram::Snapshot& h) {
  Family(out, name, "histogram", help);
  for (size_t i = 0; i < LatencyHistogram::kBoundsSeconds.size(); ++i)
    absl::StrAppend(out, name, "_bucket{le=\"", Float(LatencyHistogram::kBoundsSeconds[i]), "\"} ", h.cumulative[i],
                    "\n");
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", h.count, "\n");
  absl::StrAppend(out, name, "_sum ", Float(h.sum_seconds), "\n", name, "_count ", h.count, "\n");
}

}  // namespace

MetricsSample TakeMetricsSample(const BlockStore& store, const SessionRegistry& sessions) {
  MetricsSample s;
  s.store = store.Stats();
  const MoveLatencies& l = store.latencies();
  s.page_out = l.page_out.Take();
  s.page_in = l.page_in.Take();
  s.ssd_write = l.ssd_write.Take();
  s.ssd_read = l.ssd_read.Take();
  s.sessions = sessions.size();
  TakePolicySample(store, sessions, &s);
  return s;
}

std::string RenderPrometheusText(const MetricsSample& sample) {
  const StoreStats& st = sample.store;
  std::string out;
  out.reserve(8192);

  struct TierGauge {
    const char* name;
    const char* help;
    uint64_t TierUsage::*field;
  };
  for (const TierGauge& g :
       {TierGauge{"kvtier_tier_capacity_bytes", "Capacity of a tier in bytes.", &TierUsage::capacity_bytes},
        TierGauge{"kvtier_tier_used_bytes", "Bytes held in a tier.", &TierUsage::used_bytes},
        TierGauge{"kvtier_tier_blocks", "Blocks resident in a tier.", &TierUsage::blocks}}) {
    Family(&out, g.name, "gauge", g.help);
    for (const TierUsage& t : st.tiers)
      absl::StrAppend(&out, g.name, "{tier=\"", TierName(t.tier), "\"} ", t.*g.field, "\n");
  }

  Scalar(&out, "kvtier_lookups_total", "counter", "Lookup calls served.", st.lookups);
  Scalar(&out, "kvtier_lookup_blocks_requested_total", "counter",
         "Full blocks asked for by lookups (the hit-rate denominator).", st.lookup_blocks_requested);
  Scalar(&out, "kvtier_lookup_blocks_hit_total", "counter", "Blocks found by lookups (longest cached prefix).",
         st.lookup_blocks_hit);
  Scalar(&out, "kvtier_blocks_committed_total", "counter", "Blocks committed under a prefix key.", st.blocks_committed);
  Scalar(&out, "kvtier_blocks_deduplicated_total", "counter",
         "Commits that found the block already cached (the private copy was freed).", st.blocks_deduplicated);
  Scalar(&out, "kvtier_page_outs_total", "counter", "Blocks paged out from the GPU tier to the host tier.",
         st.page_outs);
  Scalar(&out, "kvtier_page_ins_total", "counter", "Blocks paged in from the host tier to the GPU tier.", st.page_ins);
  Scalar(&out, "kvtier_ssd_writes_total", "counter", "Blocks demoted from the host tier to the SSD tier.",
         st.ssd_writes);
  Scalar(&out, "kvtier_ssd_reads_total", "counter", "Blocks promoted from the SSD tier to the host tier.",
         st.ssd_reads);
  Scalar(&out, "kvtier_ssd_write_failures_total", "counter", "SSD block writes that failed.", st.ssd_write_failures);
  Scalar(&out, "kvtier_ssd_read_failures_total", "counter", "SSD block reads that failed or did not verify.",
         st.ssd_read_failures);
  Scalar(&out, "kvtier_ssd_restored_blocks_total", "counter", "Blocks found on the SSD tier at start (warm restart).",
         st.ssd_restored);
  Scalar(&out, "kvtier_blocks_dropped_total", "counter", "Blocks evicted from the last tier, or lost to errors.",
         st.blocks_dropped);
  Scalar(&out, "kvtier_checksum_failures_total", "counter",
         "Blocks whose checksum did not verify (dropped, never served).", st.checksum_failures);
  Scalar(&out, "kvtier_pinned_blocks_dropped_total", "counter",
         "Pinned blocks freed anyway (only a corrupt record may do that).", st.pinned_blocks_dropped);
  Scalar(&out, "kvtier_quantization_saved_bytes_total", "counter",
         "Bytes saved by the offload codec, summed over page-outs (resident size minus record size).",
         st.bytes_saved_by_quantization);
  Scalar(&out, "kvtier_static_scale_clipped_total", "counter",
         "Values clipped by calibrated static scales (beyond the calibrated range), summed over page-outs.",
         st.static_scale_clipped);
  Scalar(&out, "kvtier_pinned_blocks", "gauge", "Block pins held by sessions.", st.pinned_blocks);
  Scalar(&out, "kvtier_sessions", "gauge", "Attached sessions.", sample.sessions);
  Scalar(&out, "kvtier_layouts", "gauge", "Registered KV layouts.", st.layouts);

  Histogram(&out, "kvtier_page_out_duration_seconds", "Duration of one GPU-to-host page-out batch.", sample.page_out);
  Histogram(&out, "kvtier_page_in_duration_seconds", "Duration of one host-to-GPU page-in batch.", sample.page_in);
  Histogram(&out, "kvtier_ssd_write_duration_seconds", "Duration of one host-to-SSD write batch.", sample.ssd_write);
  Histogram(&out, "kvtier_ssd_read_duration_seconds", "Duration of one SSD-to-host read-and-verify batch.",
            sample.ssd_read);
  AppendPolicyMetrics(sample, &out);
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, const BlockStore* store,
                                                                    const SessionRegistry* sessions) {
  std::unique_ptr<MetricsServer> s(new MetricsServer(store, sessions));
  // civetweb's library state is reference-counted; the destructor releases this reference.
  mg_init_library(0);
  s->library_initialized_ = true;
  // No document_root: civetweb serves nothing but the handler registered below.
  const char* options[] = {"listening_ports",    address.c_str(), "num_threads", "2",
                           "request_timeout_ms", "10000",         nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.configuration_options = options;
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error;
  std::memset(&error, 0, sizeof(error));
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  s->ctx_ = mg_start2(&init, &error);
  if (s->ctx_ == nullptr)
    return absl::UnavailableError(absl::StrCat("metrics listener on ", address, ": ", error_text));
  mg_set_request_handler(s->ctx_, "/metrics$", &MetricsServer::HandleMetrics, s.get());
  mg_server_port port;
  std::memset(&port, 0, sizeof(port));
  if (mg_get_server_ports(s->ctx_, 1, &port) < 1)
    return absl::InternalError(absl::StrCat("metrics listener on ", address, ": no bound port"));
  s->port_ = port.port;
  KVTIER_LOG(kInfo, "metrics_listening") << "address=" << address << " port=" << s->port_;
  return s;
}

MetricsServer::~MetricsServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
  if (library_initialized_) mg_exit_library();
}

int MetricsServer::HandleMetrics(mg_connection* conn, void* self_ptr) {
  const auto* self = static_cast<const MetricsServer*>(self_ptr);
  const mg_request_info* req = mg_get_request_info(conn);
  const bool head = std::strcmp(req->request_method, "HEAD") == 0;
  if (!head && std::strcmp(req->request_method, "GET") != 0) {
    mg_send_http_error(conn, 405, "only GET /metrics\n");
    return 405;
  }
  const std::string body = RenderPrometheusText(TakeMetricsSample(*self->store_, *self->sessions_));
  mg_send_http_ok(conn, "text/plain; version=0.0.4; charset=utf-8", static_cast<long long>(body.size()));
  if (!head) mg_write(conn, body.data(), body.size());
  return 200;
}

}  // namespace kvtier
