// Launch helpers shared by the SM80 and SM90 kernel families.
#pragma once

#include <cuda_runtime_api.h>

#include "tile_scheduler.h"

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

}  // namespace flash
