// Instantiation: SM90a kernels (dense and packed varlen), head_dim 256, fp16.
// One file per (family, head_dim, dtype, causal): the loader builds each as its own library on first use.
#include "sm90_tile_config.h"

FLASH_SM90_INSTANTIATION(fwd_sm90_hdim256_fp16, kFloat16, 256, false)
