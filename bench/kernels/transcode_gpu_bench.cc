// GPU page-out / page-in throughput: QuantizeGather and DequantizeScatter over batches of
// Llama-3-8B-shaped pages (32 layers, 8 KV heads, head_dim 128, block 16) at random pool slots, against a
// device-to-device cudaMemcpy moving the same number of bytes (read + write) in the same run.
//
// Throughput counts bytes read plus bytes written (data and parameter records). Timing: CUDA events
// around each launch, warm-up first, median of --reps runs; each rep uses the next of several slot sets
// and staging buffers so that the 50 MB L2 holds none of the inputs (one batch of 256 fp16 pages is
// 512 MiB); the copy moves bytes / 2 from one buffer to another, also far larger than L2. Prints one JSON object on
// stdout and a table on stderr.
//
//   transcode_gpu_bench [--pages N] [--reps N] [--only CASE]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/transcode_cuda.h"
#include "kernels/device.h"
#include "kernels/precision_policy.h"

namespace kvtier {
namespace {

#define BENCH_CHECK(expr)                                                                        \
  do {                                                                                           \
    cudaError_t _e = (expr);                                                                     \
    if (_e != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

#define BENCH_OK(expr)                                                                          \
  do {                                                                                          \
    KernelStatus _s = (expr);                                                                   \
    if (!_s.ok()) {                                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, _s.ToString().c_str()); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t n) { BENCH_CHECK(cudaMalloc(&p, std::max<size_t>(n, 16))); }
  ~DevMem() { cudaFree(p); }
  uint8_t* get() const { return static_cast<uint8_t*>(p); }
};

constexpr LayoutShape kLlama3_8B{32, 8, 128, 16};
constexpr int kRotations = 3;

template <class Fn>
double MedianMs(int reps, Fn&& launch) {
  cudaEvent_t a, b;
  BENCH_CHECK(cudaEventCreate(&a));
  BENCH_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) launch(i);
  BENCH_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK(cudaEventRecord(a));
    launch(i);
    BENCH_CHECK(cudaEventRecord(b));
    BENCH_CHECK(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  BENCH_CHECK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// K int8 per-channel, V fp4_e2m1 (16 channels per E4M3 scale) offloaded.
PrecisionPolicy K8VFp4() {
  PrecisionPolicy p = PrecisionPolicy::K8V4();
  p.offload_value = DefaultCodec(Format::kFp4E2m1, Operand::kValue);
  return p;
}

struct Result {
  std::string name, direction;
  uint64_t bytes;  // read + written
  double ms, gbps, copy_gbps;
};

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  using namespace kvtier;
  uint32_t pages = 256;
  int reps = 50;
  std::string only;  // run just this case (e.g. for a profiler)
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--pages")) pages = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
  }
  const GpuInfo& gpu = ProbeGpu();
  if (!gpu.available) {
    std::fprintf(stderr, "no GPU: %s\n", gpu.why_not.c_str());
    return 2;
  }
  auto fp16 = PageGeometry::Uniform(kLlama3_8B, DefaultCodec(Format::kFp16, Operand::kKey),
                                    DefaultCodec(Format::kFp16, Operand::kValue));
  BENCH_OK(fp16.status());
  const uint64_t page = fp16->page_bytes();
  const uint32_t pool_slots = pages * kRotations + 7;
  DevMem pool(pool_slots * page);
  {  // random fp16 values in (-4, 4): never zeros, never NaN
    std::vector<uint16_t> host(page / 2);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-4.0f, 4.0f);
    for (auto& h : host) h = FloatToHalf(u(rng));
    for (uint32_t s = 0; s < pool_slots; ++s)
      BENCH_CHECK(cudaMemcpy(pool.get() + s * page, host.data(), page, cudaMemcpyHostToDevice));
  }
  std::vector<uint32_t> all(pool_slots);
  std::iota(all.begin(), all.end(), 0u);
  std::shuffle(all.begin(), all.end(), std::mt19937(2));
  DevMem slots(sizeof(uint32_t) * pages * kRotations);
  BENCH_CHECK(cudaMemcpy(slots.get(), all.data(), sizeof(uint32_t) * pages * kRotations, cudaMemcpyHostToDevice));
  auto slot_set = [&](int r) { return reinterpret_cast<const uint32_t*>(slots.get()) + (r % kRotations) * pages; };
  const DevicePageSet pool_set{pool.get(), page, nullptr, 0, nullptr};

