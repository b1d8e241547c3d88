// Instantiation: head_dim 64, fp16, causal. One file per (family, head_dim, dtype, causal) so the build runs them in parallel.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kFloat16, 64, true>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<64, element_t<DType::kFloat16>, true>(params, stream);
}
}  // namespace flash
