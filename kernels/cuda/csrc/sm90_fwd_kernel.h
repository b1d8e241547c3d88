// The SM90a FlashAttention forward kernel: a grid, persistent where tiles are equal, walking a list of tiles
// (PersistentTileScheduler). A CTA is a producer warpgroup (TMA loads) and kBlockM / 64 consumer warpgroups (warpgroup
// MMAs and softmax), which meet on the mbarriers of two kStages-deep pipelines, one for K and one for V, and on a
// full/empty pair for Q; pipeline states and barrier phases run on across a CTA's tiles, so the next tile's loads
// start while the current one finishes.
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

template <typename Traits, bool kCausal, typename Params>
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

  // Barriers: Q full (one arrival: the producer's expect-tx) and Q empty (every consumer thread), then the K and V
  // pipelines, whose constructors initialise theirs from warp 0.
  if (threadIdx.x == 0) {
    storage.barrier_q.init(1);
    storage.barrier_q_empty.init(Traits::kNumConsumers * cutlass::NumThreadsPerWarpGroup);
  }
  typename Pipeline::Params pipeline_params;
  pipeline_params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipeline_params.is_leader = threadIdx.x == 0;
  pipeline_params.num_consumers = Traits::kNumConsumers * cutlass::NumThreadsPerWarpGroup;
  pipeline_params.transaction_bytes = Traits::kKVTileBytes;
  Pipeline pipeline_k(storage.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(storage.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  __syncthreads();  // every barrier is initialised before anyone waits on it

  // Every role walks the same tiles in the same order and skips the same empty ones (causal rows that see no key),
  // so the barrier phases agree without any other communication.
  auto for_each_tile = [&](auto&& body) {
    for (index_t t = blockIdx.x; t < params.scheduler.num_tiles; t += gridDim.x) {
      const TileCoord tile = persistent_tile<kCausal>(params.scheduler, args, t);
      const KeyTileRange range =
          key_tile_range<kCausal, kBlockM, kBlockN>(tile.m_block, args.seqlen_q, args.seqlen_k);
      body(tile, range);
    }
  };

  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
      typename Traits::PipelineState state = cutlass::make_producer_start_state<Pipeline>();
      int q_loads = 0;
      for_each_tile([&](const TileCoord& tile, const KeyTileRange& range) {
        if (range.n_block_max <= 0) return;
        if (q_loads > 0) storage.barrier_q_empty.wait((q_loads - 1) & 1);  // the consumers released the last Q
        sm90_load<Traits>(params, storage, pipeline_k, pipeline_v, state, tile, range.n_block_max);
        ++q_loads;
      });
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int consumer = warp_group - 1;
    typename Traits::PipelineState state_k, state_v;
    Sm90PingPong<Traits::kNumConsumers == 2> ping_pong(consumer);
    int q_phase = 0;
    ping_pong.start();
    for_each_tile([&](const TileCoord& tile, const KeyTileRange& range) {
      if (range.n_block_max <= 0) {
        sm90_store_empty_rows<Traits>(args, consumer, tile.batch, tile.head, tile.m_block);
        return;
      }
      typename Traits::TiledMmaPV mma_pv;
      Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kRowsPerConsumer>, Int<Traits::kHeadDim>>{});
      constexpr int kRows = decltype(size<0>(acc_rowcol_layout(acc_o.layout())))::value;
      float lse[kRows];
      // Q is free once the last S GEMM retired, before the last P V, unless O is staged in Q's buffer.
      auto release_q = [&] {
        if constexpr (Traits::kSeparateO) storage.barrier_q_empty.arrive();
      };
      sm90_mma<Traits, kCausal>(args, storage, pipeline_k, pipeline_v, state_k, state_v, q_phase, ping_pong, acc_o,
                                lse, consumer, tile.m_block, range, release_q);
      q_phase ^= 1;
      sm90_store_output<Traits>(params, storage, acc_o, lse, consumer, tile.batch, tile.head, tile.m_block);
      if constexpr (!Traits::kSeparateO) storage.barrier_q_empty.arrive();  // after the store read O out of Q
    });
    ping_pong.finish();
    sm90_wait_output_stores();
  }
#endif
}

}  // namespace flash
