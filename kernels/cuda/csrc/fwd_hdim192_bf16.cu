// Instantiation: head_dim 192, bf16, no mask.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kBFloat16, 192, false>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<192, element_t<DType::kBFloat16>, false>(params, stream);
}
}  // namespace flash

FLASH_EXPORT_KERNEL(fwd_hdim192_bf16, kSm80, kBFloat16, 192, false, run_fwd)
