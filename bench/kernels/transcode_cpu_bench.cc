// Host batch transcode throughput (TranscodePagesCpu) on Llama-3-8B-shaped pages (32 layers, 8 KV heads,
// head_dim 128, block 16; 2 MiB in fp16), against memcpy of the same number of bytes.
//
// Throughput ("bytes_per_second") counts bytes read plus bytes written, data and parameter records; the
// memcpy baseline copies N bytes and counts 2N. A batch is 16 pages (32 MiB of fp16, far beyond the
// caches). Arguments: threads; the name says direction, format and code path.
//   transcode_cpu_bench --benchmark_format=json --benchmark_out=...
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/precision_policy.h"
#include "kernels/transcode.h"

namespace kvtier {
namespace {

constexpr LayoutShape kLlama3_8B{32, 8, 128, 16};
constexpr int kPages = 16;

struct Batch {
  PageGeometry geometry;
  std::vector<std::vector<uint8_t>> data, params;
  explicit Batch(PageGeometry g) : geometry(std::move(g)) {
    for (int i = 0; i < kPages; ++i) {
      data.emplace_back(geometry.page_bytes(), 0);
      params.emplace_back(geometry.param_bytes() + 16, 0);
    }
  }
  std::vector<PageView> Views() const {
    std::vector<PageView> v;
    for (int i = 0; i < kPages; ++i) v.push_back({data[i].data(), params[i].data()});
    return v;
  }
  std::vector<MutablePageView> MutableViews() {
    std::vector<MutablePageView> v;
    for (int i = 0; i < kPages; ++i) v.push_back({data[i].data(), params[i].data()});
    return v;
  }
  uint64_t Bytes() const { return uint64_t{kPages} * (geometry.page_bytes() + geometry.param_bytes()); }
};

PageGeometry Resolved(const PrecisionPolicy& p) {
  auto r = Resolve(p, kLlama3_8B);
  if (!r.ok()) std::abort();
  return r->offload;
}

Batch RandomFp16Batch() {
  Batch b(Resolved(PrecisionPolicy::Uniform(Format::kFp16, Format::kFp16)));
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (auto& page : b.data)
    for (size_t i = 0; i + 1 < page.size(); i += 2) {
      const uint16_t h = FloatToHalf(n(rng));
      std::memcpy(&page[i], &h, 2);
    }
  return b;
}

// direction 0: fp16 -> packed (page-out); 1: packed -> fp16 (page-in).
void BM_Transcode(benchmark::State& state, PrecisionPolicy policy, int direction, CpuPath path) {
  const int threads = static_cast<int>(state.range(0));
  Batch fp16 = RandomFp16Batch();
  Batch packed(Resolved(policy));
  if (!TranscodePagesCpu(fp16.geometry, fp16.Views(), packed.geometry, packed.MutableViews(), threads, path).ok())
    state.SkipWithError("transcode failed");
  Batch& src = direction == 0 ? fp16 : packed;
  Batch& dst = direction == 0 ? packed : fp16;
  const auto in = src.Views();
  const auto out = dst.MutableViews();
  for (auto _ : state) {
    if (!TranscodePagesCpu(src.geometry, in, dst.geometry, out, threads, path).ok()) state.SkipWithError("failed");
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * (src.Bytes() + dst.Bytes())));
  state.SetLabel(CpuPathName(path));
}

void BM_Memcpy(benchmark::State& state) {
  const size_t n = size_t{kPages} * (2u << 20);  // the fp16 batch
  std::vector<uint8_t> a(n, 1), b(n, 2);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * n));
}

void Register() {
  struct Case {
    const char* name;
    PrecisionPolicy policy;
  };
  const Case cases[] = {{"int8", PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8)},
                        {"int4", PrecisionPolicy::Uniform(Format::kFp16, Format::kInt4)},
                        {"fp8_e4m3", PrecisionPolicy::Uniform(Format::kFp16, Format::kFp8E4m3)},
                        {"k8v4", PrecisionPolicy::K8V4()},
                        {"fp4_e2m1", PrecisionPolicy::Uniform(Format::kFp16, Format::kFp4E2m1)}};
  for (const Case& c : cases)
    for (int dir : {0, 1})
      for (CpuPath path : {CpuPath::kBest, CpuPath::kPortable}) {
        const std::string name = std::string(dir == 0 ? "fp16_to_" : "to_fp16_from_") + c.name +
                                 (path == CpuPath::kBest ? "/best" : "/portable");
        auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_Transcode, c.policy, dir, path);
        b->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
      }
  benchmark::RegisterBenchmark("memcpy_fp16_batch", BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  kvtier::Register();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
