// Host side of one instantiation: grid mapping, dynamic shared memory opt-in and the launch.
#pragma once

#include <cuda_runtime_api.h>

#include "fwd_kernel.h"
#include "fwd_launch_api.h"
#include "kernel_traits.h"
#include "params.h"
#include "static_switch.h"

namespace flash {

constexpr int kMaxDevices = 64;

template <typename Traits, bool kCausal>
cudaError_t launch_fwd(const FwdParams& params, cudaStream_t stream) {
  constexpr int kSmem = Traits::kSmemSize;
  auto kernel = &flash_fwd_sm80_kernel<Traits, kCausal>;
  if (kSmem > 48 * 1024) {
    // Once per kernel and device (an idempotent race between threads is harmless): keeps the per-call host cost
    // down and keeps the call out of CUDA-graph captures after the first eager run.
    static bool opted_in[kMaxDevices] = {};
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device >= kMaxDevices || !opted_in[device]) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (err != cudaSuccess) return err;
      if (device < kMaxDevices) opted_in[device] = true;
    }
  }
  // x: query tiles (limit 2^31 - 1). batch * heads is folded over y (< 65,536) and z, and CTAs past the end exit,
  // so 100k (or 4 billion) batch * heads needs no second launch.
  const long long num_m_blocks = (params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const long long bh = static_cast<long long>(params.batch) * params.heads_q;
  const unsigned grid_y = static_cast<unsigned>(bh < 65535 ? bh : 65535);
  const unsigned grid_z = static_cast<unsigned>((bh + grid_y - 1) / grid_y);
  dim3 grid(static_cast<unsigned>(num_m_blocks), grid_y, grid_z);
  kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

template <typename Traits>
cudaError_t launch_fwd_causal_switch(const FwdParams& params, cudaStream_t stream) {
  return FLASH_BOOL_SWITCH(params.causal, kCausal, [&] { return launch_fwd<Traits, kCausal>(params, stream); });
}

}  // namespace flash
