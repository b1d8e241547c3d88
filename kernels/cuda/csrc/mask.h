// Masking of one S = Q K^T tile. Only tiles that cross the causal diagonal or the key-sequence end call this; every
// other tile runs the unmasked path. Rule (bottom-right aligned): query i sees key j iff j < seqlen_k and, when
// causal, j <= i + seqlen_k - seqlen_q.
#pragma once

#include <cute/tensor.hpp>

#include "params.h"
#include "utils.h"

namespace flash {

using namespace cute;

// The end of the keys query row `row` sees, [0, end): the key-sequence end, and under causal the diagonal; counted
// from key `origin` (each term's own offset keeps the row-invariant parts apart: the SM80 d64 causal tile spilled
// 172 bytes more with the offset taken off the minimum).
template <bool kCausal>
__forceinline__ __device__ int visible_keys_end(int row, int seqlen_q, int seqlen_k, int origin = 0) {
  return kCausal ? min(seqlen_k - origin, row + seqlen_k - seqlen_q + 1 - origin) : seqlen_k - origin;
}

template <bool kCausal, typename TensorS, typename TensorC>
__forceinline__ __device__ void apply_mask(TensorS& acc_s, TensorC const& coord_s, int row_offset, int col_offset,
                                           int seqlen_q, int seqlen_k) {
  // coord_s holds the (row, col) inside the tile of each accumulator element owned by this thread. Row by row: the
  // keys a row sees end at min(seqlen_k, its diagonal + 1), counted from the thread's first column, so that each
  // value's column is a constant offset and its test one comparison with an immediate. Indices per value cost a
  // 128-key masked SM90 step 65 instructions more (676 in SASS against 611; the unmasked step is 472).
  Tensor s = make_tensor(acc_s.data(), acc_rowcol_layout(acc_s.layout()));
  Tensor coord = make_tensor(coord_s.data(), acc_rowcol_layout(coord_s.layout()));
  const int first_col = col_offset + get<1>(coord(0, 0));
  CUTE_UNROLL
  for (int r = 0; r < size<0>(s); ++r) {
    const int visible_end = visible_keys_end<kCausal>(row_offset + get<0>(coord(r, 0)), seqlen_q, seqlen_k, first_col);
    CUTE_UNROLL
    for (int c = 0; c < size<1>(s); ++c) {
      if (get<1>(coord(r, c)) - get<1>(coord(0, 0)) >= visible_end) s(r, c) = -INFINITY;
    }
  }
}

// The range of key tiles [0, n_block_max) that one query tile touches, and the first tile index from which on
// tiles need a mask (n >= n_block_unmasked_end). The loop runs n = n_block_max - 1 down to 0, so masked tiles come
// first and the steady state is mask-free.
struct KeyTileRange {
  int n_block_max;
  int n_block_unmasked_end;
};

// The key tiles of the query rows [first_row, end_row).
template <bool kCausal, int kBlockN>
__forceinline__ __device__ KeyTileRange key_tile_range_of_rows(int first_row, int end_row, int seqlen_q,
                                                               int seqlen_k) {
  const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
  const int full_blocks = seqlen_k / kBlockN;  // tiles with no key past seqlen_k
  if constexpr (!kCausal) {
    return {n_blocks, full_blocks};
  } else {
    const int diagonal_shift = seqlen_k - seqlen_q;
    const int last_row = min(end_row, seqlen_q) - 1;
    // Last key visible to the tile's last real row; < 0 means every row of the tile sees no key.
    const int last_col = last_row + diagonal_shift;
    const int n_block_max = last_col < 0 ? 0 : min(n_blocks, last_col / kBlockN + 1);
    // Tile n is visible to every row iff its last key (n+1)*kBlockN-1 <= first_row + diagonal_shift.
    const int first_visible = first_row + diagonal_shift + 1;
    const int unmasked = first_visible <= 0 ? 0 : min(full_blocks, first_visible / kBlockN);
    return {n_block_max, min(unmasked, n_block_max)};
  }
}

template <bool kCausal, int kBlockM, int kBlockN>
__forceinline__ __device__ KeyTileRange key_tile_range(int m_block, int seqlen_q, int seqlen_k) {
  return key_tile_range_of_rows<kCausal, kBlockN>(m_block * kBlockM, (m_block + 1) * kBlockM, seqlen_q, seqlen_k);
}

// The keys that some of a tile's query rows see: the key tiles [0, n_block_max) and the keys [0, visible_end).
struct RowKeys {
  int n_block_max;
  int visible_end;
};

// The mask of one sequence pair (query rows [0, seqlen_q), keys [0, seqlen_k)), as every part of the SM90 kernel asks
// it: which key tiles a tile's rows see and from which one on they need no mask (tiles_of_rows: the loops' trip
// counts), how far a warpgroup's share of those rows sees (keys_of_rows), and the -inf fill (apply). The lengths are
// the tile's Sequence's (tile_scheduler.h: TileSequence), read at each use: a dense call's stay kernel parameters,
// which instructions read from the constant bank, instead of taking registers for the whole tile.
template <bool kCausal, int kBlockN, typename Sequence>
struct KeyMask {
  const FwdParams& args;
  Sequence seq;

  __forceinline__ __device__ int seqlen_q() const { return seq.seqlen_q(args); }
  __forceinline__ __device__ int seqlen_k() const { return seq.seqlen_k(args); }

  __forceinline__ __device__ KeyTileRange tiles_of_rows(int first_row, int end_row) const {
    return key_tile_range_of_rows<kCausal, kBlockN>(first_row, end_row, seqlen_q(), seqlen_k());
  }

  // Rows [first_row, first_row + rows) of a tile whose rows end at end_row and see the key tiles `tile`: they may see
  // fewer (the upper rows of a tile taller than a key tile, rows past the end of the tile or of the queries, causal
  // rows that see no key). No rows, or rows that see no key: no tiles.
  __forceinline__ __device__ RowKeys keys_of_rows(int first_row, int rows, int end_row, const KeyTileRange& tile) const {
    const int last_row = min(first_row + rows, min(end_row, seqlen_q())) - 1;
    const int visible_end = visible_keys_end<kCausal>(last_row, seqlen_q(), seqlen_k());
    const int n_block_max =
        last_row < first_row || visible_end <= 0 ? 0 : min(tile.n_block_max, ceil_div(visible_end, kBlockN));
    return {n_block_max, visible_end};
  }

  // -inf where the rows from row_offset do not see the keys from col_offset (coord_s: see apply_mask).
  template <typename TensorS, typename TensorC>
  __forceinline__ __device__ void apply(TensorS& acc_s, TensorC const& coord_s, int row_offset, int col_offset) const {
    apply_mask<kCausal>(acc_s, coord_s, row_offset, col_offset, seqlen_q(), seqlen_k());
  }
};

}  // namespace flash
