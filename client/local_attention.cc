#include "client/local_attention.h"

#include <cstring>
#include <tuple>

#include "absl/strings/str_cat.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/attention/attention_cuda.h"
#include "kernels/cuda/cuda_check.h"
#endif

namespace kvtier {
namespace {

absl::Status FromKernel(const KernelStatus& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(s.message());
}

#if KVTIER_WITH_CUDA
absl::Status Cuda(cudaError_t err, const char* what) {
  const KernelStatus s = CudaStatus(err, what);
  return s.ok() ? absl::OkStatus() : absl::InternalError(s.message());
}
#endif

bool IsDecode(const std::vector<int32_t>& q_indptr) {
  for (size_t i = 0; i + 1 < q_indptr.size(); ++i)
    if (q_indptr[i + 1] - q_indptr[i] != 1) return false;
  return true;
}

}  // namespace

LocalAttention::~LocalAttention() {
#if KVTIER_WITH_CUDA
  if (scratch_ != nullptr) IgnoreCudaError(cudaFree(scratch_));
#endif
}

absl::Status LocalAttention::Run(const LocalAttendBatch& b, void* cuda_stream) {
  const int32_t num_seqs = static_cast<int32_t>(b.seq_lens.size());
  if (num_seqs < 1 || b.q_indptr.size() != b.seq_lens.size() + 1 ||
      b.block_table.size() != static_cast<size_t>(num_seqs) * static_cast<size_t>(b.block_table_stride))
    return absl::InvalidArgumentError("batch arrays disagree in size (seq_lens, q_indptr, block_table)");
  const PagedKvBatch batch{num_seqs, b.seq_lens.data(), b.block_table.data(), b.block_table_stride};
  const int32_t hd = pool_.geometry().shape().head_dim;
  const DecodeParams decode{&pool_.geometry(), pool_.kv_pool(), batch, b.layer, b.num_q_heads, hd, pool_.dtype(),
                            b.q, b.out, b.sm_scale};
  const ExtendParams extend{&pool_.geometry(), pool_.kv_pool(), batch, b.q_indptr.data(), b.layer, b.num_q_heads, hd,
                            pool_.dtype(), b.q, b.out, b.sm_scale};
  const bool is_decode = IsDecode(b.q_indptr);
  // Validation happens here, in host memory, for both paths (a bad slot never reaches a kernel).
  if (auto st = is_decode ? ValidateAttention(decode) : ValidateAttention(extend); !st.ok()) return FromKernel(st);
  if (!pool_.on_gpu()) return FromKernel(is_decode ? PagedDecodeCpu(decode, cpu_threads_)
                                                   : PagedExtendCpu(extend, cpu_threads_));
#if KVTIER_WITH_CUDA
  auto stream = static_cast<cudaStream_t>(cuda_stream);
  size_t workspace = 0;
  if (is_decode) {
    auto plan = PlanDecodeCuda(decode);
    if (!plan.ok()) return FromKernel(plan.status());
    workspace = plan->workspace_bytes;
  }
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t lens_bytes = align(b.seq_lens.size() * 4), table_bytes = align(b.block_table.size() * 4),
               indptr_bytes = align(b.q_indptr.size() * 4);
  const size_t need = lens_bytes + table_bytes + indptr_bytes + align(workspace);
  if (need > scratch_bytes_) {
    if (scratch_ != nullptr) {
      if (auto st = Cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); !st.ok()) return st;
      IgnoreCudaError(cudaFree(scratch_));
      scratch_ = nullptr;
      scratch_bytes_ = 0;
    }
    if (auto st = Cuda(cudaSetDevice(pool_.device()), "cudaSetDevice"); !st.ok()) return st;
    if (const cudaError_t e = cudaMalloc(&scratch_, need); e != cudaSuccess) {
      IgnoreCudaError(e);
      scratch_ = nullptr;
      return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", need, " bytes of attention scratch failed: ",
                                                       cudaGetErrorName(e)));
    }
    scratch_bytes_ = need;
  }
  auto* base = static_cast<uint8_t*>(scratch_);
  CudaLaunch launch;
  launch.stream = stream;
  launch.device.seq_lens = reinterpret_cast<const int32_t*>(base);
  launch.device.block_table = reinterpret_cast<const int32_t*>(base + lens_bytes);
  launch.device.q_indptr = reinterpret_cast<const int32_t*>(base + lens_bytes + table_bytes);
  launch.workspace = workspace ? base + lens_bytes + table_bytes + indptr_bytes : nullptr;
  launch.workspace_bytes = workspace;
  // The mirrors go up on the caller's stream, ahead of the launch (pageable copies: staged by the driver).
  for (auto [offset, src, bytes] : {std::tuple(size_t{0}, b.seq_lens.data(), b.seq_lens.size() * 4),
                                    std::tuple(lens_bytes, b.block_table.data(), b.block_table.size() * 4),
                                    std::tuple(lens_bytes + table_bytes, b.q_indptr.data(), b.q_indptr.size() * 4)}) {
    if (auto st = Cuda(cudaMemcpyAsync(base + offset, src, bytes, cudaMemcpyHostToDevice, stream),
                       "cudaMemcpyAsync(batch mirrors)");
        !st.ok())
      return st;
  }
  return FromKernel(is_decode ? PagedDecodeCuda(decode, launch) : PagedExtendCuda(extend, launch));
#else
  (void)cuda_stream;
  return absl::FailedPreconditionError("this client library was built without CUDA");
#endif
}

}  // namespace kvtier
