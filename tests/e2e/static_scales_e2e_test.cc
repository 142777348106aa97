// End to end on the host device (issue 10 acceptance): a real kvtierd process, kvtierctl processes and an
// engine client. Calibrate on one workload (kvtierctl calibrate start/stop/export FILE), restart kvtierd
// with the file in its config (default_policy.static_scales, layer 0 excluded), serve a second workload
// whose blocks are quantized with the static scales on page-out, written to SSD, survive a killed
// daemon (warm restart), and read back within the bound docs/calibration.md states. A config naming a bad
// scales file keeps kvtierd from starting, with the reason.
#include <gtest/gtest.h>

#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/prompt_kv.h"
#include "daemon/static_scales_file.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/daemon/static_scales_check.h"
#include "tests/e2e/process.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;
using testing::ChildProcess;

constexpr LayoutShape kShape{4, 2, 64, 16};

v1::LayoutSpec NamedLayout() {
  v1::LayoutSpec l;
  l.set_num_layers(kShape.num_layers);
  l.set_num_kv_heads(kShape.num_kv_heads);
  l.set_head_dim(kShape.head_dim);
  l.set_block_size(kShape.block_size);
  l.set_dtype(v1::ACTIVATION_DTYPE_FP16);
  l.set_model_name("tiny");
  for (int i = 0; i < kShape.num_layers; ++i) l.add_layer_names("model.layers." + std::to_string(i) + ".self_attn");
  return l;
}

class StaticScalesE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("kvtier-e2e-static-" + std::to_string(getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    socket_ = (dir_ / "kvtierd.sock").string();
    act_ = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                  DefaultCodec(Format::kFp16, Operand::kValue));
  }
  void TearDown() override {
    engine_.reset();
    StopDaemon(SIGTERM);
    std::filesystem::remove_all(dir_);
  }
  void StartDaemon(const std::vector<std::string>& extra) {
    std::filesystem::remove(socket_);
    std::vector<std::string> argv{KVTIERD_PATH};
    argv.insert(argv.end(), extra.begin(), extra.end());
    daemon_ = std::make_unique<ChildProcess>(argv, (dir_ / "kvtierd.log").string());
    const std::string error = testing::WaitForDaemon(*daemon_, socket_, dir_ / "kvtierd.log");
    ASSERT_TRUE(error.empty()) << error;
  }
  void StopDaemon(int sig) {
    if (!daemon_) return;
    daemon_->Signal(sig);
    const int rc = daemon_->Wait();
    if (sig == SIGTERM) {
      EXPECT_EQ(rc, 0) << "kvtierd did not shut down cleanly";
    }
    daemon_.reset();
  }
  // Runs kvtierctl; returns its stdout's first line.
  std::string Ctl(const std::vector<std::string>& args, int* rc) {
    std::vector<std::string> argv{KVTIERCTL_PATH, "--socket=" + socket_};
    argv.insert(argv.end(), args.begin(), args.end());
    ChildProcess p(argv, (dir_ / "kvtierctl.log").string());
    const std::string line = p.ReadLine();
    *rc = p.Wait();
    return line;
  }
  void ConnectEngine() {
    ClientOptions o;
    o.target = "unix:" + socket_;
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    engine_ = std::move(*c);
    auto reg = engine_->RegisterLayout(NamedLayout());
    ASSERT_TRUE(reg.ok()) << reg.status();
    layout_ = *reg;
  }
  void WriteWorkload(const std::vector<int32_t>& prompt) {
    auto w = WritePromptKv(
        *engine_, layout_.layout_id(), kShape, layout_.activation_page_bytes(), prompt, [&](int b, uint8_t* page) {
          testing::FillActivationPage(act_, Format::kFp16, testing::BlockSeed(prompt, kShape.block_size, b), page);
        });
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE(engine_->Release(w->block_ids).ok());
  }
  std::vector<std::string> TierFlags() const {
    return {"--socket_path=" + socket_,
            "--lease_ms=2000",
            "--ssd_dir=" + (dir_ / "ssd").string(),
            "--limits.gpu_pool_bytes=67108864",
            "--limits.host_tier_bytes=67108864",
            "--limits.ssd_tier_bytes=67108864"};
  }
  std::string Config(const std::filesystem::path& scales) const {
    return absl::StrCat(
        "default_policy {\n  resident_key { format: \"fp16\" }\n  resident_value { format: \"fp16\" }\n",
        "  static_scales {\n    file: \"", scales.string(), "\"\n",
        "    exclude: \"model.layers.0.self_attn\"\n  }\n}\n");
  }

  std::filesystem::path dir_;
  std::string socket_;
  std::unique_ptr<ChildProcess> daemon_;
  std::unique_ptr<Client> engine_;
  v1::RegisterLayoutResponse layout_;
  PageGeometry act_;
};

