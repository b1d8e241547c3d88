// Host side of one instantiation: grid mapping, dynamic shared memory opt-in and the launch.
#pragma once

#include <cuda_runtime_api.h>

#include "fwd_kernel.h"
#include "fwd_launch_api.h"
#include "kernel_traits.h"
#include "launch_utils.h"
#include "params.h"

namespace flash {

template <typename Traits, bool kCausal>
cudaError_t launch_fwd(const FwdParams& params, cudaStream_t stream) {
  constexpr auto kernel = &flash_fwd_sm80_kernel<Traits, kCausal>;
  cudaError_t err = opt_in_shared_memory<kernel>(Traits::kSmemSize);
  if (err != cudaSuccess) return err;
  kernel<<<fwd_grid(params, Traits::kBlockM), Traits::kNThreads, Traits::kSmemSize, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace flash
