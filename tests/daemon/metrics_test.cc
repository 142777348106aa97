// The Prometheus endpoint of a real in-process kvtierd: scraped over HTTP with a minimal client, parsed,
// checked for well-formed exposition text, and checked to move with the RPCs that drive the store.
#include "daemon/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <chrono>
#include <fstream>
#include <thread>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "tests/daemon/daemon_test_util.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

struct HttpResponse {
  int status = 0;
  std::string head;
  std::string body;
};

// One HTTP/1.0 request to 127.0.0.1:port; the server closes the connection after the response.
absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError("connect");
  }
  const std::string req = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return absl::UnavailableError("send");
  }
  std::string raw;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t split = raw.find("\r\n\r\n");
  if (split == std::string::npos || !absl::StartsWith(raw, "HTTP/1."))
    return absl::DataLossError("no HTTP head: " + raw);
  HttpResponse r;
  r.head = raw.substr(0, split);
  r.body = raw.substr(split + 4);
  if (!absl::SimpleAtoi(r.head.substr(9, 3), &r.status)) return absl::DataLossError("bad status line: " + r.head);
  return r;
}

// A parsed exposition: sample values by series ("name" or "name{labels}") and the TYPE of each family.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  std::set<std::string> helps;
  std::vector<std::string> errors;  // format violations found while parsing
};

Exposition Parse(const std::string& text) {
  Exposition e;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "# HELP ")) {
      std::vector<std::string> parts = absl::StrSplit(line.substr(7), absl::MaxSplits(' ', 1));
      e.helps.insert(parts[0]);
      continue;
    }
    if (absl::StartsWith(line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line.substr(7), ' ');
      if (parts.size() != 2 || e.types.count(parts[0]) > 0)
        e.errors.push_back("bad or repeated TYPE: " + std::string(line));
      if (parts.size() == 2) e.types[parts[0]] = parts[1];
      continue;
    }
    const size_t space = line.rfind(' ');
    double v = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &v)) {
      e.errors.push_back("unparsable sample: " + std::string(line));
      continue;
    }
    const std::string series(line.substr(0, space));
    std::string family = series.substr(0, series.find('{'));
    for (absl::string_view suffix : {"_bucket", "_sum", "_count"})
      if (absl::EndsWith(family, suffix) && e.types.count(family.substr(0, family.size() - suffix.size())) > 0 &&
          e.types[family.substr(0, family.size() - suffix.size())] == "histogram")
        family.resize(family.size() - suffix.size());
    if (e.types.count(family) == 0 || e.helps.count(family) == 0)
      e.errors.push_back("sample before its HELP/TYPE: " + series);
    if (e.samples.count(series) > 0) e.errors.push_back("repeated series: " + series);
    e.samples[series] = v;
  }
  return e;
}

