// Calibration mode and static scales through the real gRPC server in-process: calibrate, export,
// load the file as a static-scale variant of the layout, serve KV through page-out/page-in within the
// stated bound, and every bad input (file, layout, patterns, permissions) rejected with nothing changed.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "client/client.h"
#include "client/prompt_kv.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "daemon/static_scales_file.h"
#include "kernels/testing/kv_oracle.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/daemon/static_scales_check.h"

namespace kvtier {
namespace {
namespace v1 = kvtier::v1;

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

std::vector<int32_t> Prompt(int first, int tokens) {
  std::vector<int32_t> p(tokens);
  std::iota(p.begin(), p.end(), first);
  return p;
}

class StaticScalesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTestDir("kvtier-static-");
    config_ = DefaultConfig();
    config_.set_socket_path((dir_ / "k.sock").string());
    config_.mutable_limits()->set_gpu_pool_bytes(64ull << 20);
    config_.set_admin_token("admin-secret");
    auto s = KvTierServer::Start(config_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    admin_ = Connect("admin-secret");
    engine_ = Connect("");
    ASSERT_TRUE(admin_ && engine_);
    auto reg = engine_->RegisterLayout(NamedLayout());
    ASSERT_TRUE(reg.ok()) << reg.status();
    layout_ = *reg;
    act_ = *PageGeometry::Uniform(kShape, DefaultCodec(Format::kFp16, Operand::kKey),
                                  DefaultCodec(Format::kFp16, Operand::kValue));
  }
  void TearDown() override {
    engine_.reset();
    admin_.reset();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Client> Connect(const std::string& token) {
    ClientOptions o;
    o.target = "unix:" + config_.socket_path();
    o.token = token;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  absl::StatusOr<WrittenPrompt> Write(uint64_t layout_id, const std::vector<int32_t>& prompt) {
    return WritePromptKv(*engine_, layout_id, kShape, layout_.activation_page_bytes(), prompt, [&](int b, uint8_t* page) {
      testing::FillActivationPage(act_, Format::kFp16, testing::BlockSeed(prompt, kShape.block_size, b), page);
    });
  }
  // Calibrates on one workload and returns the exported file.
  std::string Calibrate() {
    EXPECT_TRUE(admin_->StartCalibration(layout_.layout_id()).ok());
    auto w = Write(layout_.layout_id(), Prompt(1, 16 * 12));
    EXPECT_TRUE(w.ok()) << w.status();
    auto stop = admin_->StopCalibration();
    EXPECT_TRUE(stop.ok()) << stop.status();
    auto exp = admin_->ExportCalibration(0);
    EXPECT_TRUE(exp.ok()) << exp.status();
    if (!exp.ok()) return "";
    EXPECT_EQ(exp->layout_id(), layout_.layout_id());
    EXPECT_EQ(exp->token_count(), 16u * 12);
    return exp->scales_file();
  }

  std::filesystem::path dir_;
  v1::DaemonConfig config_;
  std::unique_ptr<KvTierServer> server_;
  std::unique_ptr<Client> admin_, engine_;
  v1::RegisterLayoutResponse layout_;
  PageGeometry act_;
};

TEST_F(StaticScalesTest, CalibrateExportLoadAndServeWithinTheBound) {
  const std::string file = Calibrate();
  ASSERT_TRUE(absl::StrContains(file, "version: 1")) << file.substr(0, 400);
  ASSERT_TRUE(absl::StrContains(file, "name: \"model.layers.3.self_attn\""));
  auto set = ParseStaticScalesFile(file, "export");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ((*set)->token_count, 16u * 12);
  EXPECT_EQ((*set)->calibrated_layout_id, layout_.layout_id());

  v1::StaticScalesPolicy policy;
  policy.add_exclude("model.layers.0.self_attn");
  policy.add_exclude("model.layers.9*");  // matches nothing: reported
  auto loaded = admin_->LoadStaticScales(layout_.layout_id(), file, policy);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_NE(loaded->layout_id(), layout_.layout_id());
  EXPECT_EQ(loaded->scale_set_id(), (*set)->id);
  ASSERT_EQ(loaded->static_layers_size(), 3);
  EXPECT_EQ(loaded->static_layers(0), "model.layers.1.self_attn");
  ASSERT_EQ(loaded->unmatched_patterns_size(), 1);
  EXPECT_EQ(loaded->unmatched_patterns(0), "exclude 'model.layers.9*'");
  // Static layers carry no per-block parameters: 3 layers int8 + 1 layer fp16, nothing else.
  EXPECT_EQ(loaded->offload_page_bytes(), 3u * 2 * 2 * 16 * 64 + 1u * 2 * 2 * 16 * 64 * 2);
  // Loading the same file again finds the same variant.
  auto again = admin_->LoadStaticScales(layout_.layout_id(), file, policy);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->layout_id(), loaded->layout_id());

  // A second workload through the static layout: page-out to host (static quantization), page-in, read.
  const std::vector<int32_t> prompt = Prompt(5000, 16 * 10);
  auto w = Write(loaded->layout_id(), prompt);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(engine_->Release(w->block_ids).ok());
  auto ev = admin_->Evict(v1::TIER_GPU, 0);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(ev->blocks_moved(), 10);
  auto read = ReadPrefixKv(*engine_, loaded->layout_id(), layout_.activation_page_bytes(), prompt);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->pages.size(), 10u);
  const std::vector<bool> static_layers{false, true, true, true};
  testing::StaticScaleCheck check;
  for (int b = 0; b < 10; ++b)
    testing::CheckStaticScalePage(act_, **set, static_layers, testing::BlockSeed(prompt, kShape.block_size, b),
                                  reinterpret_cast<const uint8_t*>(read->pages[b].data()), &check);
  EXPECT_EQ(check.bad, 0);
  EXPECT_GT(check.clipped, 0);  // the second workload exceeds the calibrated range in places
  EXPECT_GT(check.worst_ratio, 0.5f);  // really quantized
  EXPECT_LE(check.worst_ratio, 1.001f);
  auto stats = admin_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->static_scale_clipped(), static_cast<uint64_t>(check.clipped));
  EXPECT_FALSE(stats->calibrating());
}

