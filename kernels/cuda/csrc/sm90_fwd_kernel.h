// The SM90a FlashAttention forward kernel: one CTA per (query tile of kBlockM rows, batch * head), split into a
// producer warpgroup (TMA loads) and kBlockM / 64 consumer warpgroups (warpgroup MMAs and softmax), which meet on
// the mbarriers of two kStages-deep pipelines, one for K and one for V.
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

  const TileCoord tile = current_tile<kCausal>(args);
  if (!tile.valid) return;
  const int batch = tile.batch, head = tile.head, head_kv = tile.head_kv, m_block = tile.m_block;
  const int warp_group = cutlass::canonical_warp_group_idx();

  const KeyTileRange range = key_tile_range<kCausal, kBlockM, kBlockN>(m_block, args.seqlen_q, args.seqlen_k);
  if (range.n_block_max <= 0) {  // decided the same way by every thread of the CTA, before any barrier exists
    if (warp_group > 0) sm90_store_empty_rows<Traits>(args, warp_group - 1, batch, head, m_block);
    return;
  }

  // Barriers: Q's (one arrival: the producer's expect-tx), then the K and V pipelines, whose constructors
  // initialise them from warp 0.
  if (threadIdx.x == 0) storage.barrier_q.init(1);
  typename Pipeline::Params pipeline_params;
  pipeline_params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipeline_params.is_leader = threadIdx.x == 0;
  pipeline_params.num_consumers = Traits::kNumConsumers * cutlass::NumThreadsPerWarpGroup;
  pipeline_params.transaction_bytes = Traits::kKVTileBytes;
  Pipeline pipeline_k(storage.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(storage.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  __syncthreads();  // every barrier is initialised before anyone waits on it

  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
      sm90_load<Traits>(params, storage, pipeline_k, pipeline_v, batch, head, head_kv, m_block, range.n_block_max);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int consumer = warp_group - 1;
    typename Traits::TiledMmaPV mma_pv;
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kRowsPerConsumer>, Int<Traits::kHeadDim>>{});
    constexpr int kRows = decltype(size<0>(acc_rowcol_layout(acc_o.layout())))::value;
    float lse[kRows];
    sm90_mma<Traits, kCausal>(args, storage, pipeline_k, pipeline_v, acc_o, lse, consumer, m_block, range);
    sm90_store_output<Traits>(params, storage, acc_o, lse, consumer, batch, head, m_block);
  }
#endif
}

}  // namespace flash