using testing::SmallLayout;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-metrics-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(16ull << 20);
    config_.mutable_limits()->set_host_tier_bytes(16ull << 20);
    config_.mutable_limits()->set_ssd_tier_bytes(64ull << 20);
    config_.set_ssd_dir((dir_ / "ssd").string());
    config_.set_metrics_address("127.0.0.1:0");
    auto s = KvTierServer::Start(config_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_GT(server_->metrics_port(), 0);
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Client> Connect() {
    ClientOptions o;
    o.target = "unix:" + config_.socket_path();
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  Exposition Scrape() {
    auto r = HttpRequest(server_->metrics_port(), "GET", "/metrics");
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    EXPECT_EQ(r->status, 200) << r->head;
    EXPECT_TRUE(absl::StrContains(r->head, "text/plain; version=0.0.4")) << r->head;
    Exposition e = Parse(r->body);
    EXPECT_TRUE(e.errors.empty()) << e.errors.front();
    return e;
  }

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
};

TEST_F(MetricsTest, ExpositionIsWellFormedAndNamedByConvention) {
  const Exposition e = Scrape();
  ASSERT_FALSE(e.types.empty());
  for (const auto& [family, type] : e.types) {
    EXPECT_TRUE(absl::StartsWith(family, "kvtier_")) << family;
    EXPECT_TRUE(e.helps.count(family)) << family;
    EXPECT_EQ(type == "counter", absl::EndsWith(family, "_total")) << family << " is a " << type;
  }
  for (const char* tier : {"gpu", "host", "ssd"}) {
    const std::string series = std::string("kvtier_tier_capacity_bytes{tier=\"") + tier + "\"}";
    EXPECT_EQ(e.samples.count(series), 1u) << series;
  }
  EXPECT_EQ(e.samples.at("kvtier_tier_capacity_bytes{tier=\"gpu\"}"), 16u << 20);
  EXPECT_EQ(e.samples.at("kvtier_tier_capacity_bytes{tier=\"host\"}"), 16u << 20);
  // Histograms: buckets cumulative and ascending, +Inf equal to _count.
  for (const char* h : {"kvtier_page_out_duration_seconds", "kvtier_page_in_duration_seconds",
                        "kvtier_ssd_write_duration_seconds", "kvtier_ssd_read_duration_seconds"}) {
    ASSERT_EQ(e.types.count(h), 1u) << h;
    EXPECT_EQ(e.types.at(h), "histogram");
    double previous = 0;
    for (double bound : LatencyHistogram::kBoundsSeconds) {
      std::ostringstream series;
      series << h << "_bucket{le=\"" << bound << "\"}";
      ASSERT_EQ(e.samples.count(series.str()), 1u) << series.str();
      EXPECT_GE(e.samples.at(series.str()), previous);
      previous = e.samples.at(series.str());
    }
    const std::string inf = std::string(h) + "_bucket{le=\"+Inf\"}";
    ASSERT_EQ(e.samples.count(inf), 1u);
    EXPECT_GE(e.samples.at(inf), previous);
    EXPECT_EQ(e.samples.at(inf), e.samples.at(std::string(h) + "_count"));
  }
}

TEST_F(MetricsTest, ValuesFollowTheRpcs) {
  const Exposition before = Scrape();
  EXPECT_EQ(before.samples.at("kvtier_sessions"), 0);
  EXPECT_EQ(before.samples.at("kvtier_lookups_total"), 0);

  auto c = Connect();
  ASSERT_NE(c, nullptr);
  auto reg = c->RegisterLayout(SmallLayout());
  ASSERT_TRUE(reg.ok()) << reg.status();
  auto blk = c->Allocate(reg->layout_id(), 1);
  ASSERT_TRUE(blk.ok()) << blk.status();
  v1::CommitEntry entry;
  entry.set_block_id(blk->block_ids(0));
  for (int i = 0; i < 16; ++i) entry.add_tokens(7 + i);
  auto committed = c->Commit(std::span<const v1::CommitEntry>(&entry, 1));
  ASSERT_TRUE(committed.ok()) << committed.status();

  Exposition e = Scrape();
  EXPECT_EQ(e.samples.at("kvtier_sessions"), 1);
  EXPECT_EQ(e.samples.at("kvtier_layouts"), 1);
  EXPECT_EQ(e.samples.at("kvtier_blocks_committed_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_pinned_blocks"), 1);  // the committer keeps a pin
  EXPECT_EQ(e.samples.at("kvtier_tier_blocks{tier=\"gpu\"}"), 1);
  EXPECT_GT(e.samples.at("kvtier_tier_used_bytes{tier=\"gpu\"}"), 0);

  // Page the block out: GPU -> host.
  std::vector<uint64_t> ids{committed->results(0).block_id()};
  ASSERT_TRUE(c->Release(ids).ok());
  auto out = c->Evict(v1::TIER_GPU, 0);
  ASSERT_TRUE(out.ok()) << out.status();
  e = Scrape();
  EXPECT_EQ(e.samples.at("kvtier_pinned_blocks"), 0);
  EXPECT_EQ(e.samples.at("kvtier_page_outs_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_tier_blocks{tier=\"gpu\"}"), 0);
  EXPECT_EQ(e.samples.at("kvtier_tier_blocks{tier=\"host\"}"), 1);
  EXPECT_GE(e.samples.at("kvtier_page_out_duration_seconds_count"), 1);
  EXPECT_GT(e.samples.at("kvtier_page_out_duration_seconds_sum"), 0);
  // int8 offload of an fp16 page saves bytes.
  EXPECT_GT(e.samples.at("kvtier_quantization_saved_bytes_total"), 0);

  // Host -> SSD, then a lookup that promotes it all the way back: SSD -> host -> GPU.
  ASSERT_TRUE(c->Evict(v1::TIER_HOST, 0).ok());
  e = Scrape();
  EXPECT_EQ(e.samples.at("kvtier_ssd_writes_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_tier_blocks{tier=\"ssd\"}"), 1);
  EXPECT_GE(e.samples.at("kvtier_ssd_write_duration_seconds_count"), 1);

  std::vector<int32_t> tokens(entry.tokens().begin(), entry.tokens().end());
  for (int i = 0; i < 16; ++i) tokens.push_back(1000 + i);  // a second full block that is not cached
  auto hit = c->Lookup(reg->layout_id(), tokens, /*pin=*/true, /*promote=*/true);
  ASSERT_TRUE(hit.ok()) << hit.status();
  ASSERT_EQ(hit->blocks_size(), 1);
  e = Scrape();
  EXPECT_EQ(e.samples.at("kvtier_lookups_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_lookup_blocks_requested_total"), 2);
  EXPECT_EQ(e.samples.at("kvtier_lookup_blocks_hit_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_ssd_reads_total"), 1);
  EXPECT_EQ(e.samples.at("kvtier_page_ins_total"), 1);
  EXPECT_GE(e.samples.at("kvtier_page_in_duration_seconds_count"), 1);
  EXPECT_GE(e.samples.at("kvtier_ssd_read_duration_seconds_count"), 1);
  EXPECT_EQ(e.samples.at("kvtier_tier_blocks{tier=\"gpu\"}"), 1);
  EXPECT_EQ(e.samples.at("kvtier_pinned_blocks"), 1);
  EXPECT_EQ(e.samples.at("kvtier_checksum_failures_total"), 0);
  EXPECT_EQ(e.samples.at("kvtier_pinned_blocks_dropped_total"), 0);

  c.reset();  // the session ends: its pin goes with it (the daemon sees the stream close asynchronously)
  for (int i = 0; i < 500; ++i) {
    e = Scrape();
    if (e.samples.at("kvtier_sessions") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(e.samples.at("kvtier_sessions"), 0);
  EXPECT_EQ(e.samples.at("kvtier_pinned_blocks"), 0);
}

// The metric families a shipped file mentions (histogram series reduced to their family).
std::set<std::string> FamiliesMentionedIn(const std::string& path, const Exposition& e) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::set<std::string> families;
  // Every maximal run of [a-z_] that starts with "kvtier_".
  for (size_t at = text.find("kvtier_"); at != std::string::npos; at = text.find("kvtier_", at + 1)) {
    size_t end = at;
    while (end < text.size() && (std::islower(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
    std::string f = text.substr(at, end - at);
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string base = f.substr(0, f.size() - std::min(f.size(), std::strlen(suffix)));
      if (absl::EndsWith(f, suffix) && e.types.count(base) > 0) f = base;
    }
    families.insert(f);
  }
  return families;
}

TEST_F(MetricsTest, DashboardAndOperatorGuideUseExactlyTheExportedFamilies) {
  const Exposition e = Scrape();
  for (const char* file : {"/deploy/grafana/kvtier.json", "/docs/operations.md"}) {
    const std::set<std::string> mentioned = FamiliesMentionedIn(std::string(KVTIER_SOURCE_DIR) + file, e);
    EXPECT_FALSE(mentioned.empty()) << file;
    for (const std::string& f : mentioned) EXPECT_EQ(e.types.count(f), 1u) << file << " uses " << f << ", not exported";
    for (const auto& [family, type] : e.types) EXPECT_EQ(mentioned.count(family), 1u) << file << " lacks " << family;
  }
}

TEST_F(MetricsTest, OnlyGetAndHeadOfMetricsAreServed) {
  auto post = HttpRequest(server_->metrics_port(), "POST", "/metrics");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);
  auto other = HttpRequest(server_->metrics_port(), "GET", "/");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->status, 404);
  auto head = HttpRequest(server_->metrics_port(), "HEAD", "/metrics");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
}

TEST_F(MetricsTest, StartFailsClearlyWhenTheAddressIsTaken) {
  v1::DaemonConfig second = config_;
  second.set_socket_path((dir_ / "second.sock").string());
  second.set_ssd_dir("");
  second.set_metrics_address("127.0.0.1:" + std::to_string(server_->metrics_port()));
  auto s = KvTierServer::Start(second);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), second.metrics_address())) << s.status();
}

}  // namespace
}  // namespace kvtier
