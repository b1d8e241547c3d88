// The SM80 family's kernel library (mma.sync, ldmatrix, cp.async; SM80 and later): one (head dim, dtype, mask) per
// build, chosen by the -D flags of instantiation.h.
#include "instantiation.h"
#include "fwd_launch_api.h"
#include "tile_config.h"

#ifndef FLASH_CAUSAL
#error "the forward families are built with -DFLASH_CAUSAL=true|false"
#endif

FLASH_EXPORT_ENTRY(flash_attention_kernel_entry, kSm80,
                   (&::flash::run_fwd_for_headdim<FLASH_HEAD_DIM, ::flash::element_t<::flash::DType::FLASH_DTYPE>,
                                                  FLASH_CAUSAL>))
