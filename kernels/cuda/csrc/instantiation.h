// The -D flags that make one kernel library out of a family's translation unit (fwd_sm80.cu, fwd_sm90.cu,
// decode.cu): kernels/cuda/_registry.py (Kernel.defines) gives them, for every kernel it lists, and no file is kept
// per instantiation.
//   FLASH_HEAD_DIM  the head dim the kernel is built for (a call's head_dim rounds up to it)
//   FLASH_DTYPE     kFloat16 or kBFloat16 (flash::DType)
//   FLASH_CAUSAL    true or false (the forward families; the decode kernel takes the mask at run time)
#pragma once

#if !defined(FLASH_HEAD_DIM) || !defined(FLASH_DTYPE)
#error "build with -DFLASH_HEAD_DIM=<d> -DFLASH_DTYPE=kFloat16|kBFloat16 (kernels/cuda/_registry.py, Kernel.defines)"
#endif
