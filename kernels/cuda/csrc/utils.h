// Small device helpers shared by the mainloop, softmax and epilogue: register-level GEMMs with ldmatrix prefetch,
// accumulator layout views, fp32 -> fp16/bf16 conversion and predicated global -> shared copies.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "params.h"

namespace flash {

using namespace cute;

// The CUTLASS element type of a DType.
template <DType kDType>
using element_t = std::conditional_t<kDType == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

// acc += A * B with both operands in shared memory. The ldmatrix of k-slice i+1 is issued before the MMAs of
// slice i so shared-memory latency hides behind tensor-core work.
template <typename TensorAcc, typename TensorA, typename TensorB, typename TensorSA, typename TensorSB,
          typename TiledMma, typename CopyA, typename CopyB, typename ThrCopyA, typename ThrCopyB>
__forceinline__ __device__ void gemm_smem_smem(TensorAcc& acc, TensorA& tCrA, TensorB& tCrB, TensorSA const& tCsA,
                                               TensorSB const& tCsB, TiledMma const& tiled_mma,
                                               CopyA const& copy_a, CopyB const& copy_b, ThrCopyA const& thr_copy_a,
                                               ThrCopyB const& thr_copy_b) {
  Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  cute::copy(copy_a, tCsA(_, _, _0{}), tCrA_view(_, _, _0{}));
  cute::copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int i = 0; i < size<2>(tCrA); ++i) {
    if (i < size<2>(tCrA) - 1) {
      cute::copy(copy_a, tCsA(_, _, i + 1), tCrA_view(_, _, i + 1));
      cute::copy(copy_b, tCsB(_, _, i + 1), tCrB_view(_, _, i + 1));
    }
    cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc);
  }
}

// acc += A * B with A already in registers (P) and B streamed from shared memory (V).
template <typename TensorAcc, typename TensorA, typename TensorB, typename TensorSB, typename TiledMma,
          typename CopyB, typename ThrCopyB>
__forceinline__ __device__ void gemm_reg_smem(TensorAcc& acc, TensorA const& tCrA, TensorB& tCrB,
                                              TensorSB const& tCsB, TiledMma const& tiled_mma, CopyB const& copy_b,
                                              ThrCopyB const& thr_copy_b) {
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  cute::copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int i = 0; i < size<2>(tCrA); ++i) {
    if (i < size<2>(tCrA) - 1) cute::copy(copy_b, tCsB(_, _, i + 1), tCrB_view(_, _, i + 1));
    cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc);
  }
}

// Accumulator fragments seen as (rows, cols), so that row-wise softmax loops over plain indices. Both MMA families
// give a thread two rows 8 apart in each 16-row slab, a row shared by the 4 threads of a quad.
//   SM80 m16n8:       ((2 cols, 2 row halves), MMA_M, MMA_N)     -> ((2, MMA_M), (2, MMA_N))
//   SM90 wgmma 64xN:  ((2 cols, 2 row halves, N/8), MMA_M, MMA_N) -> ((2, MMA_M), (2, N/8, MMA_N))
template <typename Layout>
CUTE_HOST_DEVICE auto acc_rowcol_layout(Layout const& acc) {
  static_assert(decltype(rank(acc))::value == 3, "");
  if constexpr (decltype(rank<0>(acc))::value == 2) {
    return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)), make_layout(get<0, 0>(acc), get<2>(acc)));
  } else {
    static_assert(decltype(rank<0>(acc))::value == 3, "expects an SM80 or SM90 accumulator layout");
    return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                       make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
  }
}

// Two adjacent n8 accumulator tiles hold exactly the values of one m16k16 A-operand fragment, so P can feed the
// second GEMM straight from registers: ((2,2), MMA_M, MMA_N) -> ((2,2,2), MMA_M, MMA_N / 2).
template <typename Layout>
CUTE_HOST_DEVICE auto acc_as_operand_a_layout(Layout const& acc) {
  static_assert(decltype(size<2>(acc))::value % 2 == 0, "kBlockN must cover whole k16 slices");
  auto divided = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // ((2,2), MMA_M, (2, MMA_N/2))
  return make_layout(make_layout(get<0>(divided), get<2, 0>(divided)), get<1>(divided), get<2, 1>(divided));
}

