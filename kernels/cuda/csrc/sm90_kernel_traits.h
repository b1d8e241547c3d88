// One type per tile configuration of the SM90a (Hopper) forward kernel: the warp roles, the warpgroup MMAs, the
// shared-memory layouts that TMA writes and wgmma reads, the pipeline depth and the shared storage.
//
// A CTA is one producer warpgroup (one thread issues every TMA load) and kBlockM / 64 consumer warpgroups, each
// owning 64 query rows: S = Q K^T and O += P V are 64 x N warpgroup MMAs, so a row's softmax stays inside one
// warpgroup (in fact inside one quad of one warp, as on SM80).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <type_traits>

#include "params.h"

#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#error "define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED before any CuTe header (fwd_sm90.cu does): key tiles of 80 keys"
#endif

namespace flash {

using namespace cute;

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, typename Element_, int kClusterM_ = 1>
struct Sm90FwdTraits {
  using Element = Element_;
  using ElementAccum = float;
  using index_t = int64_t;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;  // K and V each: how many key tiles are in flight
  // CTAs per cluster, along the query tiles of one head. Two: the pair's CTAs run adjacent query tiles of the same
  // head in step, and each K/V tile leaves L2 once, multicast by TMA into both CTAs' shared memory (each CTA loads
  // half and waits for the whole); a stage is free again when the consumers of both CTAs have released it.
  static constexpr int kClusterM = kClusterM_;
  using ClusterShape = Shape<Int<kClusterM>, _1, _1>;

  static constexpr int kRowsPerConsumer = 64;  // the M of one warpgroup MMA
  static constexpr int kNumConsumers = kBlockM / kRowsPerConsumer;
  static constexpr int kNThreads = 128 * (1 + kNumConsumers);
  // setmaxnreg: the producer only issues TMA, so it gives its registers to the consumers, which hold O and S. The
  // launch gives every thread 65,536 / kNThreads (168 or 128); what the producer frees the consumers take:
  // two consumers 128 * (24 + 2 * 240) = 64,512, three 128 * (32 + 3 * 160) = 65,536.
  static constexpr int kProducerRegs = kNumConsumers == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kNumConsumers == 2 ? 240 : 160;

  static_assert(kHeadDim % 64 == 0 && kHeadDim <= 256, "rows of 128 bytes: the 128-byte swizzle");
  static_assert(kBlockM % kRowsPerConsumer == 0 && (kNumConsumers == 2 || kNumConsumers == 3), "");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "P V consumes whole k16 slices; wgmma N <= 256");
  static_assert(kClusterM == 1 || kClusterM == 2, "one CTA, or a pair sharing K/V");

