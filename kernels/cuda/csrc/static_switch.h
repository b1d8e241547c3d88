// Runtime value -> compile-time constant, so the dispatch code names each instantiation once.
#pragma once

// FLASH_BOOL_SWITCH(cond, NAME, [&] { ... NAME is a constexpr bool here ... });
#define FLASH_BOOL_SWITCH(COND, CONST_NAME, ...)   \
  [&] {                                            \
    if (COND) {                                    \
      constexpr static bool CONST_NAME = true;     \
      return __VA_ARGS__();                        \
    } else {                                       \
      constexpr static bool CONST_NAME = false;    \
      return __VA_ARGS__();                        \
    }                                              \
  }()

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
