// The SM80 FlashAttention-2 forward kernel: one CTA per (query tile, batch * head). Q is loaded once; K and V tiles
// stream through shared memory with cp.async, V[n] arriving while S = Q K[n]^T runs and K[n-1] arriving while the
// softmax and O += P V[n] run. Key tiles go from last to first so that the (at most a few) tiles that need a mask
// come first and the long steady state runs mask-free.
#pragma once

#include <cute/tensor.hpp>

#include "epilogue.h"
#include "kernel_traits.h"
#include "mask.h"
#include "params.h"
#include "softmax.h"
#include "tile_scheduler.h"
#include "utils.h"

namespace flash {

using namespace cute;

template <typename Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kNThreads, 1) flash_fwd_sm80_kernel(const FwdParams params) {
  using Element = typename Traits::Element;
  using index_t = typename Traits::index_t;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x;

  const TileCoord tile = current_tile<kCausal>(params);
  if (!tile.valid) return;
  const int batch = tile.batch, head = tile.head, head_kv = tile.head_kv, m_block = tile.m_block;
  const int rows_left = params.seqlen_q - m_block * kBlockM;

  const index_t q_offset = batch * params.q_batch_stride + head * params.q_head_stride +
                           index_t(m_block) * kBlockM * params.q_row_stride;
  const index_t o_offset = batch * params.o_batch_stride + head * params.o_head_stride +
                           index_t(m_block) * kBlockM * params.o_row_stride;
  Element* o_tile_ptr = reinterpret_cast<Element*>(params.o_ptr) + o_offset;
  float* lse_tile_ptr = params.lse_ptr + tile.bh * params.seqlen_q + index_t(m_block) * kBlockM;

  const KeyTileRange range = key_tile_range<kCausal, kBlockM, kBlockN>(m_block, params.seqlen_q, params.seqlen_k);
  if (range.n_block_max <= 0) {
    store_empty_tile<Traits>(params, o_tile_ptr, lse_tile_ptr, rows_left);
    return;
  }

  // Global views: this tile of Q, and all key/value tiles of this (batch, kv head) as (kBlockN, kHeadDim, n).
  Tensor gQ = make_tensor(make_gmem_ptr(reinterpret_cast<const Element*>(params.q_ptr) + q_offset),
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(params.q_row_stride, _1{}));
  Tensor mK = make_tensor(make_gmem_ptr(reinterpret_cast<const Element*>(params.k_ptr) +
                                        batch * params.k_batch_stride + head_kv * params.k_head_stride),
                          make_shape(params.seqlen_k, Int<kHeadDim>{}), make_stride(params.k_row_stride, _1{}));
  Tensor mV = make_tensor(make_gmem_ptr(reinterpret_cast<const Element*>(params.v_ptr) +
                                        batch * params.v_batch_stride + head_kv * params.v_head_stride),
                          make_shape(params.seqlen_k, Int<kHeadDim>{}), make_stride(params.v_row_stride, _1{}));
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (BN, D, n)
  Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));

  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem + Traits::kSmemQSize)),
                          typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem + Traits::kSmemQSize + Traits::kSmemKVSize)),
                          typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});

  // Global -> shared partitions (16-byte cp.async) with coordinates for the row / head-dim predicates.
  typename Traits::GmemTiledCopyQKV gmem_copy;
  auto gmem_thr_copy = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = gmem_thr_copy.partition_S(gQ);
  Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
  Tensor tKgK = gmem_thr_copy.partition_S(gK);  // (CPY, CPY_N, CPY_K, n)
  Tensor tKsK = gmem_thr_copy.partition_D(sK);
  Tensor tVgV = gmem_thr_copy.partition_S(gV);
  Tensor tVsV = gmem_thr_copy.partition_D(sV);
  Tensor tQcQ = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // Q, K and V tiles share the column partition, so one head-dim predicate serves all three.
  Tensor col_ok = head_dim_predicate(tKcK, params.head_dim);

  // MMA partitions and the ldmatrix copies that feed them.
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
  Tensor tSrK = thr_mma.partition_fragment_B(sK);
  Tensor tOrVt = thr_mma.partition_fragment_B(
      make_tensor(sV.data(), Layout<Shape<Int<kHeadDim>, Int<kBlockN>>>{}));  // shape only; Vt is swizzled
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_o);

  auto smem_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_q = smem_copy_q.get_thread_slice(tid);
  Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
  auto smem_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_k = smem_copy_k.get_thread_slice(tid);
  Tensor tSsK = smem_thr_copy_k.partition_S(sK);
  auto smem_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  auto smem_thr_copy_v = smem_copy_v.get_thread_slice(tid);
  Tensor tOsVt = smem_thr_copy_v.partition_S(sVt);

  // Coordinates of this thread's S elements inside a (kBlockM, kBlockN) tile, for the mask.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));

  // Prologue: Q and the last K tile.
  const int n_last = range.n_block_max - 1;
  copy_tile_predicated(gmem_copy, tQgQ, tQsQ, tQcQ, col_ok, rows_left);
  copy_tile_predicated(gmem_copy, tKgK(_, _, _, n_last), tKsK, tKcK, col_ok, params.seqlen_k - n_last * kBlockN);
  cute::cp_async_fence();

  constexpr int kRows = decltype(size<0>(acc_rowcol_layout(acc_o.layout())))::value;
  OnlineSoftmax<kRows> softmax;

  // One step of the mainloop: S = Q K[n]^T, mask (only if kMask), online softmax, O += P V[n]. It is a lambda
  // forced inline, so the three loops below share one body but each is register-allocated on its own: the steady
  // state carries no mask code and no first-tile branch.
  auto step = [&](int n_block, auto is_first, auto needs_mask) __attribute__((always_inline)) {
    constexpr bool kFirst = decltype(is_first)::value;
    constexpr bool kMask = decltype(needs_mask)::value;
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cute::cp_async_wait<0>();
    __syncthreads();  // K[n] landed for every thread; every warp is done reading V[n+1]
    if constexpr (kFirst) {  // the last key tile, the only one that may be partial
      copy_tile_predicated(gmem_copy, tVgV(_, _, _, n_block), tVsV, tKcK, col_ok,
                           params.seqlen_k - n_block * kBlockN);
    } else {
      copy_tile_full_rows(gmem_copy, tVgV(_, _, _, n_block), tVsV, col_ok);
    }
    cute::cp_async_fence();

    gemm_smem_smem(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_copy_q, smem_copy_k, smem_thr_copy_q,
                   smem_thr_copy_k);
    if constexpr (kMask) {
      apply_mask<kCausal>(acc_s, tScS, m_block * kBlockM, n_block * kBlockN, params.seqlen_q, params.seqlen_k);
    }

    cute::cp_async_wait<0>();
    __syncthreads();  // V[n] landed; every warp is done reading K[n]
    if (n_block > 0) {
      copy_tile_full_rows(gmem_copy, tKgK(_, _, _, n_block - 1), tKsK, col_ok);
      cute::cp_async_fence();
    }

    softmax.template update<kFirst>(acc_s, acc_o, params.scale_log2);  // first tile: O is 0, no rescale

    // P (fp32 accumulator) -> fp16/bf16 A operand, straight from registers.
    Tensor rP = convert_fragment<Element>(acc_s);
    Tensor tOrP = make_tensor(rP.data(), acc_as_operand_a_layout(rP.layout()));
    gemm_reg_smem(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_copy_v, smem_thr_copy_v);
  };

  // Key tiles from last to first: the masked ones (the key-sequence end, the causal diagonal: at most
  // ceil(kBlockM / kBlockN) + 1 of them) come first, then the mask-free steady state.
  int n_block = n_last;
  if (n_block >= range.n_block_unmasked_end) {
    step(n_block, cute::true_type{}, cute::true_type{});
  } else {
    step(n_block, cute::true_type{}, cute::false_type{});
  }
  --n_block;
  CUTE_NO_UNROLL
  for (; n_block >= range.n_block_unmasked_end; --n_block) step(n_block, cute::false_type{}, cute::true_type{});
  CUTE_NO_UNROLL
  for (; n_block >= 0; --n_block) step(n_block, cute::false_type{}, cute::false_type{});

  // Epilogue: normalise, write O and LSE.
  float lse[kRows];
  softmax.finalize(acc_o, params.softmax_scale, lse);
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tOcO_rowcol = make_tensor(tOcO.data(), acc_rowcol_layout(tOcO.layout()));
  store_output<Traits>(params, acc_o, tOcO_rowcol, lse, smem, o_tile_ptr, lse_tile_ptr, rows_left);
}

}  // namespace flash
