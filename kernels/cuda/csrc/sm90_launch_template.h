// Host side of one SM90a instantiation: TMA descriptors over the caller's strides, the grid and the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <cute/tensor.hpp>

#include <algorithm>
#include <type_traits>

#include "fwd_launch_api.h"
#include "launch_utils.h"
#include "params.h"
#include "sm90_fwd_kernel.h"
#include "sm90_kernel_traits.h"
#include "varlen_tiles.h"

namespace flash {

// (rows, head_dim, heads, batches) view of one operand for a TMA descriptor. The binding zeroes the strides of
// size-1 dims; a descriptor wants every stride a positive multiple of 16 bytes, so those get the stride a packed
// tensor would have (never used to address anything: their only index is 0).
template <typename Element>
auto tma_gmem_view(const void* ptr, const FwdParams& args, int rows, int heads, int batches, index_t row_stride,
                   index_t head_stride, index_t batch_stride) {
  if (rows == 1) row_stride = (args.head_dim + 7) / 8 * 8;
  if (heads == 1) head_stride = row_stride * rows;
  if (batches == 1) batch_stride = head_stride * heads;
  return make_tensor(make_gmem_ptr(reinterpret_cast<Element*>(const_cast<void*>(ptr))),
                     make_shape(rows, args.head_dim, heads, batches),
                     make_stride(row_stride, _1{}, head_stride, batch_stride));
}

// kVarlen: a packed variable-length batch (FwdParams::cu_seqlens_q set), whose tensors are one batch of total rows
// and whose tiles come from the list launch_varlen_tile_list writes first, on the same stream.
template <typename Traits, bool kCausal, bool kVarlen = false>
cudaError_t launch_fwd_sm90(const FwdParams& args, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using TileQ = Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>;
  using TileKV = Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>;
  using TileO = Shape<Int<Traits::kRowsPerConsumer>, Int<Traits::kHeadDim>>;

  const int rows_q = kVarlen ? args.total_q : args.seqlen_q, rows_k = kVarlen ? args.total_k : args.seqlen_k;
  const int batches = kVarlen ? 1 : args.batch;
  auto q = tma_gmem_view<Element>(args.q_ptr, args, rows_q, args.heads_q, batches, args.q_row_stride,
                                  args.q_head_stride, args.q_batch_stride);
  auto k = tma_gmem_view<Element>(args.k_ptr, args, rows_k, args.heads_kv, batches, args.k_row_stride,
                                  args.k_head_stride, args.k_batch_stride);
  auto v = tma_gmem_view<Element>(args.v_ptr, args, rows_k, args.heads_kv, batches, args.v_row_stride,
                                  args.v_head_stride, args.v_batch_stride);
  auto o = tma_gmem_view<Element>(args.o_ptr, args, rows_q, args.heads_q, batches, args.o_row_stride,
                                  args.o_head_stride, args.o_batch_stride);
  auto tma_q = make_tma_copy(SM90_TMA_LOAD{}, q, typename Traits::SmemLayoutQ{}, TileQ{}, _1{});
  constexpr int kClusterM = Traits::kClusterM;
  using TmaLoadKV = std::conditional_t<kClusterM == 1, SM90_TMA_LOAD, SM90_TMA_LOAD_MULTICAST>;
  auto tma_k = make_tma_copy(TmaLoadKV{}, k, take<0, 2>(typename Traits::SmemLayoutK{}), TileKV{}, Int<kClusterM>{});
  auto tma_v = make_tma_copy(TmaLoadKV{}, v, take<0, 2>(typename Traits::SmemLayoutV{}), TileKV{}, Int<kClusterM>{});
  auto tma_o = make_tma_copy(SM90_TMA_STORE{}, o, typename Traits::SmemLayoutO{}, TileO{}, _1{});
  using Params = Sm90FwdParams<decltype(tma_q), decltype(tma_k), decltype(tma_v), decltype(tma_o)>;
  PersistentTileScheduler scheduler;
  const bool scheduled = kVarlen ? make_varlen_scheduler(args, scheduler)
                                 : make_persistent_scheduler(args, Traits::kBlockM, Traits::kRowsPerConsumer,
                                                             scheduler);
  if (!scheduled) return cudaErrorInvalidConfiguration;
  const Params params{args, scheduler, tma_q, tma_k, tma_v, tma_o};

  constexpr auto kernel = &flash_fwd_sm90_kernel<Traits, kCausal, kVarlen, Params>;
  cudaError_t err = opt_in_shared_memory<kernel>(Traits::kSmemSize);
  if (err != cudaSuccess) return err;
  if constexpr (kVarlen) {
    err = launch_varlen_tile_list<Traits::kBlockM, Traits::kRowsPerConsumer, kCausal>(args, stream);
    if (err != cudaSuccess) return err;
  }
  if constexpr (kClusterM == 1) {
    const dim3 grid = persistent_grid(scheduler, args);
    kernel<<<grid, Traits::kNThreads, Traits::kSmemSize, stream>>>(params);
    return cudaGetLastError();
  } else {
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = kClusterM;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    config.blockDim = dim3(Traits::kNThreads);
    config.dynamicSmemBytes = Traits::kSmemSize;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
    // A persistent grid of pairs: as many as can be resident at once (a pair needs two free SMs of one GPC).
    int clusters = 0;
    config.gridDim = dim3(kClusterM);
    err = max_active_clusters<kernel>(config, clusters);
    if (err != cudaSuccess) return err;
    if (clusters <= 0) return cudaErrorInvalidConfiguration;
    const int cap = scheduler.persistent ? clusters * kClusterM : kMaxGridX;
    config.gridDim = dim3(static_cast<unsigned>(std::min(scheduler.num_tiles, cap)));
    return cudaLaunchKernelEx(&config, kernel, params);
  }
}

}  // namespace flash
