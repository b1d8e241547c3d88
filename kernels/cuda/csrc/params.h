// The plain-old-data description of one forward call, shared by the torch binding and the kernels.
// No torch and no CuTe here: the binding fills it, the kernels read it.
#pragma once

#include <cstdint>

namespace flash {

using index_t = int64_t;  // every offset and stride is 64-bit: tensors past 2^31 elements work

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

enum class Sm90Schedule : int { kAuto = 0, kStatic = 1, kDynamic = 2, kPerTile = 3 };

// The dynamic deal's global state: draws so far, and CTAs done drawing. The last CTA to finish drawing resets both,
// so one counter serves every call on a stream without a zeroing launch before each (tile_scheduler.h).
struct TileCounter {
  unsigned int next;
  unsigned int finished;
};

// One query tile of a packed variable-length batch, as the tile-list kernel writes it (varlen_tiles.h): which
// head, which of its sequence's rows, and where the sequence lies in the packed tensors. Two 16-byte words.
struct VarlenTile {
  int head;       // query head
  int first_row;  // the tile's rows [first_row, end_row) of its sequence (end_row may pass seqlen_q)
  int end_row;
  int q_offset;   // the sequence's first packed query row, and its length
  int seqlen_q;
  int k_offset;   // the sequence's first packed key row, and its length
  int seqlen_k;
  int unused;
};

// A packed batch's tiles: written by the tile-list kernel ahead of the attention kernel on the same stream.
struct VarlenTileList {
  int* num_tiles;     // how many entries of `tiles` are real (at most `capacity`)
  VarlenTile* tiles;
  int capacity;
};

struct FwdParams {
  // Element pointers (fp16 or bf16) and strides in elements for batch / head / row; the last dim has unit stride.
  const void* __restrict__ q_ptr;
  const void* __restrict__ k_ptr;
  const void* __restrict__ v_ptr;
  void* __restrict__ o_ptr;
  float* __restrict__ lse_ptr;  // (batch, heads_q, seqlen_q), contiguous

  index_t q_batch_stride, q_head_stride, q_row_stride;
  index_t k_batch_stride, k_head_stride, k_row_stride;
  index_t v_batch_stride, v_head_stride, v_row_stride;
  index_t o_batch_stride, o_head_stride, o_row_stride;

  int batch;
  int heads_q;
  int heads_kv;
  int group;      // heads_q / heads_kv: query head h reads key/value head h / group (GQA index map, no repeat)
  int seqlen_q;
  int seqlen_k;
  int head_dim;   // the real head_dim (multiple of 8); the kernel's tile may be wider (padded with predication)

  float softmax_scale;       // natural-log scale on q.k
  float scale_log2;          // softmax_scale * log2(e): the kernel's exponentials are exp2
  bool causal;               // bottom-right aligned: query i sees key j iff j <= i + seqlen_k - seqlen_q

  int max_smem_per_block;    // the device's opt-in shared memory limit, used to pick a tile that fits
  int num_sms;               // multiprocessors: the size of a persistent grid
  long long l2_bytes;        // the device's L2 cache: how many heads' K/V a causal tile order keeps in it at once
  // SM90 grid (tile_scheduler.h): one CTA per tile, or persistent (one CTA per SM walking the tile list) with the
  // tiles dealt round-robin (static) or drawn from tile_counter (dynamic). kAuto deals equal tiles statically and
  // draws unequal ones (causal, or a partial last tile per head); the kernel's tile height decides, so the launcher
  // resolves it.
  Sm90Schedule sm90_schedule;
  TileCounter* tile_counter;  // zero on entry, left zero by every kernel that draws from it (null: no dynamic deal)
  // SM90, head dim 128: pairs of CTAs that share each K/V tile (sm90_pairs_apply says where); false holds every call
  // to single CTAs (the backend's sm90_cta_pairs=False).
  bool sm90_allow_pairs;

  // Packed variable-length batches (the varlen kernels; null for dense calls). q/k/v/o are then (total, heads, D)
  // tensors seen as one batch (batch strides unused), `batch` counts sequences, seqlen_q/seqlen_k are the caller's
  // max_seqlen bounds, LSE is (heads_q, total_q), and sequence b spans rows [cu_seqlens_q[b], cu_seqlens_q[b + 1]).
  // No offset is trusted: the tile-list kernel clamps each into [0, total] (no access can leave the tensors).
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  int total_q;
  int total_k;
  VarlenTileList varlen_tiles;
};

}  // namespace flash
