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
  // SM90 grid (tile_scheduler.h): one CTA per tile, or persistent (one CTA per SM walking the tile list) with the
  // tiles dealt round-robin (static) or drawn from tile_counter (dynamic). kAuto deals equal tiles statically and
  // draws unequal ones (causal, or a partial last tile per head); the kernel's tile height decides, so the launcher
  // resolves it.
  Sm90Schedule sm90_schedule;
  TileCounter* tile_counter;  // zero on entry, left zero by every kernel that draws from it (null: no dynamic deal)
  // SM90, head dim 128: pairs of CTAs that share each K/V tile (sm90_pairs_apply says where); false holds every call
  // to single CTAs (FLASH_ATTENTION_SM90_CLUSTER=off).
  bool sm90_allow_pairs;
};

}  // namespace flash
