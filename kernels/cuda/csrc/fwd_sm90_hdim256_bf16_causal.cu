// Instantiation: SM90a kernels (dense and packed varlen), head_dim 256, bf16, causal.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "sm90_tile_config.h"

FLASH_SM90_INSTANTIATION(fwd_sm90_hdim256_bf16_causal, kBFloat16, 256, true)
