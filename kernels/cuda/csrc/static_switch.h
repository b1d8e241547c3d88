// Runtime head_dim -> the instantiation that serves it: the binding's launcher table (one slot per instantiated
// head dim) and the loader's kernel names both follow this rounding.
#pragma once

// The head dims that have their own translation unit; every other multiple of 8 rounds up to the next one.
#define FLASH_FOR_EACH_HEADDIM(X) X(32) X(64) X(96) X(128) X(160) X(192) X(256)

namespace flash {
// Smallest instantiated head dim >= head_dim (head_dim already validated: multiple of 8, <= 256).
inline int padded_head_dim(int head_dim) {
  if (head_dim <= 32) return 32;
  if (head_dim <= 64) return 64;
  if (head_dim <= 96) return 96;
  if (head_dim <= 128) return 128;
  if (head_dim <= 160) return 160;
  if (head_dim <= 192) return 192;
  return 256;
}
}  // namespace flash
