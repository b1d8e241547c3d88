// The two halves of the SM90a mainloop: the producer, one thread that issues TMA loads of Q once and of K and V per
// key tile into a kStages-deep mbarrier pipeline, and the consumers, warpgroups that run S = Q K^T and O += P V as
// warpgroup MMAs with the online softmax in registers between them.
//
// A consumer overlaps inside itself and with its sibling:
//   - within a warpgroup, S of tile n is issued before O += P V of tile n+1 (the previous P), so the softmax of n
//     runs while that P V is still on the tensor cores;
//   - between the two consumer warpgroups, named barriers hand the right to issue GEMMs back and forth (ping-pong),
//     so one warpgroup's softmax overlaps the other's GEMMs instead of both competing for the tensor cores at once.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <type_traits>

#include "mask.h"
#include "params.h"
#include "softmax.h"
#include "tile_scheduler.h"
#include "utils.h"

namespace flash {

using namespace cute;

// Named barriers (0 is __syncthreads): one ping-pong turn per consumer, then one per consumer for its epilogue.
constexpr int kSm90MaxConsumers = 3;
__forceinline__ __device__ int sm90_turn_barrier(int consumer) { return 1 + consumer; }
__forceinline__ __device__ int sm90_epilogue_barrier(int consumer) { return 1 + kSm90MaxConsumers + consumer; }

// Ping-pong among the consumer warpgroups: each waits for its turn before issuing GEMMs and hands the turn to the
// next one (a ring: 0 -> 1 -> ... -> 0) once they are issued, so one's softmax runs while another's GEMMs hold the
// tensor cores. The turns go round strictly over the CTA's whole life, across tiles (every consumer takes the same
// number per tile): the last consumer gives consumer 0 the first turn in start(), and consumer 0 takes back the one
// turn the last consumer hands it after the last GEMMs in finish(), so no named barrier is left half-arrived at
// exit. Strict rotation is also what keeps a barrier from collecting two arrivals of one consumer: a consumer's
// next hand-over needs a full round of the others first. One consumer: no-ops.
template <int kNumConsumers>
struct Sm90PingPong {
  static constexpr bool kEnabled = kNumConsumers > 1;
  int consumer;
  __forceinline__ __device__ explicit Sm90PingPong(int consumer_) : consumer(consumer_) {}
  __forceinline__ __device__ void wait_turn() const {
    if constexpr (kEnabled) {
      cutlass::arch::NamedBarrier::sync(2 * cutlass::NumThreadsPerWarpGroup, sm90_turn_barrier(consumer));
    }
  }
  __forceinline__ __device__ void pass_turn() const {
    if constexpr (kEnabled) {
      const int next = consumer + 1 == kNumConsumers ? 0 : consumer + 1;
      cutlass::arch::NamedBarrier::arrive(2 * cutlass::NumThreadsPerWarpGroup, sm90_turn_barrier(next));
    }
  }
  __forceinline__ __device__ void start() const {
    if (consumer == kNumConsumers - 1) pass_turn();
  }
  __forceinline__ __device__ void finish() const {
    if (consumer == 0) wait_turn();
  }
};

// The Q buffers (Traits::kQStages) as a pipeline between the producer and the consumer warpgroups. A CTA's i-th Q
// load (tiles whose rows see no key load none) goes to buffer Traits::q_stage(i); producer and consumers count their
// loads alike, so the barrier phases they wait on match. The producer acquires the buffer (every consumer released
// its previous load), commits the load to the buffer's full barrier (the TMA's bytes complete it) and advances; a
// consumer acquires the next load's buffer, waits for it, and releases it once no GEMM or epilogue store reads it.
template <typename Traits>
class Sm90QPipeline {
 public:
  using Storage = typename Traits::SharedStorage;
  struct Buffer {  // a consumer's view of one load: its buffer, and the phase with which the load completes
    int stage;
    int phase;
  };

  __forceinline__ __device__ explicit Sm90QPipeline(Storage& storage) : storage_(storage) {}

  __forceinline__ __device__ int producer_acquire() const {
    const int stage = Traits::q_stage(loads_);
    // A wait on an "empty" barrier uses the parity of the use before (a fresh barrier counts its phase -1 as done),
    // so the first loads pass at once.
    storage_.barrier_q_empty[stage].wait((Traits::q_use(loads_) & 1) ^ 1);
    return stage;
  }
  // The barrier the load's TMA completes, once the producer expects its bytes.
  __forceinline__ __device__ uint64_t& producer_commit(int stage) const {
    storage_.barrier_q[stage].arrive_and_expect_tx(Traits::kQBytes);
    return reinterpret_cast<uint64_t&>(storage_.barrier_q[stage]);
  }
  __forceinline__ __device__ void producer_advance() { ++loads_; }

