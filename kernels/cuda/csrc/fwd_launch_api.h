// The boundary between the torch binding and the kernels: one function per (kernel family, dtype, padded head dim,
// causal), each defined in its own translation unit (fwd_hdim<D>_<dtype>[_causal].cu,
// fwd_sm90_hdim<D>_<dtype>[_causal].cu) so that ninja compiles them in parallel and no unit is long.
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

}  // namespace flash
