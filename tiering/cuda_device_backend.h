// The CUDA device backend: the GPU tier in device memory, converted by kernels/cuda's transcode kernels.
//
// Data paths (one call = one batch, converted in chunks; chunk k+1's kernel overlaps chunk k's copy):
//   WriteActivations: activation pages -> H2D (as for PageIn) -> transcode into the slots
//   ReadActivations:  slots -> transcode into device staging -> D2H (as for PageOut) -> activation pages
//   PageOut:          slots -> quantize-and-gather into device staging laid out as host records (data
//                     then parameters) -> D2H straight into the records when they are pinned (one copy
//                     per run of records at a constant stride: adjacent, or one pinned size class with
//                     its 4 KiB rounding, as a 2D copy), else one D2H into pinned staging + host copies
//   PageIn:           records -> H2D (direct from pinned records, else via pinned staging) ->
//                     dequantize-and-scatter into the slots
// Every call waits for its stream before returning (DeviceBackend's contract). Arenas live in GpuPools
// (tiering/gpu_pool.h): VMM-reserved and committed on first write of a slot; reading a slot that was
// never written is refused rather than faulting the GPU.
//
// Thread-safety: all methods may be called concurrently. There are two lanes, host->device (writes,
// page-ins) and device->host (reads, page-outs), each with a compute and a copy stream, two staging
// buffers and a
// mutex held for a whole call: calls in one direction run one at a time, the two directions overlap.
// Arenas must not outlive the backend. Geometries with head_dim 96 are refused at CreateArena (the CUDA
// transcode supports 64, 128 and 256).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tiering/device_backend.h"
#include "tiering/host_tier.h"

namespace kvtier {

struct CudaDeviceBackendOptions {
  // Device (and pinned host) staging per direction; larger batches are converted in chunks of this size.
  // Split over two buffers, so that one chunk's kernel overlaps the other's copy.
  uint64_t staging_bytes = 256ull << 20;
  // Pages per chunk at most: small enough that the first kernel and the last copy, which nothing
  // overlaps, are a small part of a batch.
  uint32_t chunk_pages = 16;
};

// Fails when the build has no CUDA or `device` cannot be used.
absl::StatusOr<std::unique_ptr<DeviceBackend>> MakeCudaDeviceBackend(int device, CudaDeviceBackendOptions options = {});

// The daemon's choice of compute device and host-tier memory: the CUDA backend on ProbeGpu()'s device
// with pinned host records when that works, else the host device (`host_threads` CPU workers) with
// aligned host memory. `why` says which and why, as key=value tokens for the log.
struct DeviceChoice {
  std::unique_ptr<DeviceBackend> device;
  std::unique_ptr<HostAllocator> host_allocator;
  std::string why;
};
DeviceChoice ChooseDevice(int host_threads);

}  // namespace kvtier
