// Epilogue of one query tile: O (float32 registers) -> fp16/bf16, staged through shared memory so that global
// writes are whole 16-byte vectors, predicated on seqlen_q (rows) and head_dim (columns); LSE written as float32.
#pragma once

#include <cute/tensor.hpp>

#include "params.h"
#include "utils.h"

namespace flash {

using namespace cute;

template <typename Traits, typename TensorO, typename TensorC, int kRows>
__forceinline__ __device__ void store_output(const FwdParams& params, TensorO const& acc_o,
                                             TensorC const& coord_o_rowcol, const float (&lse)[kRows], char* smem,
                                             typename Traits::Element* o_tile_ptr, float* lse_tile_ptr,
                                             int rows_left) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int tid = threadIdx.x;

  // Registers -> shared (O reuses Q's buffer: Q's last reader was this thread's own warp, and the __syncthreads
  // in the mainloop's last iteration already separated every warp's Q reads from here).
  Tensor rO = convert_fragment<Element>(acc_o);
  Tensor sO = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename Traits::SmemLayoutO{});
  typename Traits::TiledMma tiled_mma;
  auto smem_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_copy_o = smem_copy_o.get_thread_slice(tid);
  Tensor taccOrO = smem_thr_copy_o.retile_S(rO);
  Tensor taccOsO = smem_thr_copy_o.partition_D(sO);
  cute::copy(smem_copy_o, taccOrO, taccOsO);

  // LSE: one lane per quad (the one holding column 0) writes each of its rows.
  if (get<1>(coord_o_rowcol(0, 0)) == 0) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = get<0>(coord_o_rowcol(r, 0));
      if (row < rows_left) lse_tile_ptr[row] = lse[r];
    }
  }

  __syncthreads();  // sO rows are read back by other threads

  // Shared -> registers -> global in 16-byte vectors.
  Tensor gO = make_tensor(make_gmem_ptr(o_tile_ptr), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                          make_stride(params.o_row_stride, _1{}));
  typename Traits::GmemTiledCopyO gmem_copy_o;
  auto gmem_thr_copy_o = gmem_copy_o.get_thread_slice(tid);
  Tensor tOsO = gmem_thr_copy_o.partition_S(sO);
  Tensor tOgO = gmem_thr_copy_o.partition_D(gO);
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  cute::copy(gmem_copy_o, tOsO, tOrO);

  Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor tOcO = gmem_thr_copy_o.partition_D(cO);
  Tensor col_ok = head_dim_predicate(tOcO, params.head_dim);
  store_tile_predicated(gmem_copy_o, tOrO, tOgO, tOcO, col_ok, rows_left);
}

// A query tile whose rows all see no key (causal with seqlen_q > seqlen_k): O = 0 and LSE = -inf, no loads.
template <typename Traits>
__forceinline__ __device__ void store_empty_tile(const FwdParams& params, typename Traits::Element* o_tile_ptr,
                                                 float* lse_tile_ptr, int rows_left) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int tid = threadIdx.x;
  Tensor gO = make_tensor(make_gmem_ptr(o_tile_ptr), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                          make_stride(params.o_row_stride, _1{}));
  typename Traits::GmemTiledCopyO gmem_copy_o;
  auto gmem_thr_copy_o = gmem_copy_o.get_thread_slice(tid);
  Tensor tOgO = gmem_thr_copy_o.partition_D(gO);
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  cute::clear(tOrO);
  Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor tOcO = gmem_thr_copy_o.partition_D(cO);
  Tensor col_ok = head_dim_predicate(tOcO, params.head_dim);
  store_tile_predicated(gmem_copy_o, tOrO, tOgO, tOcO, col_ok, rows_left);
  for (int row = tid; row < kBlockM && row < rows_left; row += Traits::kNThreads) lse_tile_ptr[row] = -INFINITY;
}

}  // namespace flash
