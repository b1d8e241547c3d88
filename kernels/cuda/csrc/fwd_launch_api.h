// The boundary between the torch binding and the kernels. Each (kernel family, dtype, padded head dim, causal) is
// one translation unit (fwd_hdim<D>_<dtype>[_causal].cu, fwd_sm90_hdim<D>_<dtype>[_causal].cu), built on first use
// as its own shared library, so a first call compiles one kernel, not all of them (kernels/cuda/_loader.py). The unit
// exports a KernelEntry under the C name flash_attention_<file stem>; the binding dlopens the library, reads the
// entry and files its launcher under the key the entry states.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"

namespace flash {

// Launches the forward kernel on `stream`; returns the first CUDA error (attribute setting or launch).
template <DType kDType, int kHeadDim, bool kCausal>
cudaError_t run_fwd(const FwdParams& params, cudaStream_t stream);

// The same for the SM90a kernel family (fwd_sm90_hdim<D>_<dtype>.cu, built only for compute capability 9.0).
template <DType kDType, int kHeadDim, bool kCausal>
cudaError_t run_fwd_sm90(const FwdParams& params, cudaStream_t stream);

// The SM90a kernel on a packed variable-length batch (FwdParams::cu_seqlens_q set); in the same files.
template <DType kDType, int kHeadDim, bool kCausal>
cudaError_t run_fwd_sm90_varlen(const FwdParams& params, cudaStream_t stream);

using FwdLaunchFn = cudaError_t (*)(const FwdParams&, cudaStream_t);

enum class KernelFamily : int { kSm80 = 0, kSm90 = 1 };

// What a kernel library exports. The loader's cache key keeps a binding and its kernels from the same sources;
// params_bytes is the check that does not rely on it (a launcher must read the FwdParams the binding fills).
struct KernelEntry {
  int params_bytes;
  KernelFamily family;
  DType dtype;
  int head_dim;
  bool causal;
  FwdLaunchFn launch;
  bool varlen;  // runs packed variable-length batches (exported as flash_attention_<stem>_varlen)
};

}  // namespace flash

// In the kernel's translation unit: FLASH_EXPORT_KERNEL(fwd_hdim64_bf16_causal, kSm80, kBFloat16, 64, true, run_fwd)
// defines flash_attention_fwd_hdim64_bf16_causal pointing at run_fwd<DType::kBFloat16, 64, true>.
#define FLASH_EXPORT_KERNEL(STEM, FAMILY, DTYPE, HEADDIM, CAUSAL, LAUNCHER)                               \
  extern "C" __attribute__((visibility("default"))) const ::flash::KernelEntry flash_attention_##STEM = {  \
      static_cast<int>(sizeof(::flash::FwdParams)), ::flash::KernelFamily::FAMILY, ::flash::DType::DTYPE, \
      HEADDIM, CAUSAL, &::flash::LAUNCHER<::flash::DType::DTYPE, HEADDIM, CAUSAL>, false};

// Beside it, for the packed (varlen) kernel of the same file: flash_attention_<STEM>_varlen.
#define FLASH_EXPORT_VARLEN_KERNEL(STEM, DTYPE, HEADDIM, CAUSAL, LAUNCHER)                                    \
  extern "C" __attribute__((visibility("default"))) const ::flash::KernelEntry flash_attention_##STEM##_varlen = { \
      static_cast<int>(sizeof(::flash::FwdParams)), ::flash::KernelFamily::kSm90, ::flash::DType::DTYPE,      \
      HEADDIM, CAUSAL, &::flash::LAUNCHER<::flash::DType::DTYPE, HEADDIM, CAUSAL>, true};
