// The SM90a FlashAttention forward kernel, assembled from its parts: a tile scheduler (tile_scheduler.h:
// Sm90TileStream, one CTA per tile or persistent with a static or a dynamic deal), the mainloop (sm90_mainloop.h:
// the producer's TMA loads into the K, V and Q pipelines, the consumers' warpgroup GEMMs and online softmax), the
// mask (mask.h: KeyMask) and the epilogue (sm90_epilogue.h). A CTA is a producer warpgroup and kBlockM / 64 consumer
// warpgroups, which meet on the mbarriers of the pipelines; pipeline states and barrier phases run on across a
// CTA's tiles, so the next tile's loads start while the current one finishes. kVarlen: the tiles of a packed
// variable-length batch, drawn from the list varlen_tiles.h writes.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "mask.h"
#include "params.h"
#include "sm90_epilogue.h"
#include "sm90_kernel_traits.h"
#include "sm90_mainloop.h"
#include "tile_scheduler.h"

namespace flash {

using namespace cute;

// What the kernel reads: the call's sizes and strides, and the TMA descriptors built on the host (they must live in
// kernel parameter space: the kernel takes this struct as a __grid_constant__).
template <typename TmaQ, typename TmaK, typename TmaV, typename TmaO>
struct Sm90FwdParams {
  FwdParams args;
  PersistentTileScheduler scheduler;
  TmaQ tma_q;
  TmaK tma_k;
  TmaV tma_v;
  TmaO tma_o;
};

template <typename Traits, bool kCausal, bool kVarlen, typename Params>
__global__ void __launch_bounds__(Traits::kNThreads, 1) flash_fwd_sm90_kernel(const __grid_constant__ Params params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;

  // Every role walks the same tiles (Sm90TileStream: the deal, and the hand-off of drawn tiles to the consumers).
  using TileStream = Sm90TileStream<kVarlen, Traits::kClusterM, SharedStorage>;

  extern __shared__ __align__(1024) char smem[];
  SharedStorage& storage = *reinterpret_cast<SharedStorage*>(smem);
  const FwdParams& args = params.args;
  const int warp_group = cutlass::canonical_warp_group_idx();

  // Barriers: Q full (one arrival: the producer's expect-tx) and Q empty (every consumer thread), the tile slots,
  // and the K and V pipelines' (from warp 0). Each role builds its pipeline objects after setmaxnreg, as values live
  // across it can spill.
  constexpr int kConsumerThreads = Traits::kNumConsumers * cutlass::NumThreadsPerWarpGroup;
  if (threadIdx.x == 0) {
    for (int stage = 0; stage < Traits::kQStages; ++stage) {
      storage.barrier_q[stage].init(1);
      storage.barrier_q_empty[stage].init(kConsumerThreads);
    }
    for (int slot = 0; slot < 2; ++slot) {
      storage.barrier_tile_full[slot].init(1);
      storage.barrier_tile_empty[slot].init(TileStream::slot_readers(kConsumerThreads));
    }
  }
  auto pipeline_params = [](bool producer) {
    typename Pipeline::Params pp;
    pp.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
    pp.is_leader = threadIdx.x == 0;
    pp.num_consumers = kConsumerThreads;
    pp.transaction_bytes = Traits::kKVTileBytes;
    return pp;
  };
  // A pair's empty barriers count the consumers of both CTAs (each consumer warpgroup arrives on both).
  using ClusterShape = typename Traits::ClusterShape;
  Pipeline::init_barriers(storage.pipeline_k, pipeline_params(true), ClusterShape{});
  Pipeline::init_barriers(storage.pipeline_v, pipeline_params(true), ClusterShape{});
  // Every barrier is initialised before anyone waits on it, or (a pair) before the other CTA arrives on it or
  // multicasts into it.
  if constexpr (Traits::kClusterM > 1) {
    cute::cluster_arrive_relaxed();
    cute::cluster_wait();
  } else {
    __syncthreads();
  }

  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    // Built by the whole warpgroup: the constructor runs warp-collective instructions (elect.sync, shfl.sync), which
    // lanes waiting elsewhere (the pair's final cluster barrier) would never join.
    Pipeline pipeline_k(storage.pipeline_k, pipeline_params(true), ClusterShape{}, cute::false_type{});
    Pipeline pipeline_v(storage.pipeline_v, pipeline_params(true), ClusterShape{}, cute::false_type{});
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
      TileStream tiles(params.scheduler, args, storage);
      typename Traits::PipelineState state = cutlass::make_producer_start_state<Pipeline>();
      Sm90QPipeline<Traits> q_pipeline(storage);
      Sm90ProducerPipelines<Traits> pipes{pipeline_k, pipeline_v, state, q_pipeline};
      for (;;) {
        const auto work = tiles.producer_take();
        if (tiles.done(work)) break;
        tiles.template visit<kCausal, kBlockM, kBlockN>(
            work, [&](const TileCoord& tile, const TileRows& rows, const KeyTileRange& range, auto seq) {
              // Tiles that load nothing leave the Q pipeline alone: the consumers pass them without waiting, so
              // they could complete an empty barrier's phase twice before the producer polls it, and a parity wait
              // would then miss the phase it wants.
              if (range.n_block_max > 0) {
                const int q_stage = q_pipeline.producer_acquire();
                sm90_load<Traits>(params, storage, pipes, tile, rows.first, range.n_block_max, q_stage, seq);
                q_pipeline.producer_advance();
              }
            });
        tiles.producer_advance(work);
      }
      tiles.producer_finish();
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int consumer = warp_group - 1;
    Pipeline pipeline_k(storage.pipeline_k, pipeline_params(false), ClusterShape{}, cute::false_type{});
    Pipeline pipeline_v(storage.pipeline_v, pipeline_params(false), ClusterShape{}, cute::false_type{});
    TileStream tiles(params.scheduler, args, storage);
    typename Traits::PipelineState state_k, state_v;
    Sm90PingPong<Traits::kNumConsumers> ping_pong(consumer);
    Sm90QPipeline<Traits> q_pipeline(storage);
    Sm90ConsumerPipelines<Traits> pipes{pipeline_k, pipeline_v, state_k, state_v, q_pipeline, ping_pong, consumer};
    ping_pong.start();
    for (;;) {
      const auto work = tiles.consumer_take();
      if (tiles.done(work)) break;
      tiles.template visit<kCausal, kBlockM, kBlockN>(
          work, [&](const TileCoord& tile, const TileRows& rows, const KeyTileRange& range, auto seq) {
            // This warpgroup's 64 rows. An end-aligned causal first tile holds fewer rows than its warpgroups cover:
            // the rows of the later ones are the next tile's, and those warpgroups store nothing.
            const int first_row = rows.first + consumer * Traits::kRowsPerConsumer;
            const bool has_rows = first_row < min(rows.end, seq.seqlen_q(args));
            if (range.n_block_max <= 0) {  // no Q load to wait for or release (straight to global memory)
              if (has_rows) sm90_store_empty_rows<Traits>(args, tile.batch, tile.head, first_row, seq);
              return;
            }
            const auto q = q_pipeline.consumer_acquire();
            typename Traits::TiledMmaPV mma_pv;
            Tensor acc_o =
                partition_fragment_C(mma_pv, Shape<Int<Traits::kRowsPerConsumer>, Int<Traits::kHeadDim>>{});
            constexpr int kRows = decltype(size<0>(acc_rowcol_layout(acc_o.layout())))::value;
            float lse[kRows];
            // Q is free once the last S GEMM retired, before the last P V, unless O is staged in Q's buffer.
            auto release_q = [&] {
              if constexpr (Traits::kSeparateO) q_pipeline.consumer_release(q);
            };
            const KeyMask<kCausal, kBlockN, decltype(seq)> mask{args, seq};
            sm90_mma<Traits, kCausal>(args, storage, pipes, q, first_row, rows.end, range, mask, acc_o, lse,
                                      release_q);
            q_pipeline.consumer_advance(q);
            if (has_rows) {
              sm90_store_output<Traits>(params, storage, acc_o, lse, consumer, tile.batch, tile.head, first_row, seq);
            }
            if constexpr (!Traits::kSeparateO) q_pipeline.consumer_release(q);  // the store read O out of Q
          });
      tiles.consumer_advance();
    }
    ping_pong.finish();
    sm90_wait_output_stores();
  }
  if constexpr (Traits::kClusterM > 1) {
    // The other CTA's consumers may still arrive on this CTA's empty barriers: neither CTA exits before both are
    // done.
    __syncwarp();
    cute::cluster_arrive();
    cute::cluster_wait();
  }
#endif
}

}  // namespace flash
