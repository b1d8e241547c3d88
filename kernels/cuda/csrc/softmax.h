// Online softmax over the key tiles of one query tile, in float32 with exp2 and the softmax scale folded into one
// FMA (s * scale * log2 e - max * scale * log2 e). O is rescaled only when the running max moves; 1 / row_sum is
// applied once, in finalize().
#pragma once

#include <cmath>
#include <type_traits>
#include <cute/tensor.hpp>

#include "utils.h"

namespace flash {

using namespace cute;

// A row of the m16n8 accumulator lives in the 4 threads of a quad (lanes 4r..4r+3).
__forceinline__ __device__ float quad_allreduce_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
  return x;
}
__forceinline__ __device__ float quad_allreduce_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  x += __shfl_xor_sync(0xffffffff, x, 2);
  return x;
}

template <int kRows>
struct OnlineSoftmax {
  // Per row held by this thread: the running max of raw scores, and this thread's partial sum of exp2 terms (the
  // quad reduction of the sum is deferred to finalize(): every lane of a quad applies the same corrections).
  float row_max[kRows];
  float row_sum[kRows];

  __forceinline__ __device__ OnlineSoftmax() {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // Turns the scores acc_s into unnormalised probabilities in place and sets correction[r], the factor by which O
  // (and already row_sum) must be scaled because row r's running max moved. Split from rescale_o() so that the
  // Hopper kernel can compute P while the previous P V, which still writes O, is in flight.
  // kCols: only this thread's first kCols columns hold scores (acc_rowcol_layout's column order follows the tile's);
  // the rest become 0 without an exp2 (the Hopper kernel's left-half key tile, sm90_mainloop.h).
  // after_first_terms(sum), if given, is called once the first row's sum holds its first kFirstTerms exponentials:
  // the Hopper step hangs an instruction there that ptxas must then schedule after them (sm90_mainloop.h). With it,
  // each row's sum also starts from the rescaled previous sum, so the correction is computed before the
  // exponentials and O's rescale can interleave with them; without it the rescaled previous sum is added last
  // (the order the SM80 d128 tile fits its registers with: the other spills 864 bytes, against 576 allowed).
  static constexpr int kFirstTerms = 8;
  template <bool kFirst, int kCols = -1, typename TensorS, typename AfterFirstTerms = decltype(nullptr)>
  __forceinline__ __device__ void exponentiate(TensorS& acc_s, float scale_log2, float (&correction)[kRows],
                                               AfterFirstTerms after_first_terms = nullptr) {
    Tensor s = make_tensor(acc_s.data(), acc_rowcol_layout(acc_s.layout()));
    static_assert(decltype(size<0>(s))::value == kRows, "");
    constexpr int kValidCols = kCols < 0 ? int(decltype(size<1>(s))::value) : kCols;
    constexpr bool kHooked = !std::is_same_v<AfterFirstTerms, decltype(nullptr)>;
    static_assert(!kHooked || kValidCols >= kFirstTerms,
                  "after_first_terms must be called: a row holds fewer than kFirstTerms scores");
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float m = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < kValidCols; ++c) m = fmaxf(m, s(r, c));
      m = quad_allreduce_max(m);
      // A row with every key masked so far keeps max -inf; subtract 0 instead so exp2 gives 0, not NaN.
      const float max_scaled = m == -INFINITY ? 0.f : m * scale_log2;
      correction[r] = kFirst ? 1.f : exp2f(row_max[r] * scale_log2 - max_scaled);
      row_max[r] = m;
      float sum = kFirst || !kHooked ? 0.f : row_sum[r] * correction[r];
      CUTE_UNROLL
      for (int c = 0; c < kValidCols; ++c) {
        s(r, c) = exp2f(s(r, c) * scale_log2 - max_scaled);
        sum += s(r, c);
        if constexpr (kHooked) {
          if (r == 0 && c == kFirstTerms - 1) after_first_terms(sum);
        }
      }
      CUTE_UNROLL
      for (int c = kValidCols; c < size<1>(s); ++c) s(r, c) = 0.f;
      row_sum[r] = kFirst || kHooked ? sum : row_sum[r] * correction[r] + sum;
    }
  }

  template <typename TensorO>
  __forceinline__ __device__ void rescale_o(TensorO& acc_o, const float (&correction)[kRows]) {
    Tensor o = make_tensor(acc_o.data(), acc_rowcol_layout(acc_o.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= correction[r];
    }
  }

  // Both steps at once (SM80: the previous P V has retired before the softmax). First tile: O is 0, no rescale.
  template <bool kFirst, typename TensorS, typename TensorO>
  __forceinline__ __device__ void update(TensorS& acc_s, TensorO& acc_o, float scale_log2) {
    float correction[kRows];
    exponentiate<kFirst>(acc_s, scale_log2, correction);
    if constexpr (!kFirst) rescale_o(acc_o, correction);
  }

  // O /= row_sum; lse[r] = natural-log log-sum-exp of the scaled scores. Rows that saw no key: O = 0, lse = -inf.
  template <typename TensorO>
  __forceinline__ __device__ void finalize(TensorO& acc_o, float softmax_scale, float (&lse)[kRows]) {
    Tensor o = make_tensor(acc_o.data(), acc_rowcol_layout(acc_o.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_allreduce_sum(row_sum[r]);
      // sum == 0 only for rows that saw no key (their acc_o is exactly 0); a NaN input stays NaN, never hidden.
      const bool empty = sum == 0.f;
      const float inv_sum = empty ? 0.f : 1.f / sum;
      lse[r] = empty ? -INFINITY : row_max[r] * softmax_scale + __logf(sum);
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= inv_sum;
    }
  }
};

}  // namespace flash