TEST_F(StaticScalesTest, BadScaleFilesAreRejectedAndNothingChanges) {
  const std::string file = Calibrate();
  ASSERT_FALSE(file.empty());
  const uint64_t layouts_before = admin_->Stats()->layouts();
  auto expect_bad = [&](const std::string& text, const std::string& why, v1::StaticScalesPolicy policy = {},
                        uint64_t layout = 0) {
    auto r = admin_->LoadStaticScales(layout ? layout : layout_.layout_id(), text, policy);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << why << ": " << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), why)) << r.status();
  };
  expect_bad(absl::StrReplaceAll(file, {{"version: 1", "version: 7"}}), "unknown version 7");
  expect_bad("this is { not a scales file", "does not parse");
  expect_bad(absl::StrReplaceAll(file, {{"num_kv_heads: 2", "num_kv_heads: 4"}}), "heads, num_kv_heads is 4");
  expect_bad(absl::StrReplaceAll(file, {{"symmetric: true", "symmetric: false"}}), "asymmetric");
  // The first scale of the file, made NaN, negative, zero.
  const size_t at = file.find("scale: ");
  ASSERT_NE(at, std::string::npos);
  const size_t end = file.find('\n', at);
  for (const char* v : {"nan", "-0.01", "0", "inf"}) {
    std::string bad = file;
    bad.replace(at, end - at, std::string("scale: ") + v);
    expect_bad(bad, "is not a positive finite number");
  }
  v1::StaticScalesPolicy p;
  p.set_format("int4");
  expect_bad(file, "is not int8, fp8_e4m3 or fp8_e5m2", p);
  p.Clear();
  p.set_file("/etc/passwd");
  expect_bad(file, "not a path", p);
  // Wrong layout: another shape, and the same shape with other layer names.
  auto other = NamedLayout();
  other.set_num_layers(2);
  other.clear_layer_names();
  auto reg = engine_->RegisterLayout(other);
  ASSERT_TRUE(reg.ok());
  expect_bad(file, "calibrated for another layout", {}, reg->layout_id());
  auto renamed = NamedLayout();
  renamed.set_layer_names(2, "decoder.2.attn");
  auto reg2 = engine_->RegisterLayout(renamed);
  ASSERT_TRUE(reg2.ok());
  expect_bad(file, "is 'model.layers.2.self_attn' in the scales file and 'decoder.2.attn'", {}, reg2->layout_id());
  EXPECT_EQ(admin_->Stats()->layouts(), layouts_before + 2);  // only the two registered above
  // Unknown layout; non-admin sessions.
  EXPECT_EQ(admin_->LoadStaticScales(12345, file, {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->LoadStaticScales(layout_.layout_id(), file, {}).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->StartCalibration(0).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->ExportCalibration(0).status().code(), absl::StatusCode::kPermissionDenied);
  // A policy in RegisterLayout may not name a scales file.
  auto with_file = NamedLayout();
  with_file.mutable_policy()->mutable_static_scales()->set_file("/etc/passwd");
  EXPECT_EQ(engine_->RegisterLayout(with_file).status().code(), absl::StatusCode::kInvalidArgument);
  // And the good file still loads afterwards.
  EXPECT_TRUE(admin_->LoadStaticScales(layout_.layout_id(), file, {}).ok());
}

TEST_F(StaticScalesTest, CalibrationStateErrors) {
  EXPECT_EQ(admin_->StopCalibration().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(admin_->ExportCalibration(0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(admin_->StartCalibration(777).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(admin_->StartCalibration(0).ok());
  EXPECT_TRUE(admin_->Stats()->calibrating());
  // A layout calibrated while another was registered: only the one written to has statistics.
  auto w = Write(layout_.layout_id(), Prompt(1, 16 * 2));
  ASSERT_TRUE(w.ok());
  auto stop = admin_->StopCalibration();
  ASSERT_TRUE(stop.ok());
  ASSERT_EQ(stop->layouts_size(), 1);
  EXPECT_EQ(stop->layouts(0).token_count(), 32u);
  // Writes after stop are not collected.
  ASSERT_TRUE(Write(layout_.layout_id(), Prompt(100, 16 * 2)).ok());
  auto exp = admin_->ExportCalibration(layout_.layout_id());
  ASSERT_TRUE(exp.ok());
  EXPECT_EQ(exp->token_count(), 32u);
  EXPECT_EQ(admin_->ExportCalibration(999).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier
