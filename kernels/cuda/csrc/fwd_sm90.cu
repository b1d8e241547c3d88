// The SM90a family's kernel library (TMA, warpgroup MMAs, warp specialization; compute capability 9.0 only): the
// dense and the packed variable-length kernel of one (head dim, dtype, mask), chosen by the -D flags of
// instantiation.h.
// Every warpgroup MMA width N = 8..256 in steps of 8 for CuTe's op selectors, which otherwise pick N from 256, 192,
// 128, 96, 64, 32, 16 and 8 only: an 80-key S tile became five 64 x 16 MMAs, each reading its Q slice from shared
// memory again (0.62-0.79x the 64-key tile at head dim 256, results/NOTES.md). Before any CuTe header.
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#include "instantiation.h"
#include "fwd_launch_api.h"
#include "sm90_tile_config.h"

#ifndef FLASH_CAUSAL
#error "the forward families are built with -DFLASH_CAUSAL=true|false"
#endif

FLASH_EXPORT_ENTRY(flash_attention_kernel_entry, kSm90,
                   (&::flash::run_fwd_sm90_for_headdim<FLASH_HEAD_DIM,
                                                       ::flash::element_t<::flash::DType::FLASH_DTYPE>, FLASH_CAUSAL>))
FLASH_EXPORT_ENTRY(flash_attention_varlen_entry, kSm90,
                   (&::flash::run_fwd_sm90_varlen_for_headdim<
                       FLASH_HEAD_DIM, ::flash::element_t<::flash::DType::FLASH_DTYPE>, FLASH_CAUSAL>))
