// Instantiation: the decode (KV-cache) kernel at head_dim 256, fp16. One library per (head_dim, dtype), built on
// first use like the forward kernels (kernels/cuda/_loader.py).
#include "decode_kernel.h"

template cudaError_t flash::run_decode<flash::DType::kFloat16, 256>(const flash::DecodeParams&, cudaStream_t);

FLASH_EXPORT_DECODE_KERNEL(decode_hdim256_fp16, kFloat16, 256)
