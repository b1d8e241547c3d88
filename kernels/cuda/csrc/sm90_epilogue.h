// Epilogue of one consumer warpgroup of the SM90a kernel: O (float32 registers) -> fp16/bf16 into shared memory with
// stmatrix, then one TMA store of the 64 x head_dim tile (TMA clips rows past seqlen_q and columns past head_dim).
// LSE goes straight from registers to global memory. Where O has a buffer of its own (Traits::kSeparateO) the store
// runs on while the warpgroup starts its next tile, and only the next epilogue (or the kernel's end) waits for it;
// otherwise O is staged in this warpgroup's rows of the Q buffer and the store completes before Q is released.
// A packed batch's tile that ends inside its sequence's last 64 rows stops there, where a TMA box would run on into
// the next sequence's rows: the warpgroup's threads copy those rows out of shared memory instead.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <type_traits>

#include "params.h"
#include "sm90_mainloop.h"
#include "tile_scheduler.h"
#include "utils.h"

namespace flash {

using namespace cute;

// The LSE row of query row 0 of a tile's sequence: dense (batch, heads_q, seqlen_q), packed (heads_q, total_q).
template <typename Sequence>
__forceinline__ __device__ index_t lse_row_base(const FwdParams& args, const Sequence& seq, int batch, int head) {
  if constexpr (std::is_same_v<Sequence, TileSequence<false>>) {
    return (index_t(batch) * args.heads_q + head) * args.seqlen_q;
  } else {
    return index_t(head) * args.total_q + seq.q_offset();
  }
}

// `rows` rows of this warpgroup's O tile in shared memory to global memory, 16 bytes at a time (head_dim is a
// multiple of 8 elements; the columns past it are padding).
template <typename Traits, typename TensorS>
__forceinline__ __device__ void sm90_copy_rows_out(const FwdParams& args, TensorS const& sO,
                                                   typename Traits::Element* out, int rows) {
  using Element = typename Traits::Element;
  constexpr int kVec = 16 / sizeof(Element);
  const int tid = threadIdx.x % cutlass::NumThreadsPerWarpGroup;
  const int vecs_per_row = args.head_dim / kVec;
  for (int i = tid; i < rows * vecs_per_row; i += cutlass::NumThreadsPerWarpGroup) {
    const int row = i / vecs_per_row, col = i % vecs_per_row * kVec;
    cute::array<Element, kVec> vec;
    CUTE_UNROLL
    for (int e = 0; e < kVec; ++e) vec[e] = sO(row, col + e);
    *reinterpret_cast<uint4*>(out + index_t(row) * args.o_row_stride + col) = reinterpret_cast<const uint4&>(vec);
  }
}

template <typename Traits, typename Params, typename TensorO, int kRows, typename Sequence>
__forceinline__ __device__ void sm90_store_output(const Params& params, typename Traits::SharedStorage& storage,
                                                  TensorO const& acc_o, const float (&lse)[kRows], int consumer,
                                                  int batch, int head, int first_row, const Sequence& seq) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kRowsPerConsumer = Traits::kRowsPerConsumer;
  constexpr bool kPacked = !std::is_same_v<Sequence, TileSequence<false>>;
  const FwdParams& args = params.args;
  const int tid = threadIdx.x % cutlass::NumThreadsPerWarpGroup;
  const int rows_left = seq.seqlen_q(args) - first_row;

