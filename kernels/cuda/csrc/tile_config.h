// Tile shape per head dim for the SM80 kernel (FlashAttention-2's choices for A100/H100 as a starting point):
// small head dims afford a 128x128 S tile; larger ones trade kBlockN for registers (O is kBlockM x kHeadDim fp32).
#pragma once

#include <cuda_runtime_api.h>

#include "fwd_launch_template.h"
#include "kernel_traits.h"
#include "params.h"

namespace flash {

template <int kHeadDim, typename Element, bool kCausal>
cudaError_t run_fwd_for_headdim(const FwdParams& params, cudaStream_t stream) {
  if constexpr (kHeadDim <= 64) {
    return launch_fwd<FwdKernelTraits<kHeadDim, 128, 128, 4, Element>, kCausal>(params, stream);
  } else if constexpr (kHeadDim <= 128) {
    return launch_fwd<FwdKernelTraits<kHeadDim, 128, 64, 4, Element>, kCausal>(params, stream);
  } else if constexpr (kHeadDim <= 192) {
    return launch_fwd<FwdKernelTraits<kHeadDim, 128, 64, 8, Element>, kCausal>(params, stream);
  } else {
    // 128x64 needs 128 KiB of shared memory (A100, H100); GPUs with ~100 KiB (sm86/sm89) get 64x64.
    using Big = FwdKernelTraits<kHeadDim, 128, 64, 8, Element>;
    using Small = FwdKernelTraits<kHeadDim, 64, 64, 4, Element>;
    if (params.max_smem_per_block >= Big::kSmemSize) return launch_fwd<Big, kCausal>(params, stream);
    return launch_fwd<Small, kCausal>(params, stream);
  }
}

}  // namespace flash
