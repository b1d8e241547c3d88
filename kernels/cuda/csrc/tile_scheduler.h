// Which tile a CTA computes, written once for both kernel families: the host's grid and the device's decoding of
// it live side by side so they cannot drift apart. SM80: one CTA per tile (fwd_grid, current_tile). SM90: a
// persistent grid walking a static tile order (PersistentTileScheduler).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>

#include "params.h"

namespace flash {

// x: query tiles (limit 2^31 - 1). batch * heads is folded over y (< 65,536) and z, and CTAs past the end exit, so
// 100k (or 4 billion) batch * heads needs no second launch.
inline dim3 fwd_grid(const FwdParams& params, int block_m) {
  const long long num_m_blocks = (params.seqlen_q + block_m - 1) / block_m;
  const long long bh = static_cast<long long>(params.batch) * params.heads_q;
  const unsigned grid_y = static_cast<unsigned>(bh < 65535 ? bh : 65535);
  const unsigned grid_z = static_cast<unsigned>((bh + grid_y - 1) / grid_y);
  return dim3(static_cast<unsigned>(num_m_blocks), grid_y, grid_z);
}

struct TileCoord {
  bool valid;   // false for the CTAs past batch * heads that the folded grid rounds up to
  index_t bh;   // batch * heads_q + head: the row of the (batch * heads_q, seqlen_q) LSE
  int batch;
  int head;
  int head_kv;  // GQA: query head h reads key/value head h / group
  int m_block;
};

// Causal grids run the longest rows (the last query tiles) first, to shorten the tail.
template <bool kCausal>
__forceinline__ __device__ TileCoord current_tile(const FwdParams& params) {
  const index_t bh = index_t(blockIdx.z) * gridDim.y + blockIdx.y;
  TileCoord tile;
  tile.valid = bh < index_t(params.batch) * params.heads_q;
  tile.bh = bh;
  tile.batch = int(bh / params.heads_q);
  tile.head = int(bh % params.heads_q);
  tile.head_kv = tile.head / params.group;
  tile.m_block = kCausal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  return tile;
}

// SM90: at most one CTA per SM, each taking tiles blockIdx.x, blockIdx.x + gridDim.x, ... of one static order, so
// that a CTA's next Q and K/V loads overlap its current tile's last GEMM and epilogue (no per-tile launch, prologue
// or barrier set-up). The order: heads in groups whose K and V fit in half the L2 (every tile of a group reads
// its K/V from L2 after the first), and inside a group the last query tiles first (for causal the longest, so the
// short ones fill the tail), then heads. Consecutive tiles of a round run at once on different SMs.
struct PersistentTileScheduler {
  index_t num_tiles;
  index_t num_heads;    // batch * heads_q
  int num_m_blocks;
  int heads_per_group;
};

inline PersistentTileScheduler make_persistent_scheduler(const FwdParams& params, int block_m, int element_bytes) {
  PersistentTileScheduler s;
  s.num_m_blocks = (params.seqlen_q + block_m - 1) / block_m;
  s.num_heads = index_t(params.batch) * params.heads_q;
  s.num_tiles = s.num_heads * s.num_m_blocks;
  const index_t kv_bytes_per_head = index_t(2) * params.seqlen_k * params.head_dim * element_bytes;
  const index_t budget = params.l2_cache_bytes > 0 ? params.l2_cache_bytes / 2 : (index_t(16) << 20);
  const index_t heads = std::max<index_t>(1, std::min(budget / kv_bytes_per_head, s.num_heads));
  s.heads_per_group = int(std::min<index_t>(heads, index_t(1) << 30));
  return s;
}

// One CTA per SM (fewer if there are fewer tiles); `persistent` false gives one CTA per tile in the same order.
inline dim3 persistent_grid(const PersistentTileScheduler& s, const FwdParams& params, bool persistent) {
  const index_t cap = persistent ? (params.num_sms > 0 ? params.num_sms : 1) : index_t(0x7fffffff);
  return dim3(static_cast<unsigned>(s.num_tiles < cap ? s.num_tiles : cap));
}

__forceinline__ __device__ TileCoord persistent_tile(const PersistentTileScheduler& s, const FwdParams& params,
                                                     index_t t) {
  const index_t tiles_per_group = index_t(s.heads_per_group) * s.num_m_blocks;
  const index_t group = t / tiles_per_group;
  const index_t r = t - group * tiles_per_group;
  const index_t first_head = group * s.heads_per_group;
  const index_t heads_here = min(index_t(s.heads_per_group), s.num_heads - first_head);
  TileCoord tile;
  tile.valid = true;
  tile.m_block = s.num_m_blocks - 1 - int(r / heads_here);
  tile.bh = first_head + r % heads_here;
  tile.batch = int(tile.bh / params.heads_q);
  tile.head = int(tile.bh % params.heads_q);
  tile.head_kv = tile.head / params.group;
  return tile;
}

}  // namespace flash
