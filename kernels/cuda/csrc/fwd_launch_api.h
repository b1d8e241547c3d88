// The boundary between the torch binding and the forward kernels. A kernel library is one family's translation unit
// (fwd_sm80.cu, fwd_sm90.cu) compiled for one (head dim, dtype, mask) by the -D flags of instantiation.h, which
// kernels/cuda/_registry.py names; it exports a KernelEntry, which the binding files under the handle the registry
// gave that kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace flash {

// Launches a forward kernel on `stream`; returns the first CUDA error (attribute setting or launch).
using FwdLaunchFn = cudaError_t (*)(const FwdParams&, cudaStream_t);

enum class KernelFamily : int { kSm80 = 0, kSm90 = 1 };

// What a forward kernel library exports: flash_attention_kernel_entry, and for the SM90 family also
// flash_attention_varlen_entry (the packed variable-length kernel of the same head dim, dtype and mask). The loader's
// cache key keeps a binding and its kernels from the same sources; params_bytes is the check that does not rely on
// it (a launcher must read the FwdParams the binding fills). The other fields let the binding refuse a call that the
// kernel does not serve.
struct KernelEntry {
  int params_bytes;
  KernelFamily family;
  DType dtype;
  int head_dim;
  bool causal;
  FwdLaunchFn launch;
};

}  // namespace flash

#define FLASH_EXPORT_ENTRY(SYMBOL, FAMILY, LAUNCHER)                                                              \
  extern "C" __attribute__((visibility("default"))) const ::flash::KernelEntry SYMBOL = {                       \
      static_cast<int>(sizeof(::flash::FwdParams)), ::flash::KernelFamily::FAMILY, ::flash::DType::FLASH_DTYPE, \
      FLASH_HEAD_DIM, FLASH_CAUSAL, LAUNCHER};