// The same for wgmma (P as the register A operand of an RS warpgroup MMA): the n8 groups sit inside mode 0,
// ((2,2,N/8), MMA_M, MMA_N) -> ((2,2,2), MMA_M, (N/16, MMA_N)).
template <typename Layout>
CUTE_HOST_DEVICE auto wgmma_acc_as_operand_a_layout(Layout const& acc) {
  static_assert(decltype(size<0, 2>(acc))::value % 2 == 0, "kBlockN must cover whole k16 slices");
  auto divided = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // (2, 2, (2, N/16))
  return make_layout(make_layout(get<0>(divided), get<1>(divided), get<2, 0>(divided)), get<1>(acc),
                     make_layout(get<2, 1>(divided), get<2>(acc)));
}

// fp32 fragment -> Element fragment of the same layout, converted in packed pairs (cvt.rn.f16x2.f32).
template <typename To, typename Engine, typename Layout>
__forceinline__ __device__ auto convert_fragment(Tensor<Engine, Layout> const& src) {
  using From = typename Engine::value_type;
  constexpr int N = decltype(size(src))::value;
  cutlass::NumericArrayConverter<To, From, N> converter;
  Tensor dst = make_tensor<To>(src.layout());  // owns its registers
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) =
      converter(*reinterpret_cast<const cutlass::Array<From, N>*>(src.data()));
  return dst;
}

// Per column block of a copy partition: does it hold real head-dim columns (< head_dim) or padding? `coord` is the
// partition of an identity tensor, (CPY, CPY_M, CPY_K); one predicate per CPY_K serves every row.
template <typename TensorC>
__forceinline__ __device__ auto head_dim_predicate(TensorC const& coord, int head_dim) {
  Tensor col_ok = make_tensor<bool>(make_shape(size<2>(coord)));
  CUTE_UNROLL
  for (int k = 0; k < size(col_ok); ++k) col_ok(k) = get<1>(coord(0, 0, k)) < head_dim;
  return col_ok;
}

// Global -> shared copy of one tile with rows >= max_rows and columns with a false predicate zero-filled in shared
// memory, so that padded head-dim columns and rows past the sequence end contribute exact zeros to the GEMMs.
template <typename TiledCopy, typename TensorS, typename TensorD, typename TensorC, typename TensorP>
__forceinline__ __device__ void copy_tile_predicated(TiledCopy const& tiled_copy, TensorS const& src, TensorD& dst,
                                                     TensorC const& coord, TensorP const& col_ok, int max_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coord(0, m, 0)) < max_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) {
        if (col_ok(k)) {
          cute::copy(tiled_copy, src(_, m, k), dst(_, m, k));
        } else {
          cute::clear(dst(_, m, k));
        }
      }
    } else {
      cute::clear(dst(_, m, _));
    }
  }
}

// Global -> shared copy of a tile whose rows are all in range (every key tile but the last): only the head-dim
// predicate, so no row coordinates stay live in the mainloop.
template <typename TiledCopy, typename TensorS, typename TensorD, typename TensorP>
__forceinline__ __device__ void copy_tile_full_rows(TiledCopy const& tiled_copy, TensorS const& src, TensorD& dst,
                                                    TensorP const& col_ok) {
  CUTE_UNROLL
  for (int k = 0; k < size<2>(src); ++k) {
    if (col_ok(k)) {
      cute::copy(tiled_copy, src(_, _, k), dst(_, _, k));
    } else {
      cute::clear(dst(_, _, k));
    }
  }
}

// Register -> global store of one tile, skipping rows >= max_rows and masked columns.
template <typename TiledCopy, typename TensorS, typename TensorD, typename TensorC, typename TensorP>
__forceinline__ __device__ void store_tile_predicated(TiledCopy const& tiled_copy, TensorS const& src, TensorD& dst,
                                                      TensorC const& coord, TensorP const& col_ok, int max_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coord(0, m, 0)) < max_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) {
        if (col_ok(k)) cute::copy(tiled_copy, src(_, m, k), dst(_, m, k));
      }
    }
  }
}

}  // namespace flash
