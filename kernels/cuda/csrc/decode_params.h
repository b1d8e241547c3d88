// The plain-old-data description of one KV-cache (decode) call, shared by the torch binding and the decode kernels,
// and what a decode kernel library exports. No torch and no CuTe here.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace flash {

struct DecodeParams {
  // Element pointers (fp16 or bf16); strides in elements; every last dim has unit stride.
  const void* __restrict__ q_ptr;  // (batch, heads_q, seqlen_q, head_dim)
  const void* k_ptr;               // contiguous cache (batch, heads_kv, capacity, head_dim), or pages
  const void* v_ptr;               // (num_pages, heads_kv, page_size, head_dim); written by the append
  void* __restrict__ o_ptr;        // query's shape
  float* __restrict__ lse_ptr;     // (batch, heads_q, seqlen_q), contiguous
  // Split-KV partials, (num_splits, batch * heads_q * seqlen_q, head_dim) and (num_splits, batch * heads_q *
  // seqlen_q), rows in (batch, head, query row) order; unused when num_splits == 1.
  float* __restrict__ partial_o_ptr;
  float* __restrict__ partial_lse_ptr;
  const int* __restrict__ seqlens_ptr;      // (batch,): keys in the cache before the append; null: `capacity`
  const int* __restrict__ block_table_ptr;  // (batch, capacity / page_size) page indices; null: contiguous cache
  const void* __restrict__ k_new_ptr;       // (batch, heads_kv, seqlen_new, head_dim): the append's source
  const void* __restrict__ v_new_ptr;

  index_t q_batch_stride, q_head_stride, q_row_stride;
  index_t k_batch_stride, k_head_stride, k_row_stride;  // batch stride: per sequence, or per page when paged
  index_t v_batch_stride, v_head_stride, v_row_stride;
  index_t o_batch_stride, o_head_stride, o_row_stride;
  index_t k_new_batch_stride, k_new_head_stride, k_new_row_stride;
  index_t v_new_batch_stride, v_new_head_stride, v_new_row_stride;
  index_t block_table_batch_stride;

  int batch;
  int heads_q;
  int heads_kv;
  int group;       // heads_q / heads_kv: the query heads packed into one tile's rows with the query rows
  int seqlen_q;
  int head_dim;    // the real head_dim (multiple of 8); the kernel's may be wider (zero-filled columns)
  int capacity;    // keys a sequence's cache holds: its rows, or block-table width x page_size
  int page_size;   // 0: contiguous cache
  int num_pages;   // paged: page indices are clamped into [0, num_pages), so no access leaves the cache
  int seqlen_new;  // tokens appended at cache_seqlens[b] (by run_decode_append, before the decode: 0 if none)
  int num_splits;  // key ranges per row block, merged by the combine kernel when > 1
  int cta_rows;    // packed query rows per CTA (16, or 32 up to head dim 128) and warps per CTA (4 or 8; 4 at head
  int cta_warps;   // dim 256): the CTA shape flash_attention.cuda's decode plan picked (decode_kernel.h, CtaChoice)
  float scale_log2;  // softmax_scale * log2(e), positive (the caller folds other scales into the query)
  bool causal;       // row i of sequence b sees keys j <= L_b - seqlen_q + i, L_b = cache_seqlens[b] + seqlen_new
};

using DecodeLaunchFn = cudaError_t (*)(const DecodeParams&, cudaStream_t);

// Launches the split-KV decode kernel and the combine (if num_splits > 1) on `stream`.
template <DType kDType, int kHeadDim>
cudaError_t run_decode(const DecodeParams& params, cudaStream_t stream);

// What a decode kernel library (decode.cu, built per head dim and dtype) exports as flash_attention_decode_entry.
struct DecodeKernelEntry {
  int params_bytes;
  DType dtype;
  int head_dim;
  DecodeLaunchFn launch;
  DecodeLaunchFn append;  // run_decode_append (decode_kernel.h): the new tokens into the cache
};

}  // namespace flash
