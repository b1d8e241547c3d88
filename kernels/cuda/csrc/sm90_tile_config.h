// Tile shape per head dim for the SM90a kernel: 128 query rows (two consumer warpgroups of 64) per CTA, 192 (three)
// at head dim 64; the key tile as wide as the registers allow (a consumer holds O, 64 x head_dim, and S,
// 64 x kBlockN, in float32) and the shared memory fits (2 x Q + O + kStages x (K + V) tiles <= 227 KiB).
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"
#include "sm90_kernel_traits.h"
#include "sm90_launch_template.h"

namespace flash {

// A packed variable-length batch: the tile of the dense call of the same head dim (tiles of one sequence at a time,
// dealt dynamically; no CTA pairs, whose tiles must be equal).
template <int kHeadDim, typename Element, bool kCausal>
cudaError_t run_fwd_sm90_varlen_for_headdim(const FwdParams& params, cudaStream_t stream) {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "SM90 head dims: 64, 128, 256");
  if constexpr (kHeadDim == 64) {
    return launch_fwd_sm90<Sm90FwdTraits<64, 192, 128, 3, Element>, kCausal, true>(params, stream);
  } else if constexpr (kHeadDim == 128) {
    return launch_fwd_sm90<Sm90FwdTraits<128, 128, 128, 2, Element>, kCausal, true>(params, stream);
  } else {
    return launch_fwd_sm90<Sm90FwdTraits<256, 128, 64, 2, Element>, kCausal, true>(params, stream);
  }
}

template <int kHeadDim, typename Element, bool kCausal>
cudaError_t run_fwd_sm90_for_headdim(const FwdParams& params, cudaStream_t stream) {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "SM90 head dims: 64, 128, 256");
  if constexpr (kHeadDim == 64) {
    // Three consumer warpgroups (192-row tiles) keep more MMAs in flight per softmax: 1.05-1.12x the two-consumer
    // tile from N = 2k without a mask, and causal ones at every length since each warpgroup runs only the key
    // tiles its own rows see and the partial tile is the shortest (results/NOTES.md, SM90 v9).
    return launch_fwd_sm90<Sm90FwdTraits<64, 192, 128, 3, Element>, kCausal>(params, stream);    // 168 KiB
  } else if constexpr (kHeadDim == 128) {
    using Traits = Sm90FwdTraits<128, 128, 128, 2, Element>;  // 224 KiB
    if constexpr (!kCausal) {
      // K and V multicast to a pair of CTAs: each K/V byte leaves L2 once per two query tiles (results/NOTES.md,
      // SM90 v11: +2-5% from N = 4k).
      if (sm90_pairs_apply(params, Traits::kBlockM)) {
        return launch_fwd_sm90<Sm90FwdTraits<128, 128, 128, 2, Element, 2>, false>(params, stream);
      }
    }
    return launch_fwd_sm90<Traits, kCausal>(params, stream);
  } else {
    return launch_fwd_sm90<Sm90FwdTraits<256, 128, 64, 2, Element>, kCausal>(params, stream);   // 192 KiB, one Q
  }
}

}  // namespace flash
