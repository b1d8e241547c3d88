// Tile shape per head dim for the SM90a kernel: 128 query rows (two consumer warpgroups of 64) per CTA, 192 (three)
// at head dim 64; the key tile as wide as the registers allow (a consumer holds O, 64 x head_dim, and S,
// 64 x kBlockN, in float32) and the shared memory fits (2 x Q + O + kStages x (K + V) tiles <= 227 KiB).
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"
#include "sm90_kernel_traits.h"
#include "sm90_launch_template.h"

namespace flash {

// The tile of each head dim, for dense and packed variable-length calls alike.
template <int kHeadDim, typename Element>
struct Sm90Tile;

// Three consumer warpgroups (192-row tiles) keep more MMAs in flight per softmax: 1.05-1.12x the two-consumer tile
// from N = 2k without a mask, and causal ones at every length since each warpgroup runs only the key tiles its own
// rows see and the partial tile is the shortest (results/NOTES.md, SM90 v9).
template <typename Element>
struct Sm90Tile<64, Element> {
  using Traits = Sm90FwdTraits<64, 192, 128, 3, Element>;  // 168 KiB
};

template <typename Element>
struct Sm90Tile<128, Element> {
  using Traits = Sm90FwdTraits<128, 128, 128, 2, Element>;  // 224 KiB
  // K and V multicast to a pair of CTAs: each K/V byte leaves L2 once per two query tiles (results/NOTES.md, SM90
  // v11: +2-5% from N = 4k).
  using PairTraits = Sm90FwdTraits<128, 128, 128, 2, Element, 2>;
  // Dense rows of at least kLongRowKeys keys (a packed batch's lengths are on the device only): 176-key tiles
  // (FlashAttention-3's), O staged in Q's buffer and one Q (208 KiB). Fewer softmax rounds per key: +1-3% from 8k
  // keys; below, the single Q buffer and the wider partial key tile cost 2-27% (results/NOTES.md, "CuTe's op
  // selectors and the 80- and 176-key tiles").
  static constexpr int kLongRowKeys = 8192;
  using LongRowTraits = Sm90FwdTraits<128, 128, 176, 2, Element>;
  using LongRowPairTraits = Sm90FwdTraits<128, 128, 176, 2, Element, 2>;
};

// 80-key tiles, as FlashAttention-4's SM90 path: O staged in Q's buffer, one Q (224 KiB); 1.05-1.18x the 64-key tile
// without a mask, 1.02-1.07x causal from 1k (results/NOTES.md, same section).
template <typename Element>
struct Sm90Tile<256, Element> {
  using Traits = Sm90FwdTraits<256, 128, 80, 2, Element>;
};

// A packed variable-length batch: the tile of the dense call of the same head dim (tiles of one sequence at a time,
// drawn one CTA at a time from the device's tile list: no CTA pairs).
template <int kHeadDim, typename Element, bool kCausal>
cudaError_t run_fwd_sm90_varlen_for_headdim(const FwdParams& params, cudaStream_t stream) {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "SM90 head dims: 64, 128, 256");
  return launch_fwd_sm90<typename Sm90Tile<kHeadDim, Element>::Traits, kCausal, true>(params, stream);
}

template <int kHeadDim, typename Element, bool kCausal>
cudaError_t run_fwd_sm90_for_headdim(const FwdParams& params, cudaStream_t stream) {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "SM90 head dims: 64, 128, 256");
  using Tile = Sm90Tile<kHeadDim, Element>;
  if constexpr (kHeadDim == 128) {
    const bool long_rows = params.seqlen_k >= Tile::kLongRowKeys;
    if (sm90_pairs_apply(params, Tile::Traits::kBlockM)) {
      return long_rows ? launch_fwd_sm90<typename Tile::LongRowPairTraits, kCausal>(params, stream)
                       : launch_fwd_sm90<typename Tile::PairTraits, kCausal>(params, stream);
    }
    if (long_rows) return launch_fwd_sm90<typename Tile::LongRowTraits, kCausal>(params, stream);
  }
  return launch_fwd_sm90<typename Tile::Traits, kCausal>(params, stream);
}

}  // namespace flash
