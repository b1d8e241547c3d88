// Instantiation: head_dim 32, fp16. One file per (head_dim, dtype) so the build compiles them in parallel.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kFloat16, 32>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<32, element_t<DType::kFloat16>>(params, stream);
}
}  // namespace flash
