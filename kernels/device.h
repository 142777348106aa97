// Which compute device kernels/ runs on in this process: a CUDA GPU when one is present and the build
// has CUDA, otherwise the host (CPU kernels over host memory). Callers branch on this once, at start.
#pragma once

#include <string>

namespace kvtier {

struct GpuInfo {
  bool available = false;
  int device = -1;
  std::string name;
  int sm_count = 0;
  int compute_capability = 0;  // e.g. 90
  std::string why_not;         // when !available: a human-readable reason
};

// Probes CUDA once (thread-safe) and caches the answer. Never fails: a build without CUDA, a missing
// driver or no visible device all yield available=false with a reason.
const GpuInfo& ProbeGpu();

}  // namespace kvtier
