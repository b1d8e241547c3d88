// The decode (KV-cache) family's kernel library (mma.sync, SM80 and later): the split-KV kernel, its combine and the
// cache append of one (head dim, dtype), chosen by the -D flags of instantiation.h.
#include "instantiation.h"
#include "decode_kernel.h"

extern "C" __attribute__((visibility("default"))) const ::flash::DecodeKernelEntry flash_attention_decode_entry = {
    static_cast<int>(sizeof(::flash::DecodeParams)), ::flash::DType::FLASH_DTYPE, FLASH_HEAD_DIM,
    &::flash::run_decode<::flash::DType::FLASH_DTYPE, FLASH_HEAD_DIM>, &::flash::run_decode_append};
