// The CUDA device backend's static-scale page-out/page-in (kernels/cuda/static_transcode_cuda.h) against
// the host device: the same record bytes, the same clip count, the same pages back. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/device.h"
#include "kernels/testing/kv_oracle.h"
#include "tiering/cuda_device_backend.h"
#include "tiering/device_backend.h"
#include "tiering/layout.h"
#include "tiering/pinned_allocator.h"

namespace kvtier {
namespace {

constexpr LayoutShape kShape{6, 4, 128, 16};

TEST(CudaStaticScales, PageOutAndPageInMatchTheHostDevice) {
  if (!ProbeGpu().available) GTEST_SKIP() << "no GPU: " << ProbeGpu().why_not;
  auto cuda = MakeCudaDeviceBackend(ProbeGpu().device);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto host = MakeHostDeviceBackend(2);
  for (Format f : {Format::kInt8, Format::kFp8E4m3}) {
    auto set = std::make_shared<StaticScaleSet>();
    set->num_layers = kShape.num_layers;
    set->num_kv_heads = kShape.num_kv_heads;
    set->head_dim = kShape.head_dim;
    set->scales.resize(static_cast<size_t>(kShape.num_layers) * 2 * kShape.num_kv_heads * kShape.head_dim);
    for (size_t i = 0; i < set->scales.size(); ++i) set->scales[i] = (2.0f + (i % 11) * 0.3f) / 127.0f;  // outliers clip
    set->id = StaticScaleSetId(*set);
    LayoutRegistry reg;
    LayoutSpec spec;
    spec.shape = kShape;
    spec.policy = PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8);
    spec.static_scales = StaticScalesPolicy{set, f, {"*"}, {"0", "-1"}};
    auto l = reg.Register(spec);
    ASSERT_TRUE(l.ok()) << l.status();
    const Layout& layout = **l;
    constexpr int kPages = 20;
    auto ca = (*cuda)->CreateArena(layout, 64);
    auto ha = host->CreateArena(layout, 64);
    ASSERT_TRUE(ca.ok() && ha.ok());
    std::vector<std::vector<uint8_t>> pages(kPages, std::vector<uint8_t>(layout.activation_geometry.page_bytes()));
    std::vector<const uint8_t*> src;
    std::vector<int32_t> slots, back;
    for (int i = 0; i < kPages; ++i) {
      testing::FillActivationPage(layout.activation_geometry, Format::kFp16, 900 + i, pages[i].data());
      src.push_back(pages[i].data());
      slots.push_back((i * 7) % 64);
      back.push_back((i * 7 + 3) % 64);
    }
    ASSERT_TRUE((*cuda)->WriteActivations(layout, **ca, slots, src).ok());
    ASSERT_TRUE(host->WriteActivations(layout, **ha, slots, src).ok());
    const uint64_t rb = layout.offload_record_bytes();
    std::vector<std::vector<uint8_t>> crec(kPages, std::vector<uint8_t>(rb, 0x11)), hrec(kPages, std::vector<uint8_t>(rb, 0x22));
    std::vector<uint8_t*> cp, hp;
    for (int i = 0; i < kPages; ++i) cp.push_back(crec[i].data()), hp.push_back(hrec[i].data());
    ASSERT_TRUE(host->PageOut(layout, layout.offload, **ha, slots, hp).ok());
    const uint64_t host_clips = layout.static_plan->clipped.load();
    ASSERT_GT(host_clips, 0u);
    auto st = (*cuda)->PageOut(layout, layout.offload, **ca, slots, cp);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(layout.static_plan->clipped.load(), 2 * host_clips) << GetFormatInfo(f).name;
    for (int i = 0; i < kPages; ++i) EXPECT_EQ(crec[i], hrec[i]) << GetFormatInfo(f).name << " page " << i;
    std::vector<const uint8_t*> ccp(cp.begin(), cp.end());
    st = (*cuda)->PageIn(layout, layout.offload, **ca, back, ccp);
    ASSERT_TRUE(st.ok()) << st;
    std::vector<const uint8_t*> chp(hp.begin(), hp.end());
    ASSERT_TRUE(host->PageIn(layout, layout.offload, **ha, back, chp).ok());
    std::vector<std::vector<uint8_t>> cout(kPages, std::vector<uint8_t>(pages[0].size())), hout = cout;
    std::vector<uint8_t*> co, ho;
    for (int i = 0; i < kPages; ++i) co.push_back(cout[i].data()), ho.push_back(hout[i].data());
    ASSERT_TRUE((*cuda)->ReadActivations(layout, **ca, back, co).ok());
    ASSERT_TRUE(host->ReadActivations(layout, **ha, back, ho).ok());
    for (int i = 0; i < kPages; ++i) EXPECT_EQ(cout[i], hout[i]) << GetFormatInfo(f).name << " page " << i;
  }
}

}  // namespace
}  // namespace kvtier