  __forceinline__ __device__ Buffer consumer_acquire() {
    const int stage = Traits::q_stage(loads_++);
    return {stage, (phases_ >> stage) & 1};
  }
  __forceinline__ __device__ void consumer_wait(const Buffer& buffer) const {
    storage_.barrier_q[buffer.stage].wait(buffer.phase);
  }
  __forceinline__ __device__ void consumer_release(const Buffer& buffer) const {
    storage_.barrier_q_empty[buffer.stage].arrive();
  }
  __forceinline__ __device__ void consumer_advance(const Buffer& buffer) { phases_ ^= 1 << buffer.stage; }

 private:
  Storage& storage_;
  int loads_ = 0;   // Q loads so far, as this role counts them
  int phases_ = 0;  // consumers: bit s, the phase with which buffer s's next load completes
};

// What the producer carries across its tiles: the K and V pipelines and their shared state, and the Q pipeline.
template <typename Traits>
struct Sm90ProducerPipelines {
  typename Traits::Pipeline& k;
  typename Traits::Pipeline& v;
  typename Traits::PipelineState& state;
  Sm90QPipeline<Traits>& q;
};

// What a consumer warpgroup carries across its tiles: the K and V pipelines and their states, the Q pipeline, its
// turn in the ping-pong, and its index (which 64 rows of a tile are its own).
template <typename Traits>
struct Sm90ConsumerPipelines {
  typename Traits::Pipeline& k;
  typename Traits::Pipeline& v;
  typename Traits::PipelineState& state_k;
  typename Traits::PipelineState& state_v;
  Sm90QPipeline<Traits>& q;
  const Sm90PingPong<Traits::kNumConsumers>& ping_pong;
  int consumer;
};

// The k-th K slice of a shared-memory operand's warpgroup-MMA descriptors, by one 64-bit add to the descriptor of
// slice 0. CuTe's slice adds the offset to the lower word and copies the upper one, which ptxas then rebuilds beside
// every HGMMA (a UIADD3 and a UMOV); the 64-bit sum compiles to one UIADD3.64, as FlashAttention-4's steps do (the
// upper word cannot take a carry: the lower word's fields, a 14-bit address and a 14-bit offset at bit 16, stay far
// below 2^32). Sm90FwdTraits::kWideDescriptorAdd says where it is used.
template <typename TensorDesc>
__forceinline__ __device__ auto descriptor_slice(TensorDesc const& descriptors, int k) {
  const GmmaDescriptor slice(descriptors.data().desc_.desc_ + uint64_t(descriptors.layout()(0, 0, k)));
  return make_tensor(GMMA::DescriptorIterator{slice}, descriptors(_, _, k).layout());
}

// acc (+)= A * B as warpgroup MMAs over the K slices. A is descriptors (shared memory) or registers (P); B is
// descriptors, sliced by descriptor_slice where kWideDescriptorAdd. The batch is committed; kWait >= 0 waits until at
// most kWait batches are still in flight, -1 returns at once.
template <bool kZeroInit, int kWait, bool kWideDescriptorAdd, typename TiledMma, typename TensorA, typename TensorB,
          typename TensorC>
__forceinline__ __device__ void warpgroup_gemm(TiledMma& tiled_mma, TensorA& tCrA, TensorB const& tCrB,
                                               TensorC& tCrC) {
  constexpr bool kRegisterA = !cute::is_base_of<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>::value;
  if constexpr (kRegisterA) warpgroup_fence_operand(tCrA);
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  tiled_mma.accumulate_ = kZeroInit ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    if constexpr (kWideDescriptorAdd) {
      cute::gemm(tiled_mma, tCrA(_, _, k), descriptor_slice(tCrB, k), tCrC);
    } else {
      cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
    }
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  if constexpr (kWait >= 0) warpgroup_wait<kWait>();
  warpgroup_fence_operand(tCrC);
  if constexpr (kRegisterA) warpgroup_fence_operand(tCrA);
}

// Producer, one tile: Q rows [first_row, first_row + kBlockM) of the tile's sequence into the Q pipeline's buffer
// q_stage (acquired), then K[n] and V[n] for n = n_block_max - 1 down to 0 (the consumers' order: masked tiles
// first). The pipeline states carry on from the CTA's previous tile.
template <typename Traits, typename Params, typename Sequence>
__forceinline__ __device__ void sm90_load(const Params& params, typename Traits::SharedStorage& storage,
                                          Sm90ProducerPipelines<Traits>& pipes, const TileCoord& tile,
                                          int first_row, int n_block_max, int q_stage, const Sequence& seq) {
  const int batch = tile.batch, head = tile.head, head_kv = tile.head_kv;
  using Pipeline = typename Traits::Pipeline;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  const FwdParams& args = params.args;

  Tensor sQ = make_tensor(make_smem_ptr(storage.q.data() + q_stage * cute::cosize_v<typename Traits::SmemLayoutQ>),
                          typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Traits::SmemLayoutV{});

  // TMA views of the whole tensors, (rows, head_dim, heads, batch); rows and head-dim columns past the end arrive
  // as zeros, which the mask (rows of K) and the zero columns (head_dim) make harmless. A packed batch is one batch
  // of total rows: a tile's rows past its sequence are the next sequence's (its keys masked, its queries' rows
  // never stored).
  constexpr bool kPacked = !std::is_same_v<Sequence, TileSequence<false>>;
  const int batches = kPacked ? 1 : args.batch;
  Tensor mQ = params.tma_q.get_tma_tensor(
      make_shape(kPacked ? args.total_q : args.seqlen_q, args.head_dim, args.heads_q, batches));
  Tensor mK = params.tma_k.get_tma_tensor(
      make_shape(kPacked ? args.total_k : args.seqlen_k, args.head_dim, args.heads_kv, batches));
  Tensor mV = params.tma_v.get_tma_tensor(
      make_shape(kPacked ? args.total_k : args.seqlen_k, args.head_dim, args.heads_kv, batches));
  Tensor gQ = local_tile(domain_offset(make_coord(seq.q_offset() + first_row, _0{}), mQ(_, _, head, batch)),
                         Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_0{}, _0{}));
  auto key_rows = [&](auto const& m) {
    if constexpr (kPacked) {
      return domain_offset(make_coord(seq.k_offset(), _0{}), m(_, _, head_kv, batch));
    } else {
      return m(_, _, head_kv, batch);
    }
  };
  Tensor gK = local_tile(key_rows(mK), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));
  Tensor gV = local_tile(key_rows(mV), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));

  auto [tQgQ, tQsQ] = tma_partition(params.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                    group_modes<0, 2>(gQ));
  // A pair (kClusterM == 2) splits each K/V tile: this CTA loads its slice and multicasts it into both CTAs.
  constexpr int kClusterM = Traits::kClusterM;
  const int cluster_rank = kClusterM == 1 ? 0 : int(cute::block_rank_in_cluster());
  auto [tKgK, tKsK] = tma_partition(params.tma_k, cluster_rank, Layout<Int<kClusterM>>{}, group_modes<0, 2>(sK),
                                    group_modes<0, 2>(gK));  // (TMA, n), (TMA, stage)
  auto [tVgV, tVsV] = tma_partition(params.tma_v, cluster_rank, Layout<Int<kClusterM>>{}, group_modes<0, 2>(sV),
                                    group_modes<0, 2>(gV));
  auto with_barrier = [](auto const& tma, auto& barrier) {
    if constexpr (kClusterM == 1) {
      return tma.with(barrier);
    } else {
      return tma.with(barrier, uint16_t((1 << kClusterM) - 1));
    }
  };

  copy(params.tma_q.with(pipes.q.producer_commit(q_stage)), tQgQ, tQsQ);

  typename Traits::PipelineState& state = pipes.state;
  CUTE_NO_UNROLL
  for (int n_block = n_block_max - 1; n_block >= 0; --n_block) {
    pipes.k.producer_acquire(state);
    copy(with_barrier(params.tma_k, *pipes.k.producer_get_barrier(state)), tKgK(_, n_block),
         tKsK(_, state.index()));
    pipes.v.producer_acquire(state);
    copy(with_barrier(params.tma_v, *pipes.v.producer_get_barrier(state)), tVgV(_, n_block),
         tVsV(_, state.index()));
    ++state;
  }
}

