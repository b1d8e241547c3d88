// The SM90a FlashAttention forward kernel: a grid (one CTA per tile, or persistent with a static or a dynamic deal)
// walking a list of tiles (PersistentTileScheduler). A CTA is a producer warpgroup (TMA loads) and kBlockM / 64
// consumer warpgroups (warpgroup MMAs and softmax), which meet on the mbarriers of two kStages-deep pipelines, one
// for K and one for V, and on a full/empty pair per Q buffer; pipeline states and barrier phases run on across a
// CTA's tiles, so the next tile's loads start while the current one finishes. kVarlen: the tiles of a packed
// variable-length batch, drawn from the list varlen_tiles.h writes (the producer passes each entry on).
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
      storage.barrier_tile_empty[slot].init(kConsumerThreads);
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

  // Every role walks the same tiles in the same order and skips the same empty ones (causal rows that see no key),
  // so the K/V/Q barrier phases agree. With a static deal each role computes the order itself; with a dynamic one
  // the producer draws each next tile and passes it on: the i-th tile goes through slot i % 2, whose full barrier
  // completes for the i/2-th time when it is written and whose empty barrier when every consumer has read it. The
  // index past the end is passed on too: it stops the consumers. A packed batch's tiles are entries of its list
  // (their count is known only here, on the device), and the producer passes each entry on with its index.
  static_assert(!kVarlen || Traits::kClusterM == 1, "a packed batch's tiles are drawn one CTA at a time");
  auto tile_count = [&] { return kVarlen ? *args.varlen_tiles.num_tiles : params.scheduler.num_tiles; };
  auto run_tile = [&](int t, auto&& body) {
    const TileCoord tile = persistent_tile<kCausal>(params.scheduler, args, t);
    const TileRows rows = tile_rows(params.scheduler, tile.m_block, kBlockM);
    body(tile, rows, key_tile_range_of_rows<kCausal, kBlockN>(rows.first, rows.end, args.seqlen_q, args.seqlen_k),
         TileSequence<false>{});
  };
  auto run_varlen_tile = [&](const VarlenTile& entry, auto&& body) {
    const TileSequence<true> seq{entry.q_offset, entry.seqlen_q, entry.k_offset, entry.seqlen_k};
    const TileRows rows{entry.first_row, entry.end_row};
    body(varlen_tile_coord(args, entry), rows,
         key_tile_range_of_rows<kCausal, kBlockN>(rows.first, rows.end, seq.q_len, seq.k_len), seq);
  };

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
      const bool dynamic = kVarlen || (Traits::kClusterM == 1 && params.scheduler.counter != nullptr);
      const int num_tiles = tile_count();
      typename Traits::PipelineState state = cutlass::make_producer_start_state<Pipeline>();
      int t = blockIdx.x;
      int loads = 0;  // tiles loaded so far (tiles whose rows see no key load nothing)
      // Waits on an "empty" barrier use the parity of the use before (a fresh barrier counts its phase -1 as done),
      // so the first uses pass at once without a branch: the producer has 24 registers.
      for (int i = 0;; ++i) {
        VarlenTile entry{};
        if (dynamic) {
          const int slot = i & 1;
          if constexpr (kVarlen) {
            if (t < num_tiles) entry = args.varlen_tiles.tiles[t];
          }
          storage.barrier_tile_empty[slot].wait(((i >> 1) & 1) ^ 1);  // the index it held before was read
          storage.tile_slot[slot] = t;
          if constexpr (kVarlen) storage.varlen_slot[slot] = entry;
          storage.barrier_tile_full[slot].arrive();
        }
        if (t >= num_tiles) break;
        auto load_tile = [&](const TileCoord& tile, const TileRows& rows, const KeyTileRange& range, auto seq) {
          if (range.n_block_max > 0) {
            // The load's Q buffer must have been released by its previous load. Tiles that load nothing leave the
            // Q barriers alone: the consumers pass them without waiting, so they could complete an empty barrier's
            // phase twice before the producer polls it, and a parity wait would then miss the phase it wants.
            const int q_stage = Traits::q_stage(loads);
            storage.barrier_q_empty[q_stage].wait((Traits::q_use(loads) & 1) ^ 1);
            sm90_load<Traits>(params, storage, pipeline_k, pipeline_v, state, tile, rows.first, range.n_block_max,
                              q_stage, seq);
            ++loads;
          }
        };
        if constexpr (kVarlen) {
          run_varlen_tile(entry, load_tile);
        } else {
          run_tile(t, load_tile);
        }
        t = next_tile(params.scheduler, t);
      }
      if (dynamic) finish_draws(params.scheduler.counter);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int consumer = warp_group - 1;
    Pipeline pipeline_k(storage.pipeline_k, pipeline_params(false), ClusterShape{}, cute::false_type{});
    Pipeline pipeline_v(storage.pipeline_v, pipeline_params(false), ClusterShape{}, cute::false_type{});
    const bool dynamic = kVarlen || (Traits::kClusterM == 1 && params.scheduler.counter != nullptr);
    const int num_tiles = tile_count();
    typename Traits::PipelineState state_k, state_v;
    Sm90PingPong<Traits::kNumConsumers> ping_pong(consumer);
    int q_phases = 0;  // bit s: the phase that Q buffer s's next load completes
    int loads = 0;     // tiles loaded so far, as the producer counts them (empty tiles load nothing)
    ping_pong.start();
    int t = blockIdx.x;
    for (int i = 0;; ++i) {
      VarlenTile entry{};
      if (dynamic) {
        const int slot = i & 1;
        storage.barrier_tile_full[slot].wait((i >> 1) & 1);
        t = storage.tile_slot[slot];
        if constexpr (kVarlen) entry = storage.varlen_slot[slot];
        storage.barrier_tile_empty[slot].arrive();
      }
      if (t >= num_tiles) break;
      auto compute_tile = [&](const TileCoord& tile, const TileRows& rows, const KeyTileRange& range, auto seq) {
        // This warpgroup's 64 rows. An end-aligned causal first tile holds fewer rows than its warpgroups cover: the
        // rows of the later ones are the next tile's, and those warpgroups store nothing.
        const int first_row = rows.first + consumer * Traits::kRowsPerConsumer;
        const bool has_rows = first_row < min(rows.end, seq.seqlen_q(args));
        if (range.n_block_max <= 0) {  // no Q load to wait for or release (straight to global memory)
          if (has_rows) sm90_store_empty_rows<Traits>(args, tile.batch, tile.head, first_row, seq);
          return;
        }
        const int q_stage = Traits::q_stage(loads++);
        typename Traits::TiledMmaPV mma_pv;
        Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kRowsPerConsumer>, Int<Traits::kHeadDim>>{});
        constexpr int kRows = decltype(size<0>(acc_rowcol_layout(acc_o.layout())))::value;
        float lse[kRows];
        // Q is free once the last S GEMM retired, before the last P V, unless O is staged in Q's buffer.
        auto release_q = [&] {
          if constexpr (Traits::kSeparateO) storage.barrier_q_empty[q_stage].arrive();
        };
        sm90_mma<Traits, kCausal>(args, storage, pipeline_k, pipeline_v, state_k, state_v, q_stage,
                                  (q_phases >> q_stage) & 1, ping_pong, acc_o, lse, consumer, first_row, rows.end,
                                  range, seq, release_q);
        q_phases ^= 1 << q_stage;
        if (has_rows) {
          sm90_store_output<Traits>(params, storage, acc_o, lse, consumer, tile.batch, tile.head, first_row, seq);
        }
        if constexpr (!Traits::kSeparateO) storage.barrier_q_empty[q_stage].arrive();  // the store read O out of Q
      };
      if constexpr (kVarlen) {
        run_varlen_tile(entry, compute_tile);
      } else {
        run_tile(t, compute_tile);
      }
      if (!dynamic) t += grid_size();
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
