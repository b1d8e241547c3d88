// Which tile a CTA computes, written once for both kernel families: the host's grid (fwd_grid) and the device's
// decoding of blockIdx (current_tile) live side by side so they cannot drift apart.
#pragma once

#include <cuda_runtime_api.h>

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

}  // namespace flash
