// Instantiation: head_dim 160, fp16, no mask.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kFloat16, 160, false>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<160, element_t<DType::kFloat16>, false>(params, stream);
}
}  // namespace flash

FLASH_EXPORT_KERNEL(fwd_hdim160_fp16, kSm80, kFloat16, 160, false, run_fwd)
