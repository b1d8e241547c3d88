// Launch helpers shared by the SM80 and SM90 kernel families.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace flash {

constexpr int kMaxDevices = 64;

// Opt `kKernel` in to `bytes` of dynamic shared memory (needed past 48 KiB). Once per kernel and device (an
// idempotent race between threads is harmless): keeps the per-call host cost down and keeps the call out of
// CUDA-graph captures after the first eager run.
template <auto kKernel>
cudaError_t opt_in_shared_memory(int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  static bool opted_in[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && opted_in[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && device < kMaxDevices) opted_in[device] = true;
  return err;
}

// x: query tiles (limit 2^31 - 1). batch * heads is folded over y (< 65,536) and z, and CTAs past the end exit, so
// 100k (or 4 billion) batch * heads needs no second launch.
inline dim3 fwd_grid(const FwdParams& params, int block_m) {
  const long long num_m_blocks = (params.seqlen_q + block_m - 1) / block_m;
  const long long bh = static_cast<long long>(params.batch) * params.heads_q;
  const unsigned grid_y = static_cast<unsigned>(bh < 65535 ? bh : 65535);
  const unsigned grid_z = static_cast<unsigned>((bh + grid_y - 1) / grid_y);
  return dim3(static_cast<unsigned>(num_m_blocks), grid_y, grid_z);
}

}  // namespace flash