// Consumer, one tile: this warpgroup's 64 query rows from row_offset (in the Q buffer q; the tile's rows end at
// end_row and see the key tiles `range` of `mask`) against every key tile. Returns with acc_o normalised and lse
// filled; calls release_q() once no GEMM of this tile will read Q again. The pipeline states carry on across tiles.
template <typename Traits, bool kCausal, typename Mask, typename TensorO, int kRows, typename ReleaseQ>
__forceinline__ __device__ void sm90_mma(const FwdParams& args, typename Traits::SharedStorage& storage,
                                         Sm90ConsumerPipelines<Traits>& pipes,
                                         const typename Sm90QPipeline<Traits>::Buffer& q, int row_offset,
                                         int end_row, const KeyTileRange& range, const Mask& mask, TensorO& acc_o,
                                         float (&lse)[kRows], ReleaseQ&& release_q) {
  using Element = typename Traits::Element;
  typename Traits::Pipeline& pipeline_k = pipes.k;
  typename Traits::Pipeline& pipeline_v = pipes.v;
  typename Traits::PipelineState& state_k = pipes.state_k;
  typename Traits::PipelineState& state_v = pipes.state_v;
  const auto& ping_pong = pipes.ping_pong;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kRowsPerConsumer = Traits::kRowsPerConsumer;
  constexpr bool kRescaleOAfterPV = Traits::rescale_o_after_pv(kCausal);
  constexpr bool kReleaseKAfterFirstTerms = Traits::release_k_after_first_terms(kCausal);
  const int tid = threadIdx.x % cutlass::NumThreadsPerWarpGroup;

  Tensor sQ = make_tensor(make_smem_ptr(storage.q.data() + q.stage * cute::cosize_v<typename Traits::SmemLayoutQ>),
                          typename Traits::SmemLayoutQ{});
  Tensor sQc = local_tile(sQ, Shape<Int<kRowsPerConsumer>, Int<kHeadDim>>{}, make_coord(pipes.consumer, _0{}));
  Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(storage.v.data()), typename Traits::SmemLayoutVt{});

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(tid);
  auto thr_pv = mma_pv.get_thread_slice(tid);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQc);  // (MMA, 1, kHeadDim / 16) descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, 1, kHeadDim / 16, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, 1, kBlockN / 16, stage)
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kRowsPerConsumer>, Int<kBlockN>>{}));

  OnlineSoftmax<kRows> softmax;
  float correction[kRows];
  Tensor rP = make_tensor<Element>(partition_fragment_C(mma_qk, Shape<Int<kRowsPerConsumer>, Int<kBlockN>>{}).layout());
  clear(acc_o);

  pipes.q.consumer_wait(q);

  // This warpgroup's key tiles (its rows may see fewer than the tile's rows do). For each key tile it does not
  // need, it takes its turn without a GEMM and releases K and V once they have landed: a release before the load
  // would count towards the stage's previous use. A warpgroup that needs none ends with O = 0 and LSE = -inf.
  const RowKeys keys = mask.keys_of_rows(row_offset, kRowsPerConsumer, end_row, range);
  const int visible_end = keys.visible_end;
  const int n_block_max = keys.n_block_max;
  for (int n = range.n_block_max - 1; n >= n_block_max; --n) {
    ping_pong.wait_turn();
    ping_pong.pass_turn();
    pipeline_k.consumer_wait(state_k);
    pipeline_k.consumer_release(state_k);
    ++state_k;
    pipeline_v.consumer_wait(state_v);
    pipeline_v.consumer_release(state_v);
    ++state_v;
  }
  if (n_block_max == 0) {
    ping_pong.wait_turn();  // the turn of the last P V
    ping_pong.pass_turn();
    release_q();
    softmax.finalize(acc_o, args.softmax_scale, lse);
    return;
  }

  // The first (last-in-memory) key tile: the only one that can be partial, and where the causal diagonal is. Where
  // this warpgroup's rows see none of its right half (their diagonal ends in the left half, as for the upper 64 rows
  // of every diagonal tile when kBlockM == kBlockN, or the keys end there), S is a 64 x kBlockN / 2 GEMM and only its
  // columns are exponentiated; P's right half is 0. The two widths are two whole branches, each waiting for its own
  // GEMM: an accumulator shared between the widths, or a GEMM in flight across the branch, makes ptxas serialise
  // every warpgroup MMA of the kernel (C7511 / C7515, which scripts/check_cuda_compile.py fails on).
  int n_block = n_block_max - 1;
  auto first_key_tile = [&](auto& mma, auto key_cols) __attribute__((always_inline)) {
    constexpr int kCols = decltype(key_cols)::value;
    auto thr = mma.get_thread_slice(tid);
    Tensor tSrQ_first = thr.partition_fragment_A(sQc);
    Tensor tSrK_first = thr.partition_fragment_B(
        local_tile(sK, Shape<Int<kCols>, Int<kHeadDim>, Int<Traits::kStages>>{}, make_coord(_0{}, _0{}, _0{})));
    Tensor acc = partition_fragment_C(mma, Shape<Int<kRowsPerConsumer>, Int<kCols>>{});
    pipeline_k.consumer_wait(state_k);
    ping_pong.wait_turn();
    warpgroup_gemm<true, -1, Traits::kWideDescriptorAdd>(mma, tSrQ_first, tSrK_first(_, _, _, state_k.index()), acc);
    ping_pong.pass_turn();
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    pipeline_k.consumer_release(state_k);
    ++state_k;
    // A 64 x kCols accumulator holds the first kCols columns of the 64 x kBlockN one, register for register.
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kRowsPerConsumer>, Int<kBlockN>>{});
    CUTE_UNROLL
    for (int i = 0; i < size(acc); ++i) acc_s(i) = acc(i);
    if (n_block >= range.n_block_unmasked_end) {  // always so for a left-half tile
      mask.apply(acc_s, tScS, row_offset, n_block * kBlockN);
    }
    constexpr int kThreadCols = decltype(size<1>(acc_rowcol_layout(acc_s.layout())))::value;
    softmax.template exponentiate<true, kThreadCols * kCols / kBlockN>(acc_s, args.scale_log2, correction);
    rP = convert_fragment<Element>(acc_s);
  };
  if (visible_end - n_block * kBlockN <= kBlockN / 2) {
    typename Traits::TiledMmaQKHalf mma_qk_half;
    first_key_tile(mma_qk_half, Int<kBlockN / 2>{});
  } else {
    first_key_tile(mma_qk, Int<kBlockN>{});
  }

  // Steady state: S[n] and O += P[n+1] V[n+1] in flight together; softmax of S[n] while P V runs.
  auto step = [&](int n, auto needs_mask) __attribute__((always_inline)) {
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kRowsPerConsumer>, Int<kBlockN>>{});
    Tensor tOrP = make_tensor(rP.data(), wgmma_acc_as_operand_a_layout(rP.layout()));
    pipeline_k.consumer_wait(state_k);
    ping_pong.wait_turn();
    warpgroup_gemm<true, -1, Traits::kWideDescriptorAdd>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s);
    if constexpr (!kRescaleOAfterPV) {
      softmax.rescale_o(acc_o, correction);  // the previous P V retired at the end of the last step
    }
    pipeline_v.consumer_wait(state_v);
    warpgroup_gemm<false, -1, Traits::kWideDescriptorAdd>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
    ping_pong.pass_turn();
    warpgroup_wait<1>();  // S[n] is done; P V may still run
    if constexpr (!kReleaseKAfterFirstTerms) {
      pipeline_k.consumer_release(state_k);
      ++state_k;
    }
    if constexpr (decltype(needs_mask)::value) {
      mask.apply(acc_s, tScS, row_offset, n * kBlockN);
    }
    if constexpr (kReleaseKAfterFirstTerms) {
      // An arrive predicated on the first exponentials' partial sum (never negative, NaN included, so it always
      // arrives): ptxas keeps it after them and does not hoist the wait for P V above an arrive, so that wait lands
      // about a third into the exponentials and O's rescale interleaves with the rest. Released right after S's wait,
      // where nothing holds it, the arrive and then the wait rose to the top of the softmax in single-CTA variants,
      // which waited for P V before their first exponential (SASS).
      softmax.template exponentiate<false>(acc_s, args.scale_log2, correction, [&](float partial_sum) {
        if (!(partial_sum < 0.f)) pipeline_k.consumer_release(state_k);
      });
      ++state_k;
    } else {
      softmax.template exponentiate<false>(acc_s, args.scale_log2, correction);
    }
    warpgroup_wait<0>();  // P V done: rP and V's stage are free
    pipeline_v.consumer_release(state_v);
    ++state_v;
    rP = convert_fragment<Element>(acc_s);
    if constexpr (kRescaleOAfterPV) softmax.rescale_o(acc_o, correction);
  };
  --n_block;
  CUTE_NO_UNROLL
  for (; n_block >= range.n_block_unmasked_end; --n_block) step(n_block, cute::true_type{});
  CUTE_NO_UNROLL
  for (; n_block >= 0; --n_block) step(n_block, cute::false_type{});

  release_q();  // every S GEMM of this tile has retired (the last step waited for all its GEMMs)

  // The last P V.
  {
    Tensor tOrP = make_tensor(rP.data(), wgmma_acc_as_operand_a_layout(rP.layout()));
    if constexpr (!kRescaleOAfterPV) softmax.rescale_o(acc_o, correction);
    pipeline_v.consumer_wait(state_v);
    ping_pong.wait_turn();
    warpgroup_gemm<false, 0, Traits::kWideDescriptorAdd>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
    ping_pong.pass_turn();
    pipeline_v.consumer_release(state_v);
    ++state_v;
  }
  softmax.finalize(acc_o, args.softmax_scale, lse);
}

}  // namespace flash