  struct Case {
    const char* name;
    PrecisionPolicy policy;
  };
  const Case cases[] = {{"fp16_copy", PrecisionPolicy::Uniform(Format::kFp16, Format::kFp16)},
                        {"bf16", PrecisionPolicy::Uniform(Format::kFp16, Format::kBf16)},
                        {"fp8_e4m3", PrecisionPolicy::Uniform(Format::kFp16, Format::kFp8E4m3)},
                        {"int8", PrecisionPolicy::Uniform(Format::kFp16, Format::kInt8)},
                        {"int4", PrecisionPolicy::Uniform(Format::kFp16, Format::kInt4)},
                        {"k8v4", PrecisionPolicy::K8V4()},
                        {"fp4_e2m1", PrecisionPolicy::Uniform(Format::kFp16, Format::kFp4E2m1)},
                        {"k8v_fp4", K8VFp4()}};
  std::vector<Result> results;
  for (const Case& c : cases) {
    if (!only.empty() && only != c.name) continue;
    auto resolved = Resolve(c.policy, kLlama3_8B);
    BENCH_OK(resolved.status());
    const PageGeometry& packed = resolved->offload;
    auto out_plan = CudaTranscodePlan::Create(*fp16, packed);
    auto in_plan = CudaTranscodePlan::Create(packed, *fp16);
    BENCH_OK(out_plan.status());
    BENCH_OK(in_plan.status());
    const uint64_t stage_bytes = pages * packed.page_bytes(), stage_params = pages * packed.param_bytes();
    std::vector<DevMem*> stage, stage_p;
    for (int r = 0; r < kRotations; ++r) {
      stage.push_back(new DevMem(stage_bytes));
      stage_p.push_back(new DevMem(stage_params));
    }
    const uint64_t bytes = pages * page + stage_bytes + stage_params;  // both directions move the same
    // Copy baseline: one memcpy of bytes / 2 moves the same read + write traffic (far larger than L2).
    const uint64_t copy_n = bytes / 2 / 16 * 16;
    DevMem copy_src(copy_n), copy_dst(copy_n);
    BENCH_CHECK(cudaMemset(copy_src.get(), 0x3c, copy_n));
    const double copy_ms = MedianMs(reps, [&](int) {
      BENCH_CHECK(cudaMemcpyAsync(copy_dst.get(), copy_src.get(), copy_n, cudaMemcpyDeviceToDevice));
    });
    const double copy_gbps = 2.0 * copy_n / (copy_ms * 1e6);
    const double out_ms = MedianMs(reps, [&](int r) {
      BENCH_OK(QuantizeGather(*out_plan, pool_set, slot_set(r), pages, stage[r % kRotations]->get(),
                              stage_p[r % kRotations]->get(), nullptr));
    });
    const double in_ms = MedianMs(reps, [&](int r) {
      BENCH_OK(DequantizeScatter(*in_plan, stage[r % kRotations]->get(), stage_p[r % kRotations]->get(), pages,
                                 pool_set, slot_set(r + 1), nullptr));
    });
    results.push_back({c.name, "quantize_gather", bytes, out_ms, bytes / (out_ms * 1e6), copy_gbps});
    results.push_back({c.name, "dequantize_scatter", bytes, in_ms, bytes / (in_ms * 1e6), copy_gbps});
    for (int r = 0; r < kRotations; ++r) {
      delete stage[r];
      delete stage_p[r];
    }
  }
  std::fprintf(stderr, "%-10s %-20s %12s %10s %10s %10s %8s\n", "format", "direction", "bytes", "ms", "GB/s",
               "copy GB/s", "ratio");
  for (const auto& r : results)
    std::fprintf(stderr, "%-10s %-20s %12llu %10.4f %10.1f %10.1f %7.1f%%\n", r.name.c_str(), r.direction.c_str(),
                 static_cast<unsigned long long>(r.bytes), r.ms, r.gbps, r.copy_gbps, 100.0 * r.gbps / r.copy_gbps);
  std::printf("{\n  \"device\": \"%s\",\n  \"sm_count\": %d,\n  \"shape\": \"32L x 8H x 128D x 16T\",\n",
              gpu.name.c_str(), gpu.sm_count);
  std::printf(
      "  \"pages\": %u,\n  \"reps\": %d,\n  \"timing\": \"cuda events, 5 warm-up, median\",\n  \"results\": [\n", pages,
      reps);
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::printf(
        "    {\"format\": \"%s\", \"direction\": \"%s\", \"bytes_read_plus_written\": %llu, \"median_ms\": %.5f, "
        "\"gbps\": %.1f, \"copy_same_bytes_gbps\": %.1f, \"fraction_of_copy\": %.3f}%s\n",
        r.name.c_str(), r.direction.c_str(), static_cast<unsigned long long>(r.bytes), r.ms, r.gbps, r.copy_gbps,
        r.gbps / r.copy_gbps, i + 1 < results.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  return 0;
}
