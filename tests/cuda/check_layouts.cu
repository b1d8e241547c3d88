// Host-side check of the register-layout algebra the kernels rely on (CuTe layouts are plain host code): the view
// of an S accumulator as the A operand of O += P V must name, value by value, the (row, key) coordinates that the
// MMA's own A partition expects; and the (rows, cols) view must put one row per row index. Built and run by
// tests/test_cuda_layouts.py with nvcc, no GPU needed. Prints one line per case; exit status = mismatches.
// Every warpgroup MMA width, as the SM90 family is built (fwd_sm90.cu): the 80- and 176-key tiles need it.
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#include <cstdio>

#include <cute/tensor.hpp>

#include "kernel_traits.h"
#include "sm90_kernel_traits.h"
#include "utils.h"

using namespace cute;

template <typename TiledMmaS, typename TiledMmaO, typename TileS, typename ToOperandA>
int check_case(const char* name, int threads, ToOperandA to_operand_a) {
  TiledMmaS mma_s;
  TiledMmaO mma_o;
  int bad = 0;
  for (int t = 0; t < threads; ++t) {
    Tensor coord_s = mma_s.get_thread_slice(t).partition_C(make_identity_tensor(TileS{}));
    Tensor coord_a = mma_o.get_thread_slice(t).partition_A(make_identity_tensor(TileS{}));
    Tensor as_a = make_tensor(coord_s.data(), to_operand_a(coord_s.layout()));
    if (size(as_a) != size(coord_a)) return printf("%s: size %d != %d\n", name, int(size(as_a)), int(size(coord_a))), 1;
    for (int i = 0; i < size(coord_a); ++i) bad += !(as_a(i) == coord_a(i));
    Tensor rowcol = make_tensor(coord_s.data(), flash::acc_rowcol_layout(coord_s.layout()));
    for (int r = 0; r < size<0>(rowcol); ++r)
      for (int c = 0; c < size<1>(rowcol); ++c) bad += get<0>(rowcol(r, c)) != get<0>(rowcol(r, 0));
  }
  printf("%s: %d mismatches\n", name, bad);
  return bad;
}

template <int kHeadDim, int kBlockN>
int check_sm90() {
  using T = flash::Sm90FwdTraits<kHeadDim, 128, kBlockN, 2, cutlass::half_t>;
  char name[64];
  snprintf(name, sizeof(name), "sm90 d%d n%d", kHeadDim, kBlockN);
  return check_case<typename T::TiledMmaQK, typename T::TiledMmaPV, Shape<_64, Int<kBlockN>>>(
      name, 128, [](auto layout) { return flash::wgmma_acc_as_operand_a_layout(layout); });
}

template <int kHeadDim, int kBlockN, int kWarps>
int check_sm80() {
  using T = flash::FwdKernelTraits<kHeadDim, 128, kBlockN, kWarps, cutlass::half_t>;
  char name[64];
  snprintf(name, sizeof(name), "sm80 d%d n%d %dw", kHeadDim, kBlockN, kWarps);
  return check_case<typename T::TiledMma, typename T::TiledMma, Shape<_128, Int<kBlockN>>>(
      name, T::kNThreads, [](auto layout) { return flash::acc_as_operand_a_layout(layout); });
}

int main() {
  return check_sm90<64, 128>() + check_sm90<128, 128>() + check_sm90<128, 176>() + check_sm90<256, 80>() +
         check_sm80<64, 128, 4>() + check_sm80<128, 64, 4>() + check_sm80<256, 64, 8>();
}
