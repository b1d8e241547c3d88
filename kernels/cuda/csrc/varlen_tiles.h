// The tile list of a packed variable-length batch (FwdParams::varlen_tiles), written by one CTA ahead of the SM90
// attention kernel on the same stream, so that the attention kernel's persistent CTAs draw only real tiles: with the
// longest sequence setting the grid, a batch of one 8k sequence and 64 of 128 tokens would otherwise hold 133k
// (sequence, head, tile) slots for 4k real tiles, each skipped slot a dependent global load on the producer.
//
// Order: sequence by sequence, the longest first where the batch has at most 1024 sequences (the short tiles then
// fill the dynamic deal's tail), else as packed; each sequence's heads in turn, each head's tiles with the longest
// rows first when causal, or, causal with >= 16 tiles per head, by sections of heads (the dense order:
// tile_scheduler.h, section_heads). Causal tiles end at the sequence's last query, so a partial tile is the first
// and shortest (tile_scheduler.h, the same rule as dense calls). The offsets in cu_seqlens are clamped into
// [0, total] and each end to at least its start, so no tile can address rows outside the tensors whatever they hold;
// entries past the list's capacity (possible only for offsets that break the caller's guarantee, as overlapping
// sequences) are dropped.
#pragma once

#include <cuda_runtime_api.h>

#include "params.h"
#include "tile_scheduler.h"

namespace flash {

constexpr int kVarlenListThreads = 1024;

__forceinline__ __device__ void sequence_bounds(const int* cu_seqlens, int b, int total, int& begin, int& length) {
  begin = min(max(cu_seqlens[b], 0), total);
  length = min(max(cu_seqlens[b + 1], begin), total) - begin;
}

template <int kBlockM, int kRowsPerConsumer, bool kCausal>
__global__ void __launch_bounds__(kVarlenListThreads, 1) varlen_tile_list_kernel(const FwdParams args) {
  constexpr int kWarps = kVarlenListThreads / 32;
  // Per slot of the chunk: its sequence, that sequence's tiles per head, and the tiles per head of every slot
  // listed before it (all chunks).
  __shared__ int sequence_of[kVarlenListThreads];
  __shared__ int tiles_of[kVarlenListThreads];
  __shared__ int first_of[kVarlenListThreads];
  __shared__ int warp_total[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const VarlenTileList list = args.varlen_tiles;
  // A batch that fits one chunk is listed longest sequence first, so that the short tiles fill the tail of the
  // dynamic deal; a larger one in its own order.
  const bool longest_first = args.batch <= kVarlenListThreads;
  long long before = 0;  // tiles per head of the chunks already listed
  for (int chunk = 0; chunk < args.batch; chunk += kVarlenListThreads) {
    int sequence = chunk + threadIdx.x;
    int tiles = 0;
    if (sequence < args.batch) {
      int begin, length;
      sequence_bounds(args.cu_seqlens_q, sequence, args.total_q, begin, length);
      tiles = (length + kBlockM - 1) / kBlockM;
    }
    if (longest_first) {  // slot = rank by tiles, descending, ties in batch order
      tiles_of[threadIdx.x] = tiles;
      __syncthreads();
      int rank = 0;
      for (int j = 0; j < args.batch; ++j) {
        const int other = tiles_of[j];
        rank += other > tiles || (other == tiles && j < sequence);
      }
      __syncthreads();
      if (sequence < args.batch) {
        sequence_of[rank] = sequence;
        tiles_of[rank] = tiles;
      } else {
        sequence_of[threadIdx.x] = sequence;  // past the batch: the slots past the ranks
        tiles_of[threadIdx.x] = 0;
      }
      __syncthreads();
      sequence = sequence_of[threadIdx.x];
      tiles = tiles_of[threadIdx.x];
    }
    // An exclusive scan of `tiles` over the chunk's slots: within each warp by shuffles, then over the warps' totals.
    int inclusive = tiles;
    for (int step = 1; step < 32; step *= 2) {
      const int from = __shfl_up_sync(0xffffffffu, inclusive, step);
      if (lane >= step) inclusive += from;
    }
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      int total = warp_total[lane];
      for (int step = 1; step < 32; step *= 2) {
        const int from = __shfl_up_sync(0xffffffffu, total, step);
        if (lane >= step) total += from;
      }
      warp_total[lane] = total;  // inclusive over the warps
    }
    __syncthreads();
    const int warp_before = warp == 0 ? 0 : warp_total[warp - 1];
    sequence_of[threadIdx.x] = sequence;
    tiles_of[threadIdx.x] = tiles;
    first_of[threadIdx.x] = static_cast<int>(before) + warp_before + inclusive - tiles;
    const int chunk_total = warp_total[kWarps - 1];
    __syncthreads();
    // One warp per slot writes its sequence's heads x tiles entries.
    for (int j = warp; j < kVarlenListThreads; j += kWarps) {
      const int tiles_per_head = tiles_of[j];
      if (tiles_per_head == 0) continue;
      VarlenTile entry;
      sequence_bounds(args.cu_seqlens_q, sequence_of[j], args.total_q, entry.q_offset, entry.seqlen_q);
      sequence_bounds(args.cu_seqlens_k, sequence_of[j], args.total_k, entry.k_offset, entry.seqlen_k);
      entry.unused = 0;
      const int spare_rows = (kBlockM - entry.seqlen_q % kBlockM) % kBlockM;
      const int row_shift = kCausal ? spare_rows / kRowsPerConsumer * kRowsPerConsumer : 0;
      const long long first = static_cast<long long>(first_of[j]) * args.heads_q;
      const int count = tiles_per_head * args.heads_q;
      const int sections = kCausal ? section_heads(args, entry.seqlen_k, tiles_per_head, args.heads_q) : 0;
      for (int i = lane; i < count; i += 32) {
        const long long index = first + i;
        if (index >= list.capacity) break;
        const TileInSequence tile = tile_in_sequence(i, tiles_per_head, args.heads_q, sections);
        const int m_block = kCausal ? tiles_per_head - 1 - tile.index : tile.index;
        const int first_row = m_block * kBlockM - row_shift;
        entry.head = tile.head;
        entry.first_row = max(first_row, 0);
        entry.end_row = first_row + kBlockM;
        list.tiles[index] = entry;
      }
    }
    before += chunk_total;
    __syncthreads();  // the slots are rewritten by the next chunk
  }
  if (threadIdx.x == 0) *list.num_tiles = static_cast<int>(min(before * args.heads_q, (long long)list.capacity));
}

template <int kBlockM, int kRowsPerConsumer, bool kCausal>
cudaError_t launch_varlen_tile_list(const FwdParams& args, cudaStream_t stream) {
  varlen_tile_list_kernel<kBlockM, kRowsPerConsumer, kCausal><<<1, kVarlenListThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace flash
