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

// How many clusters of `config` (its cluster size and shared memory; the grid is not looked at) can be resident at
// once: queried once per kernel and device, as above.
template <auto kKernel>
cudaError_t max_active_clusters(const cudaLaunchConfig_t& config, int& clusters) {
  static int cached[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && cached[device] > 0) {
    clusters = cached[device];
    return cudaSuccess;
  }
  err = cudaOccupancyMaxActiveClusters(&clusters, kKernel, &config);
  if (err == cudaSuccess && device < kMaxDevices) cached[device] = clusters;
  return err;
}

}  // namespace flash
