// GPU <-> host page-out/page-in through the CUDA device backend with Llama-3-8B-shaped pages (32 layers,
// 8 KV heads, head_dim 128, block 16: 2 MiB fp16 pages), records in pinned host memory, against plain
// pinned cudaMemcpyAsync of the same bytes measured in the same run:
//   (a) fp16 -> fp16 page-out / page-in vs the raw D2H / H2D copy rate (target >= 90 %)
//   (b) fp16 -> int8 page-out / page-in counted in fp16-equivalent bytes vs the raw rate (target >= 1.8x)
// Usage: cuda_tiering_bench [out.json [chunk_pages]]. Prints a markdown table; writes JSON when given a path.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/device.h"
#include "kernels/testing/kv_oracle.h"
#include "tiering/cuda_device_backend.h"
#include "tiering/cuda_resources.h"
#include "tiering/pinned_allocator.h"

namespace kvtier {
namespace {

constexpr LayoutShape kLlama3_8B{32, 8, 128, 16};
constexpr int kRepeats = 7;
constexpr int kMaxBatch = 256;

// Median seconds of `repeats` runs of `fn` (after one warm-up run); aborts the bench on error.
double MedianSeconds(const std::function<absl::Status()>& fn) {
  std::vector<double> t;
  for (int r = 0; r <= kRepeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status st = fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!st.ok()) {
      std::fprintf(stderr, "bench step failed: %s\n", st.ToString().c_str());
      std::exit(1);
    }
    if (r > 0) t.push_back(s);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Row {
  std::string what;
  int batch = 0;
  double seconds = 0, fp16_gbps = 0, wire_gbps = 0, baseline_gbps = 0, ratio = 0;
};

int Run(const char* json_path, uint32_t chunk_pages) {
  const GpuInfo& gpu = ProbeGpu();
  if (!gpu.available) {
    std::fprintf(stderr, "no GPU: %s\n", gpu.why_not.c_str());
    return 2;
  }
  CudaDeviceBackendOptions options;
  if (chunk_pages > 0) options.chunk_pages = chunk_pages;
  auto backend = MakeCudaDeviceBackend(gpu.device, options);
  auto pinned = MakePinnedHostAllocator(256ull << 20);
  if (!backend.ok() || !pinned.ok()) {
    std::fprintf(stderr, "setup: %s %s\n", backend.status().ToString().c_str(), pinned.status().ToString().c_str());
    return 1;
  }
  DeviceBackend& dev = **backend;
  LayoutRegistry registry;
  std::vector<Row> rows;
  std::string json = absl::StrFormat(
      "{\"device\": \"%s\", \"backend\": \"%s\", \"page_shape\": "
      "\"32 layers x 8 kv heads x head_dim 128 x block 16 (fp16 page 2 MiB)\", "
      "\"chunk_pages\": %d, \"repeats\": %d, \"statistic\": \"median\", \"results\": [",
      gpu.name, dev.name(), options.chunk_pages, kRepeats);
  // Raw pinned copies of the same sizes, same process, same stream kind.
  const uint64_t fp16_page = 2ull << 20;
  auto raw_dev = AllocateDevice(fp16_page * kMaxBatch);
  auto raw_host = AllocatePinned(fp16_page * kMaxBatch);
  auto stream = CreateStream();
  if (!raw_dev.ok() || !raw_host.ok() || !stream.ok()) return 1;
  auto raw_copy = [&](uint64_t bytes, cudaMemcpyKind kind) {
    return MedianSeconds([&] {
      void* dst = kind == cudaMemcpyDeviceToHost ? static_cast<void*>(raw_host->get()) : raw_dev->get();
      const void* src = kind == cudaMemcpyDeviceToHost ? static_cast<void*>(raw_dev->get()) : raw_host->get();
      KVTIER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(dst, src, bytes, kind, stream->get()));
      return CudaCall(cudaStreamSynchronize(stream->get()), "sync");
    });
  };

  bool first_row = true;
  for (Format offload : {Format::kFp16, Format::kInt8}) {
    LayoutSpec spec;
    spec.shape = kLlama3_8B;
    spec.policy = PrecisionPolicy::Uniform(Format::kFp16, offload);
    spec.policy_fingerprint = offload == Format::kFp16 ? "fp16/fp16" : "fp16/int8";
    auto layout_or = registry.Register(spec);
    if (!layout_or.ok()) return 1;
    const Layout& layout = **layout_or;
    if (layout.activation_geometry.page_bytes() != fp16_page) return 1;
    auto arena = dev.CreateArena(layout, kMaxBatch * 2);
    if (!arena.ok()) {
      std::fprintf(stderr, "arena: %s\n", arena.status().ToString().c_str());
      return 1;
    }
    // Eight distinct oracle pages, written to every slot the bench uses.
    std::vector<std::vector<uint8_t>> pages(8, std::vector<uint8_t>(fp16_page));
    for (int i = 0; i < 8; ++i)
      testing::FillActivationPage(layout.activation_geometry, Format::kFp16, 77 + i, pages[i].data());
    std::vector<int32_t> slots(kMaxBatch), in_slots(kMaxBatch);
    std::vector<const uint8_t*> src(kMaxBatch);
    for (int i = 0; i < kMaxBatch; ++i) {
      slots[i] = 2 * i;  // page-out from the even slots, page-in into the odd ones
      in_slots[i] = 2 * i + 1;
      src[i] = pages[i % 8].data();
    }
    if (!dev.WriteActivations(layout, **arena, slots, src).ok()) return 1;
    const uint64_t record = layout.offload_record_bytes();
    std::vector<uint8_t*> records(kMaxBatch);
    for (auto& r : records)
      if (!(r = (*pinned)->Allocate(record))) return 1;

    for (int batch : {64, 128, 256}) {
      const std::span<const int32_t> out_s(slots.data(), batch), in_s(in_slots.data(), batch);
      const std::span<uint8_t* const> rec(records.data(), batch);
      const std::vector<const uint8_t*> crec(records.begin(), records.begin() + batch);
      const double raw_d2h = raw_copy(fp16_page * batch, cudaMemcpyDeviceToHost);
      const double raw_h2d = raw_copy(fp16_page * batch, cudaMemcpyHostToDevice);
      const double out = MedianSeconds([&] { return dev.PageOut(layout, layout.offload, **arena, out_s, rec); });
      const double in = MedianSeconds([&] { return dev.PageIn(layout, layout.offload, **arena, in_s, crec); });
      for (auto [what, secs, raw] : {std::tuple("page-out", out, raw_d2h), std::tuple("page-in", in, raw_h2d)}) {
        Row row;
        row.what = absl::StrCat(what, " fp16->", offload == Format::kFp16 ? "fp16" : "int8");
        row.batch = batch;
        row.seconds = secs;
        row.fp16_gbps = fp16_page * batch / secs / 1e9;
        row.wire_gbps = record * batch / secs / 1e9;
        row.baseline_gbps = fp16_page * batch / raw / 1e9;
        row.ratio = row.fp16_gbps / row.baseline_gbps;
        rows.push_back(row);
        json += absl::StrFormat(
            "%s\n  {\"op\": \"%s\", \"batch_pages\": %d, \"record_bytes\": %d, \"seconds\": %.6f, "
            "\"fp16_equiv_GBps\": %.2f, \"wire_GBps\": %.2f, \"raw_pinned_copy_GBps\": %.2f, \"ratio\": %.3f}",
            first_row ? "" : ",", row.what, batch, record, secs, row.fp16_gbps, row.wire_gbps, row.baseline_gbps,
            row.ratio);
        first_row = false;
      }
    }
    for (auto* r : records) (*pinned)->Free(r, record);
  }
  json += "\n]}\n";
  std::printf(
      "device: %s (%s), chunk_pages %u\n\n| op | batch | median ms | fp16-equiv GB/s | wire GB/s | raw pinned copy GB/s | ratio |\n"
      "|---|---|---|---|---|---|---|\n",
      gpu.name.c_str(), dev.name().c_str(), options.chunk_pages);
  for (const Row& r : rows)
    std::printf("| %s | %d | %.2f | %.1f | %.1f | %.1f | %.2f |\n", r.what.c_str(), r.batch, r.seconds * 1e3,
                r.fp16_gbps, r.wire_gbps, r.baseline_gbps, r.ratio);
  if (json_path) std::ofstream(json_path) << json;
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  const uint32_t chunk_pages = argc > 2 ? static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)) : 0;
  return kvtier::Run(argc > 1 ? argv[1] : nullptr, chunk_pages);
}