  // Per warpgroup: S (64 x kBlockN) from Q and K both in shared memory; O (64 x kHeadDim) from P in registers and V
  // in shared memory, V read "MN-major" (its rows are the K dimension of that GEMM).
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, ElementAccum,
                           Shape<Int<kRowsPerConsumer>, Int<kBlockN>, Int<kHeadDim>>>()));
  // S of the left half of a key tile only: a consumer whose rows see none of the tile's right half (the causal
  // diagonal, or a last key tile of at most kBlockN / 2 keys) computes 64 x kBlockN / 2.
  using TiledMmaQKHalf = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, ElementAccum,
                           Shape<Int<kRowsPerConsumer>, Int<kBlockN / 2>, Int<kHeadDim>>>()));
  // Where O's rescale by the moved row max runs: at the end of each key tile's step, once the P V that wrote O
  // retired (FlashAttention-4's SM90 order up to head dim 128), or between issuing S and P V (FlashAttention-3's).
  // A/B on an H100, same bits: at head dim 128 the end of the step is 1.00-1.04x causal at every length, 1.01-1.07x
  // without a mask below 8k keys and on packed batches, 0.986-0.997x without a mask from 8k (the 176-key tiles'
  // steady state); head dim 64 1.00-1.02x (results/NOTES.md, "O's rescale at the end of the step").
  static constexpr bool rescale_o_after_pv(bool causal) {
    return kHeadDim <= 128 && (causal || kBlockN <= 128);
  }
  // Whether a steady step releases K's stage after the first row's first exponentials (softmax.h's kFirstTerms), which
  // keeps ptxas's wait for P V a third into the softmax, or right after S's wait, where ptxas may hoist that wait to
  // the softmax's top. A/B on an H100 (bf16, same kernels otherwise): head dim 128 0.96-1.06x, 1.03-1.06x from 8k keys
  // and on the model grid; head dim 256 causal 1.03x from 2k, but without a mask 0.93x from 4k; head dim 64 0.98x
  // without a mask from 8k, causal 0.98-1.02x (results/NOTES.md, "The pinned K release through the suite and at
  // every head dim").
  static constexpr bool release_k_after_first_terms(bool causal) {
    return kHeadDim == 128 || (kHeadDim == 256 && causal);
  }
  // Whether the B operands' K slices take their descriptors by one 64-bit add (sm90_mainloop.h, descriptor_slice):
  // 11-25 fewer instructions a steady step at every head dim (d64 427 -> 416, d128 488 -> 471, d256 472 -> 447, SASS).
  // Sustained back-to-back calls at the H100's 700 W cap, bf16, two rounds: 1.008-1.011x at head dim 64 without a
  // mask (2 x 32 x 8k) and 1.009x at 128 (16k keys), 0.99-1.01x causal; at head dim 256 0.985-0.990x without a mask
  // and 0.994-0.999x causal, so not there (results/NOTES.md, "The descriptors' 64-bit add").
  static constexpr bool kWideDescriptorAdd = kHeadDim <= 128;
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, ElementAccum, Shape<Int<kRowsPerConsumer>, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>()));

  // Every tile is stored row-major with 128-byte rows swizzled in 8-row (1 KiB) atoms: the layout TMA writes and
  // wgmma's descriptors read without bank conflicts.
  using SmemAtom = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutQConsumer = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kRowsPerConsumer>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // The same V bytes seen as (head_dim, kBlockN, stage): the B operand of O += P V.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  // O leaves through shared memory (stmatrix, then one TMA store per consumer of its 64 x head_dim rows). Where a
  // buffer of its own fits, the store of tile i overlaps the mainloop of tile i+1 and the next Q loads as soon as
  // the last S GEMM retired; otherwise (head_dim 256) O is staged in the consumer's rows of the Q buffer, and the
  // next Q waits for the store.
  using SmemLayoutO = SmemLayoutQConsumer;
  using SmemCopyAtomO = Copy_Atom<SM90_U32x4_STSM_N, Element>;
  static constexpr int kSmemLimit = 227 * 1024;  // opt-in shared memory per block on compute capability 9.0
  // What the tile buffers leave for the barriers, the tile slots and the alignment of SharedStorage's 1024-byte
  // aligned arrays (the static_assert on kSmemSize below is the exact check; this one chooses the buffers).
  static constexpr int kSmemSlack = 1024;
  static constexpr bool kSeparateO =
      (2 * kBlockM * kHeadDim + 2 * kStages * kBlockN * kHeadDim) * int(sizeof(Element)) + kSmemSlack <= kSmemLimit;
  // Q has two buffers where they fit beside O (head dims 64 and 128): the producer loads the next tile's Q, and so
  // its K and V, while the current tile still runs, so the K/V pipeline streams on across tiles and a short tile
  // (a few key tiles, as at N = 512-1k or on the causal diagonal) does not wait a load's latency at its start.
  static constexpr int kQStages =
      kSeparateO && (3 * kBlockM * kHeadDim + 2 * kStages * kBlockN * kHeadDim) * int(sizeof(Element)) +
                                kSmemSlack <= kSmemLimit ? 2 : 1;

  // A CTA's i-th Q load (tiles whose rows see no key load none) uses buffer q_stage(i); it is that buffer's
  // q_use(i)-th load (producer and consumers agree through these two, so the barrier phases they wait on match).
  static __forceinline__ __device__ int q_stage(int i) { return kQStages == 2 ? (i & 1) : 0; }
  static __forceinline__ __device__ int q_use(int i) { return kQStages == 2 ? (i >> 1) : i; }

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kKVTileBytes = kBlockN * kHeadDim * sizeof(Element);

  struct SeparateOBuffer {
    cute::array_aligned<Element, kNumConsumers * cute::cosize_v<SmemLayoutO>, 1024> o;
  };
  struct NoOBuffer {};
  struct SharedStorage : std::conditional_t<kSeparateO, SeparateOBuffer, NoOBuffer> {
    cute::array_aligned<Element, kQStages * cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>, 1024> v;
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
    cutlass::arch::ClusterTransactionBarrier barrier_q[kQStages];  // Q landed (the producer's expect-tx + the bytes)
    cutlass::arch::ClusterBarrier barrier_q_empty[kQStages];       // every consumer thread is done with it (and O)
    // Dynamic scheduling: the producer hands tile indices to the consumers through two slots, each with a full
    // (one arrival: the producer's) and an empty (every consumer thread) barrier.
    int tile_slot[2];
    cutlass::arch::ClusterBarrier barrier_tile_full[2];
    cutlass::arch::ClusterBarrier barrier_tile_empty[2];
    VarlenTile varlen_slot[2];  // a packed batch's tile entries, passed on with their indices
  };
  static constexpr int kSmemSize = int(sizeof(SharedStorage));
  static_assert(kSmemSize <= kSmemLimit, "tiles do not fit in shared memory");
};

}  // namespace flash
