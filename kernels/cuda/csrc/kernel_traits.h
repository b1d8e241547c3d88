// One type per tile configuration: tile sizes, warps, shared-memory layouts and the copy/MMA atoms of the SM80
// forward kernel. Everything the mainloop needs to know about shapes is a compile-time constant here.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

namespace flash {

using namespace cute;

template <typename Element>
struct Sm80MmaAtom;
template <>
struct Sm80MmaAtom<cutlass::half_t> {
  using type = SM80_16x8x16_F32F16F16F32_TN;
};
template <>
struct Sm80MmaAtom<cutlass::bfloat16_t> {
  using type = SM80_16x8x16_F32BF16BF16F32_TN;
};

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, typename Element_>
struct FwdKernelTraits {
  using Element = Element_;
  using ElementAccum = float;
  using index_t = int64_t;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  // K and V each have one buffer and are loaded alternately: V[n] streams in during S = Q K[n]^T, K[n-1] during
  // softmax and O += P V[n] -- a two-stage pipeline over the (K, V) sequence.
  static constexpr int kStages = 2;

  static_assert(kHeadDim % 32 == 0, "instantiated head dims are multiples of 32");
  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole 16-row MMA slabs");
  static_assert(kBlockN % 16 == 0, "");

  // Warps tile M only: each warp owns 16 * k rows of S and O, so row reductions stay inside a warp (quad shuffles).
  using TiledMma = TiledMMA<MMA_Atom<typename Sm80MmaAtom<Element>::type>, Layout<Shape<Int<kNWarps>, _1, _1>>,
                            Tile<Int<16 * kNWarps>, _16, _16>>;

  // Shared memory rows are 64 (or 32) elements wide with an XOR swizzle so that ldmatrix and the 16-byte cp.async
  // writes hit distinct banks.
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzle = kBlockKSmem == 32 ? 2 : 3;
  using SmemLayoutAtom =
      decltype(composition(Swizzle<kSwizzle, 3, 3>{}, Layout<Shape<_8, Int<kBlockKSmem>>, Stride<Int<kBlockKSmem>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V read as the B operand of O = P V needs (head_dim, kBlockN): the same bytes seen transposed.
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  using SmemLayoutO = SmemLayoutQ;  // O is staged in Q's buffer (Q is dead by then)

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = Copy_Atom<UniversalCopy<uint32_t>, Element>;  // two fp16/bf16 of the accumulator per store

  static constexpr int kSmemQSize = int(size(SmemLayoutQ{})) * int(sizeof(Element));
  static constexpr int kSmemKVSize = int(size(SmemLayoutKV{})) * int(sizeof(Element));
  static constexpr int kSmemSize = kSmemQSize + 2 * kSmemKVSize;

  // Global <-> shared: 16-byte vectors (8 elements), kBlockKSmem / 8 threads per row.
  static constexpr int kGmemElemsPerLoad = int(sizeof(cute::uint128_t) / sizeof(Element));
  static constexpr int kGmemThreadsPerRow = kBlockKSmem / kGmemElemsPerLoad;
  static_assert(kNThreads % kGmemThreadsPerRow == 0, "");
  using GmemLayoutAtom = Layout<Shape<Int<kNThreads / kGmemThreadsPerRow>, Int<kGmemThreadsPerRow>>,
                                Stride<Int<kGmemThreadsPerRow>, _1>>;
  using GmemTiledCopyQKV = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{}, GmemLayoutAtom{}, Layout<Shape<_1, _8>>{}));
  using GmemTiledCopyO = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{},
                                                  GmemLayoutAtom{}, Layout<Shape<_1, _8>>{}));
};

}  // namespace flash