TEST_F(StaticScalesE2e, CalibrateExportRestartServeFromSsdWithinTheBound) {
  // 1. Calibrate on workload A.
  StartDaemon(TierFlags());
  ConnectEngine();
  const uint64_t calibrated_layout = layout_.layout_id();
  int rc = 0;
  std::string out = Ctl({"calibrate", "start"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  std::vector<int32_t> a(16 * 16);
  std::iota(a.begin(), a.end(), 1);
  WriteWorkload(a);
  out = Ctl({"calibrate", "stop"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "statistics for 1 layouts")) << out;
  const std::filesystem::path scales = dir_ / "tiny.kvscales";
  out = Ctl({"calibrate", "export", scales.string()}, &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("layout ", calibrated_layout, ", 256 tokens"))) << out;
  auto set = ParseStaticScalesFile(testing::ReadTextFile(scales), scales.string());
  ASSERT_TRUE(set.ok()) << set.status();

  // 2. Restart with the file in the config; workload B through the static layout, down to SSD.
  engine_.reset();
  StopDaemon(SIGTERM);
  const std::filesystem::path conf = dir_ / "kvtierd.conf";
  std::ofstream(conf) << Config(scales);
  std::vector<std::string> flags = TierFlags();
  flags.insert(flags.begin(), "--config=" + conf.string());
  StartDaemon(flags);
  ConnectEngine();
  const uint64_t static_layout = layout_.layout_id();
  EXPECT_NE(static_layout, calibrated_layout);
  EXPECT_LT(layout_.offload_page_bytes(), layout_.page_bytes());
  std::vector<int32_t> b(16 * 12);
  std::iota(b.begin(), b.end(), 90000);
  WriteWorkload(b);
  out = Ctl({"evict", "--tier=gpu"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "paged out 12 blocks")) << out;
  out = Ctl({"evict", "--tier=host"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  auto stats = engine_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->ssd_writes(), 12u);
  const uint64_t clipped = stats->static_scale_clipped();
  // The set is kept beside the SSD records, so the blocks' scales can always be configured again.
  const std::filesystem::path kept =
      dir_ / "ssd" / "scales" / absl::StrCat(absl::Hex((*set)->id, absl::kZeroPad16), ".kvscales");
  auto kept_set = ParseStaticScalesFile(testing::ReadTextFile(kept), kept.string());
  ASSERT_TRUE(kept_set.ok()) << kept_set.status();
  EXPECT_EQ((*kept_set)->id, (*set)->id);
  EXPECT_EQ((*kept_set)->scales, (*set)->scales);

  // 3. Kill it; the restarted daemon finds the blocks on SSD and dequantizes them with the same scale set.
  engine_.reset();
  StopDaemon(SIGKILL);
  StartDaemon(flags);
  ConnectEngine();
  EXPECT_EQ(layout_.layout_id(), static_layout);
  stats = engine_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->ssd_restored(), 12u);
  auto read = ReadPrefixKv(*engine_, layout_.layout_id(), layout_.activation_page_bytes(), b);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->pages.size(), 12u);
  testing::StaticScaleCheck check;
  for (int i = 0; i < 12; ++i)
    testing::CheckStaticScalePage(act_, **set, {false, true, true, true}, testing::BlockSeed(b, kShape.block_size, i),
                                  reinterpret_cast<const uint8_t*>(read->pages[i].data()), &check);
  EXPECT_EQ(check.bad, 0);
  EXPECT_EQ(static_cast<uint64_t>(check.clipped), clipped);
  EXPECT_GT(check.worst_ratio, 0.5f);
  EXPECT_LE(check.worst_ratio, 1.001f);

  // 4. Another scales file (one scale edited) is another layout: the blocks quantized with the first set
  //    are never decoded with the second.
  engine_.reset();
  StopDaemon(SIGTERM);
  std::string edited = testing::ReadTextFile(scales);
  const size_t at = edited.find("scale: ");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, edited.find('\n', at) - at, "scale: 0.5");
  std::ofstream(scales) << edited;
  StartDaemon(flags);
  ConnectEngine();
  EXPECT_NE(layout_.layout_id(), static_layout);
  auto miss = ReadPrefixKv(*engine_, layout_.layout_id(), layout_.activation_page_bytes(), b);
  ASSERT_TRUE(miss.ok()) << miss.status();
  EXPECT_EQ(miss->pages.size(), 0u);
}

TEST_F(StaticScalesE2e, BadScalesFileInTheConfigStopsTheDaemonWithTheReason) {
  std::string file = absl::StrCat("version: 1\nnum_layers: 1\nnum_kv_heads: 1\nhead_dim: 64\ndtype: \"int8\"\n",
                                  "method: \"minmax\"\nsymmetric: true\nlayers { index: 0 key { ");
  for (int c = 0; c < 64; ++c) absl::StrAppend(&file, "scale: ", c == 5 ? "nan" : "0.01", " ");
  absl::StrAppend(&file, "} value { ");
  for (int c = 0; c < 64; ++c) absl::StrAppend(&file, "scale: 0.01 ");
  absl::StrAppend(&file, "} }\n");
  const std::filesystem::path scales = dir_ / "bad.kvscales";
  std::ofstream(scales) << file;
  const std::filesystem::path conf = dir_ / "bad.conf";
  std::ofstream(conf) << Config(scales);
  ChildProcess d({KVTIERD_PATH, "--config=" + conf.string(), "--socket_path=" + socket_}, (dir_ / "bad.log").string());
  EXPECT_NE(d.Wait(), 0);
  const std::string log = testing::ReadTextFile(dir_ / "bad.log");
  EXPECT_TRUE(absl::StrContains(log, "layer 0 K head 0 channel 5: scale nan is not a positive finite number")) << log;
}

}  // namespace
}  // namespace kvtier
