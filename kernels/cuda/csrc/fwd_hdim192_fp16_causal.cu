// Instantiation: head_dim 192, fp16, causal.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd<DType::kFloat16, 192, true>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_for_headdim<192, element_t<DType::kFloat16>, true>(params, stream);
}
}  // namespace flash

FLASH_EXPORT_KERNEL(fwd_hdim192_fp16_causal, kSm80, kFloat16, 192, true, run_fwd)
