// Instantiation: head_dim 32, fp16, no mask. One file per (family, head_dim, dtype, causal) so the build runs them in parallel.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kFloat16, 32, false>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<32, element_t<DType::kFloat16>, false>(params, stream);
}
}  // namespace flash
