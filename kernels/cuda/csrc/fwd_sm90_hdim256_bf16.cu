// Instantiation: SM90a kernel, head_dim 256, bf16, no mask.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "sm90_tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd_sm90<DType::kBFloat16, 256, false>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_sm90_for_headdim<256, element_t<DType::kBFloat16>, false>(params, stream);
}
}  // namespace flash

FLASH_EXPORT_KERNEL(fwd_sm90_hdim256_bf16, kSm90, kBFloat16, 256, false, run_fwd_sm90)
