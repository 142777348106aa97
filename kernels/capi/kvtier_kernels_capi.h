/* C ABI of the kvtier attention kernels, for Python (ctypes + torch data_ptr()) and other FFI users.
 *
 * Conventions:
 *  - Every function returns 0 on success or a KernelCode (3 invalid argument, 9 failed precondition,
 *    11 out of range, 13 internal, 14 unavailable); kvtier_last_error() then gives the message (per
 *    thread, valid until the next call on that thread).
 *  - Pointers are passed as uintptr_t. "_dev" pointers are device memory, "_host" host memory. Streams are
 *    cudaStream_t values as uintptr_t (0 = legacy default stream; torch: torch.cuda.current_stream().cuda_stream).
 *  - Formats are names: "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "fp4_e2m1" (default groupings: K per
 *    channel, V per token, int4 V in groups of 32, fp8 per segment). dtype of q/out: 0 fp16, 1 bf16, 2 fp32.
 *  - q / out are [rows][num_q_heads][head_dim] contiguous. block_table is [num_seqs][stride] int32 slot ids.
 * The CPU entry points work in builds without CUDA (CI); the CUDA ones then return 14 (unavailable).
 */
#ifndef KVTIER_KERNELS_CAPI_H_
#define KVTIER_KERNELS_CAPI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvtier_layout kvtier_layout;

const char* kvtier_last_error(void);

/* A layout whose every layer and head uses k_format for K and v_format for V. */
int kvtier_layout_create(int32_t num_layers, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                         const char* k_format, const char* v_format, kvtier_layout** out);
/* A layout with one format per (layer, K|V, head): formats[(layer * 2 + op) * num_kv_heads + head]. */
int kvtier_layout_create_mixed(int32_t num_layers, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                               const char* const* formats, kvtier_layout** out);
void kvtier_layout_destroy(kvtier_layout* layout);
uint64_t kvtier_layout_page_bytes(const kvtier_layout* layout);
uint32_t kvtier_layout_param_bytes(const kvtier_layout* layout);
/* Where segment (layer, op 0=K 1=V, head) lives inside a page and inside its parameter record. */
int kvtier_layout_segment(const kvtier_layout* layout, int32_t layer, int32_t op, int32_t head, uint64_t* data_offset,
                          uint32_t* data_bytes, uint32_t* param_offset, uint32_t* param_bytes);
/* Quantizes one segment from host fp32 values [block_size][head_dim] into a host page (data + params). */
int kvtier_quantize_segment_host(const kvtier_layout* layout, int32_t layer, int32_t op, int32_t head,
                                 uintptr_t values_host, uintptr_t page_data_host, uintptr_t page_params_host);

/* Decode (one query per sequence). seq_lens/block_table are always needed on the host (validation). */
int kvtier_decode_cpu(const kvtier_layout* layout, int32_t layer, uintptr_t pool_data_host, uintptr_t pool_params_host,
                      int64_t num_slots, int32_t num_seqs, uintptr_t seq_lens_host, uintptr_t block_table_host,
                      int32_t block_table_stride, int32_t num_q_heads, int32_t dtype, uintptr_t q_host,
                      uintptr_t out_host, float sm_scale, int32_t threads);
/* Bytes of device workspace kvtier_decode_cuda needs for this batch (0 when no split is used). */
int kvtier_decode_cuda_workspace(const kvtier_layout* layout, int32_t layer, int64_t num_slots, int32_t num_seqs,
                                 uintptr_t seq_lens_host, uintptr_t block_table_host, int32_t block_table_stride,
                                 int32_t num_q_heads, uint64_t* bytes, int32_t* num_splits);
int kvtier_decode_cuda(const kvtier_layout* layout, int32_t layer, uintptr_t pool_data_dev, uintptr_t pool_params_dev,
                       int64_t num_slots, int32_t num_seqs, uintptr_t seq_lens_host, uintptr_t block_table_host,
                       int32_t block_table_stride, uintptr_t seq_lens_dev, uintptr_t block_table_dev,
                       int32_t num_q_heads, int32_t dtype, uintptr_t q_dev, uintptr_t out_dev, float sm_scale,
                       uintptr_t workspace_dev, uint64_t workspace_bytes, uintptr_t stream);

/* Prefix-extend: q rows of sequence i are q_indptr[i]..q_indptr[i+1]-1 (causal over prefix + new). */
int kvtier_extend_cpu(const kvtier_layout* layout, int32_t layer, uintptr_t pool_data_host, uintptr_t pool_params_host,
                      int64_t num_slots, int32_t num_seqs, uintptr_t seq_lens_host, uintptr_t block_table_host,
                      int32_t block_table_stride, uintptr_t q_indptr_host, int32_t num_q_heads, int32_t dtype,
                      uintptr_t q_host, uintptr_t out_host, float sm_scale, int32_t threads);
int kvtier_extend_cuda(const kvtier_layout* layout, int32_t layer, uintptr_t pool_data_dev, uintptr_t pool_params_dev,
                       int64_t num_slots, int32_t num_seqs, uintptr_t seq_lens_host, uintptr_t block_table_host,
                       int32_t block_table_stride, uintptr_t q_indptr_host, uintptr_t seq_lens_dev,
                       uintptr_t block_table_dev, uintptr_t q_indptr_dev, int32_t num_q_heads, int32_t dtype,
                       uintptr_t q_dev, uintptr_t out_dev, float sm_scale, uintptr_t stream);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_KERNELS_CAPI_H_ */