  // LSE: the lane holding column 0 of each of its rows writes it.
  typename Traits::TiledMmaPV mma_pv;
  auto thr_pv = mma_pv.get_thread_slice(tid);
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kRowsPerConsumer>, Int<kHeadDim>>{}));
  Tensor tOcO_rowcol = make_tensor(tOcO.data(), acc_rowcol_layout(tOcO.layout()));
  if (get<1>(tOcO_rowcol(0, 0)) == 0) {
    float* lse_tile = args.lse_ptr + lse_row_base(args, seq, batch, head) + first_row;
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = get<0>(tOcO_rowcol(r, 0));
      if (row < rows_left) lse_tile[row] = lse[r];
    }
  }

  // Registers -> shared: this warpgroup's O buffer, or its own rows of Q (no GEMM of this tile reads Q any more).
  auto o_buffer = [&] {
    if constexpr (Traits::kSeparateO) {
      return make_tensor(make_smem_ptr(storage.o.data() + consumer * cute::cosize_v<typename Traits::SmemLayoutO>),
                         typename Traits::SmemLayoutO{});
    } else {
      return local_tile(make_tensor(make_smem_ptr(storage.q.data()), typename Traits::SmemLayoutQ{}),
                        Shape<Int<kRowsPerConsumer>, Int<kHeadDim>>{}, make_coord(consumer, _0{}));
    }
  };
  Tensor sO = o_buffer();
  const int epilogue_barrier = sm90_epilogue_barrier(consumer);
  if constexpr (Traits::kSeparateO) {  // the previous tile's store must have read the buffer before it is reused
    if (tid == 0) tma_store_wait<0>();
    cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, epilogue_barrier);
  }
  Tensor rO = convert_fragment<Element>(acc_o);
  auto smem_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, mma_pv);
  auto smem_thr_copy_o = smem_copy_o.get_thread_slice(tid);
  Tensor taccOrO = smem_thr_copy_o.retile_S(rO);
  Tensor taccOsO = smem_thr_copy_o.partition_D(sO);
  cute::copy(smem_copy_o, taccOrO, taccOsO);
  cutlass::arch::fence_view_async_shared();  // make the generic-proxy writes visible to the TMA (async proxy)
  cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, epilogue_barrier);

  if constexpr (kPacked) {
    if (rows_left < kRowsPerConsumer) {
      Element* out = reinterpret_cast<Element*>(args.o_ptr) + index_t(head) * args.o_head_stride +
                     index_t(seq.q_offset() + first_row) * args.o_row_stride;
      sm90_copy_rows_out<Traits>(args, sO, out, rows_left);
      return;
    }
  }
  if (tid == 0) {
    Tensor mO = params.tma_o.get_tma_tensor(
        make_shape(kPacked ? args.total_q : args.seqlen_q, args.head_dim, args.heads_q, kPacked ? 1 : args.batch));
    Tensor gO = local_tile(domain_offset(make_coord(seq.q_offset() + first_row, _0{}), mO(_, _, head, batch)),
                           Shape<Int<kRowsPerConsumer>, Int<kHeadDim>>{}, make_coord(_0{}, _0{}));
    auto [tOgO, tOsO] = tma_partition(params.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO),
                                      group_modes<0, 2>(gO));
    copy(params.tma_o, tOsO, tOgO);
    tma_store_arrive();
    if constexpr (!Traits::kSeparateO) tma_store_wait<0>();  // Q's buffer is reloaded once this returns
  }
}

// Before a consumer warpgroup exits: its last TMA store must have finished reading shared memory.
__forceinline__ __device__ void sm90_wait_output_stores() {
  if (threadIdx.x % cutlass::NumThreadsPerWarpGroup == 0) tma_store_wait<0>();
}

// A query tile whose rows all see no key (causal with seqlen_q > seqlen_k): O = 0 and LSE = -inf, no loads. Each
// consumer warpgroup clears its own rows with 16-byte stores.
template <typename Traits, typename Sequence>
__forceinline__ __device__ void sm90_store_empty_rows(const FwdParams& args, int batch, int head, int first_row,
                                                      const Sequence& seq) {
  using Element = typename Traits::Element;
  constexpr int kRowsPerConsumer = Traits::kRowsPerConsumer;
  constexpr int kVec = 16 / sizeof(Element);
  const int tid = threadIdx.x % cutlass::NumThreadsPerWarpGroup;
  const int rows = min(kRowsPerConsumer, seq.seqlen_q(args) - first_row);
  const int vecs_per_row = args.head_dim / kVec;  // head_dim is a multiple of 8
  Element* out = reinterpret_cast<Element*>(args.o_ptr) + index_t(batch) * args.o_batch_stride +
                 index_t(head) * args.o_head_stride + index_t(seq.q_offset()) * args.o_row_stride;
  for (int i = tid; i < rows * vecs_per_row; i += cutlass::NumThreadsPerWarpGroup) {
    const int row = first_row + i / vecs_per_row;
    *reinterpret_cast<uint4*>(out + index_t(row) * args.o_row_stride + (i % vecs_per_row) * kVec) =
        make_uint4(0, 0, 0, 0);
  }
  float* lse = args.lse_ptr + lse_row_base(args, seq, batch, head);
  for (int row = tid; row < rows; row += cutlass::NumThreadsPerWarpGroup) lse[first_row + row] = -INFINITY;
}

}  // namespace flash
