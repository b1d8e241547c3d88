// Instantiation: SM90a kernel, head_dim 256, fp16, causal.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "sm90_tile_config.h"

namespace flash {
template <>
cudaError_t run_fwd_sm90<DType::kFloat16, 256, true>(const FwdParams& params, cudaStream_t stream) {
  return run_fwd_sm90_for_headdim<256, element_t<DType::kFloat16>, true>(params, stream);
}
}  // namespace flash

FLASH_EXPORT_KERNEL(fwd_sm90_hdim256_fp16_causal, kSm90, kFloat16, 256, true, run_fwd_sm90)
