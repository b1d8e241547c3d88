// Instantiation: SM90a kernel, head_dim 256, bf16, no mask. One file per (family, head_dim, dtype, causal) so the build runs them in parallel.
#include "sm90_tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd_sm90<DType::kBFloat16, 256, false>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_sm90_for_headdim<256, element_t<DType::kBFloat16>, false>(params, stream);
}
}  // namespace flash
