// Decode-shaped attention: a few query rows against a long KV cache, contiguous or paged (decode_params.h).
//
// One CTA of four or eight warps (CtaChoice) per (batch, K/V head, 16 or 32 packed rows, key split). The query
// heads of a GQA group and the query rows are packed into the rows of one or two MMA tiles (row r: query row
// r / group of head kv_head * group + r % group), so each K/V tile is read once per group. Each warp streams its own
// 16-key tiles (tiles warp, warp + kWarps, ... of the split) through a private cp.async pipeline and keeps its own
// online softmax; the warps' states merge through shared memory at the end. No block-wide barrier inside the loop: a
// warp waits only for its own copies. Matrix work is mma.sync m16n8k16 (fp32 accumulation) with ldmatrix operands,
// which every SM80+ GPU runs; decode moves bytes, so the tensor cores are far from the limit.
//
// Keys are addressed row by row: a page index per 16-key tile where pages of a power-of-two size hold whole tiles,
// else per key. Lengths and page indices come from device tensors the host never reads; lengths are clamped to the
// capacity and page indices into the cache, so no access leaves it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "decode_params.h"
#include "launch_utils.h"

namespace flash {
namespace decode {

constexpr int kCombineThreads = 128;
constexpr int kCombineRowsPerBlock = kCombineThreads / 32;  // a warp per output row
constexpr int kBlockN = 16;  // keys per warp tile
constexpr int kMaxSplits = 128;  // flash_attention._validation.MAX_NUM_SPLITS
constexpr float kLn2 = 0.6931471805599453f;

// The CTA shapes a decode call may launch; flash_attention.cuda's decode_launch picks one per call (and passes it in
// DecodeParams::cta_warps, cta_rows) from the widths its decode_ctas lists for the head dim, which mirror these.
// - Warps: each warp streams its own tiles, so a CTA streams as fast as its warps hide each other's dependency stalls
//   (four warps alone, one per scheduler, left them exposed: 3.9-4.1 TB/s on an H200 whatever the pipeline depth;
//   results/NOTES.md, decode v2-v5). Wide CTAs (eight warps; four at head dim 256, whose tiles are twice the bytes)
//   take most of an SM's shared memory, one to an SM: for calls whose few CTAs each stream long (batch 4 x 8 K/V
//   heads unsplit). Narrow CTAs (four warps, half the memory) go two to an SM, so that one CTA's prologue and merge
//   overlap the other's stream, and their warps' merge is half as wide: 1.02-1.04x wide ones on calls split or
//   batched to fill the GPU (results/NOTES.md, "Narrow decode CTAs"). Head dim 256 has one shape.
// - Stages: 16-key stages per warp. Wide CTAs take the deepest pipeline that fits the GPU's shared memory
//   (kDeepStages for 227 KiB a block: Hopper, else kShallowStages for 164 KiB: A100); narrow ones fit both.
// - Rows: one 16-row MMA tile, or two where more rows share a K/V head and the call is not split (64/8 heads with 4
//   query rows: 32 rows), so that each K/V tile is read once for all of them and the grid holds half the CTAs.
//   Measured on an H100 (results/NOTES.md, "Two row tiles in a decode CTA"): 32-row CTAs 1.015-1.045x 16-row ones
//   at batch 16, where the 16-row grid took two waves; 0.90-0.96x at batch 1, where the keys are split to fill the
//   GPU and the 16-row CTAs' second K/V read comes from L2. Head dim 256 keeps one tile: a second would double its
//   128 accumulator registers a thread.
template <int kHeadDim>
struct CtaChoice {
  static constexpr int kWideWarps = kHeadDim == 256 ? 4 : 8;
  static constexpr bool kHasNarrow = kHeadDim <= 128;
  static constexpr int kNarrowWarps = 4;
  static constexpr int kDeepStages = kHeadDim == 64 ? 5 : 3;
  static constexpr int kShallowStages = kHeadDim == 64 ? 4 : 2;
  static constexpr int kNarrowStages = kDeepStages;  // half the warps: the deep pipeline in half the memory
  static constexpr int kMaxRows = kHeadDim <= 128 ? 32 : 16;
};

template <DType kDType, int kHeadDim, int kStages_, int kRows_, int kWarps_>
struct Traits {
  static_assert(kHeadDim % 16 == 0 && kHeadDim <= 256, "head dims 64, 128, 256 are instantiated");
  static_assert(kRows_ == 16 || kRows_ == 32, "one or two 16-row MMA tiles");
  static constexpr int kRows = kRows_;
  static constexpr int kMTiles = kRows / 16;
  static constexpr int kStages = kStages_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  // Q's rows are padded by 16 bytes: the 8 rows an ldmatrix reads land in 8 different 4-bank groups.
  static constexpr int kRowPitch = kHeadDim + 8;
  static constexpr int kQElems = kRows * kRowPitch;
  // K and V tiles are unpadded and swizzled instead (kv_tile_offset): with padded rows a warp's 512-byte copy asked
  // L2 for 24 sectors instead of 16, and the kernel streamed at 83% of DRAM peak instead of 91% (results/NOTES.md,
  // CUDA decode v6).
  static constexpr int kTileElems = kBlockN * kHeadDim;
  static_assert(kHeadDim >= 64, "the swizzle permutes 8 16-byte chunks of a row");
  static constexpr int kWarpElems = kStages * 2 * kTileElems;  // K and V per stage
  static constexpr int kSmemBytes = (kQElems + kWarps * kWarpElems) * 2;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  // After the loop the same memory holds each warp's O (kRows x kHeadDim floats), max and sum.
  static constexpr int kMergeBytes = (kWarps * kRows * kHeadDim + 2 * kWarps * kRows) * 4;
  static_assert(kMergeBytes <= kSmemBytes, "the merge buffer reuses the pipeline's shared memory");
  using Element = std::conditional_t<kDType == DType::kFloat16, __half, __nv_bfloat16>;
};

// ------------------------------------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void cp_async_16(uint32_t destination, const void* source, bool valid) {
  // src-size 0 writes 16 zero bytes and reads nothing.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(source),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// c += a * b for one m16n8k16 tile: a row-major (4 registers), b column-major (2), c fp32 (4).
template <DType kDType>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kDType == DType::kFloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <DType kDType>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  if constexpr (kDType == DType::kFloat16) {
    __half2 pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t*>(&pair);
  } else {
    __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<uint32_t*>(&pair);
  }
}

template <DType kDType>
__device__ __forceinline__ uint4 pack_eight(const float* values) {
  uint4 packed;
  packed.x = pack_pair<kDType>(values[0], values[1]);
  packed.y = pack_pair<kDType>(values[2], values[3]);
  packed.z = pack_pair<kDType>(values[4], values[5]);
  packed.w = pack_pair<kDType>(values[6], values[7]);
  return packed;
}

__device__ __forceinline__ float quad_max(float value) {
  value = fmaxf(value, __shfl_xor_sync(0xffffffff, value, 1));
  return fmaxf(value, __shfl_xor_sync(0xffffffff, value, 2));
}

__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffff, value, 1);
  return value + __shfl_xor_sync(0xffffffff, value, 2);
}

// ------------------------------------------------------------------------------------------------ the work
// Which keys a CTA's kRows rows see, and which of them its split covers.
template <int kRows>
struct DecodeWork {
  int batch, kv_head, first_row, split;
  int length;     // keys of the sequence after the append, clamped to the capacity
  int tile_begin, tile_end;  // the split's 16-key tiles
  int key_end;    // keys at or past this are not this split's (or no row of the block sees them)

  // The CTA's rows and split, from its block index.
  __device__ explicit DecodeWork(const DecodeParams& p) {
    const int packed_rows = p.group * p.seqlen_q;
    const int row_blocks = (packed_rows + kRows - 1) / kRows;
    first_row = (blockIdx.x % row_blocks) * kRows;
    kv_head = (blockIdx.x / row_blocks) % p.heads_kv;
    batch = blockIdx.x / (row_blocks * p.heads_kv);
    split = blockIdx.y;
  }

  // The keys they see: reads the sequence's length, a global load whose latency the CTA's first copies share.
  __device__ void find_keys(const DecodeParams& p) {
    const int packed_rows = p.group * p.seqlen_q;
    length = p.capacity;
    if (p.seqlens_ptr != nullptr) {
      const long long keys = static_cast<long long>(p.seqlens_ptr[batch]) + p.seqlen_new;
      length = static_cast<int>(keys < 0 ? 0 : (keys > p.capacity ? p.capacity : keys));
    }
    int block_limit = length;  // one past the last key any row of the block sees
    if (p.causal) {
      const int last_row = min(first_row + kRows, packed_rows) - 1;
      block_limit = row_limit(p, last_row / p.group);
    }
    const int tiles = (block_limit + kBlockN - 1) / kBlockN;
    const int tiles_per_split = (tiles + p.num_splits - 1) / p.num_splits;
    tile_begin = min(split * tiles_per_split, tiles);
    tile_end = min(tile_begin + tiles_per_split, tiles);
    key_end = min(tile_end * kBlockN, block_limit);
  }

  // One past the last key query row `query_row` sees.
  __device__ int row_limit(const DecodeParams& p, int query_row) const {
    if (!p.causal) return length;
    return max(0, min(length, length - p.seqlen_q + 1 + query_row));
  }
};

// Element offset of (row, 16-byte chunk) in a K or V tile of rows of kHeadDim elements: chunk c of row r is stored
// at chunk c ^ (r % 8), so the 8 rows an ldmatrix reads at one column fall in 8 different 4-bank groups, and the
// 8 chunks of each 128 bytes of a copied row stay within the same 128 bytes of shared memory.
template <int kHeadDim>
__device__ __forceinline__ int kv_tile_offset(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row % 8)) * 8);
}

// Element offset of key `key` of (batch, kv_head) in a cache with these strides.
__device__ __forceinline__ index_t key_offset(const DecodeParams& p, int page, int batch, int kv_head, int key,
                                              index_t batch_stride, index_t head_stride, index_t row_stride) {
  if (p.block_table_ptr == nullptr) {
    return batch * batch_stride + kv_head * head_stride + static_cast<index_t>(key) * row_stride;
  }
  return page * batch_stride + kv_head * head_stride + static_cast<index_t>(key % p.page_size) * row_stride;
}

__device__ __forceinline__ int page_of(const DecodeParams& p, int batch, int key) {
  if (p.block_table_ptr == nullptr) return 0;
  const int page = p.block_table_ptr[batch * p.block_table_batch_stride + key / p.page_size];
  return min(max(page, 0), p.num_pages - 1);
}

template <DType kDType, int kHeadDim, int kStages, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(const __grid_constant__ DecodeParams p) {
  using T = Traits<kDType, kHeadDim, kStages, kRows, kWarps>;
  constexpr int kMTiles = T::kMTiles;
  using Element = typename T::Element;
  extern __shared__ __align__(16) unsigned char smem[];
  Element* smem_q = reinterpret_cast<Element*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Element* smem_kv = smem_q + T::kQElems + warp * T::kWarpElems;
  DecodeWork<kRows> work(p);
  const int packed_rows = p.group * p.seqlen_q;

  // The packed Q rows (zero past the packed rows and head_dim), once per CTA: copied asynchronously, in a group of
  // their own, and before the length is read, so that the Q and length loads are in flight together and the K/V
  // copies wait for the length alone. (A load into registers and a store would hold each thread until Q arrived: a
  // third DRAM latency before the first K/V copy.)
  constexpr int kThreads = T::kThreads;
  for (int chunk = threadIdx.x; chunk < kRows * T::kChunksPerRow; chunk += kThreads) {
    const int r = chunk / T::kChunksPerRow, col = (chunk % T::kChunksPerRow) * 8;
    const int row = work.first_row + r;
    const bool valid = row < packed_rows && col < p.head_dim;
    const int head = work.kv_head * p.group + row % p.group;
    const Element* source = static_cast<const Element*>(p.q_ptr) + work.batch * p.q_batch_stride +
                            head * p.q_head_stride + static_cast<index_t>(row / p.group) * p.q_row_stride + col;
    cp_async_16(smem_address(smem_q + r * T::kRowPitch + col), valid ? source : p.q_ptr, valid);
  }
  cp_async_commit();
  work.find_keys(p);

  // This thread's two rows of each MMA tile (group = lane / 4: rows g and g + 8 of tile mt) and the keys each sees.
  const int g = lane / 4, t = lane % 4;
  int limit[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = work.first_row + 16 * mt + g + 8 * h;
      limit[mt][h] = row < packed_rows ? min(work.row_limit(p, row / p.group), work.key_end) : 0;
    }
  }

  // A lane copies the same 16-byte column of rows lane_row + j * kRowsPerStep of each tile: one source address per
  // tile, then constant steps. Only a tile that crosses key_end (or a padded column) needs predicates.
  constexpr int kRowsPerStep = 32 / T::kChunksPerRow;
  const int lane_row = lane / T::kChunksPerRow, lane_col = (lane % T::kChunksPerRow) * 8;
  const bool lane_col_valid = lane_col < p.head_dim;
  const Element* k_cache = static_cast<const Element*>(p.k_ptr);
  const Element* v_cache = static_cast<const Element*>(p.v_ptr);
  const bool paged = p.block_table_ptr != nullptr;
  // The sequence's (contiguous) or the head's (paged) element of this lane's row and column in key 0 / in-page 0.
  const Element* k_lane = k_cache + (paged ? 0 : work.batch * p.k_batch_stride) + work.kv_head * p.k_head_stride +
                          lane_row * p.k_row_stride + lane_col;
  const Element* v_lane = v_cache + (paged ? 0 : work.batch * p.v_batch_stride) + work.kv_head * p.v_head_stride +
                          lane_row * p.v_row_stride + lane_col;
  const index_t k_step = kRowsPerStep * p.k_row_stride, v_step = kRowsPerStep * p.v_row_stride;
  const uint32_t kv_smem = smem_address(smem_kv);
  constexpr uint32_t kTileBytes = T::kTileElems * 2;
  // Where this lane's j-th copy of a tile lands (bytes from the tile's start).
  auto lane_destination = [&](int j) {
    return static_cast<uint32_t>(kv_tile_offset<kHeadDim>(lane_row + j * kRowsPerStep, lane_col / 8) * 2);
  };
  auto copy_tile = [&](const Element* k_row, const Element* v_row, int stage, int first_key) {
    const uint32_t k_tile = kv_smem + stage * 2 * kTileBytes, v_tile = k_tile + kTileBytes;
    if (lane_col_valid && first_key + kBlockN <= work.key_end) {
#pragma unroll
      for (int j = 0; j < kBlockN / kRowsPerStep; ++j) {
        cp_async_16(k_tile + lane_destination(j), k_row + j * k_step, true);
        cp_async_16(v_tile + lane_destination(j), v_row + j * v_step, true);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kBlockN / kRowsPerStep; ++j) {
        const bool valid = lane_col_valid && first_key + lane_row + j * kRowsPerStep < work.key_end;
        cp_async_16(k_tile + lane_destination(j), valid ? k_row + j * k_step : k_cache, valid);
        cp_async_16(v_tile + lane_destination(j), valid ? v_row + j * v_step : v_cache, valid);
      }
    }
  };
  // Pages of a power-of-two size >= 16 hold whole tiles: one page index per tile, read one tile ahead of its copy
  // so that the copy does not wait for it. Other page sizes take a page index per key.
  const bool page_per_tile = paged && p.page_size >= kBlockN && (p.page_size & (p.page_size - 1)) == 0;
  const int page_shift = paged ? __ffs(p.page_size) - 1 : 0;
  const int* table = paged ? p.block_table_ptr + work.batch * p.block_table_batch_stride : nullptr;
  auto fetch_page = [&](int tile) {
    return page_per_tile && tile * kBlockN < work.key_end ? table[(tile * kBlockN) >> page_shift] : 0;
  };
  auto load_tile = [&](int tile, int stage, int page) {
    const int first_key = tile * kBlockN;
    if (!paged) {
      copy_tile(k_lane + first_key * p.k_row_stride, v_lane + first_key * p.v_row_stride, stage, first_key);
    } else if (page_per_tile) {
      const index_t clamped = min(max(page, 0), p.num_pages - 1);
      const int in_page = first_key & (p.page_size - 1);
      copy_tile(k_lane + clamped * p.k_batch_stride + in_page * p.k_row_stride,
                v_lane + clamped * p.v_batch_stride + in_page * p.v_row_stride, stage, first_key);
    } else {
      const uint32_t k_tile = kv_smem + stage * 2 * kTileBytes, v_tile = k_tile + kTileBytes;
#pragma unroll
      for (int j = 0; j < kBlockN / kRowsPerStep; ++j) {
        const int key = first_key + lane_row + j * kRowsPerStep;
        const bool valid = lane_col_valid && key < work.key_end;
        const index_t key_page = valid ? page_of(p, work.batch, key) : 0;
        const index_t in_page = key % p.page_size - lane_row;  // k_lane already holds lane_row rows
        const Element* k_source = k_lane + key_page * p.k_batch_stride + in_page * p.k_row_stride;
        const Element* v_source = v_lane + key_page * p.v_batch_stride + in_page * p.v_row_stride;
        cp_async_16(k_tile + lane_destination(j), valid ? k_source : k_cache, valid);
        cp_async_16(v_tile + lane_destination(j), valid ? v_source : v_cache, valid);
      }
    }
  };

  // This warp's tiles: the split's tiles warp, warp + kWarps, ...
  const int my_tiles = work.tile_begin + warp < work.tile_end
                           ? (work.tile_end - work.tile_begin - warp + T::kWarps - 1) / T::kWarps : 0;
  auto tile_of = [&](int k) { return work.tile_begin + warp + T::kWarps * k; };  // the k-th tile of this warp
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < my_tiles) load_tile(tile_of(s), s, fetch_page(tile_of(s)));
    cp_async_commit();
  }
  int next_page = T::kStages - 1 < my_tiles ? fetch_page(tile_of(T::kStages - 1)) : 0;
  cp_async_wait<T::kStages - 1>();  // this thread's Q copies (the group before the tiles')
  __syncthreads();                  // everyone's: the Q tile is in shared memory

  // Keys below unmasked_end are seen by every row of the block (its first row sees the fewest): such tiles skip
  // the mask. Padded rows (past the packed rows) then see them too; their output is never written.
  const int unmasked_end = min(work.row_limit(p, work.first_row / p.group), work.key_end);
  float acc[kMTiles][kHeadDim / 8][4] = {};
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  // ldmatrix addresses: for A (Q) matrix m = lane / 8 is rows (m % 2) * 8.., columns (m / 2) * 8..; for B from K,
  // keys (m / 2) * 8.., columns (m % 2) * 8..; for B from V (transposed), keys (m % 2) * 8.., columns (m / 2) * 8..
  const int m = lane / 8, mr = lane % 8;
  const uint32_t q_address = smem_address(smem_q + ((m % 2) * 8 + mr) * T::kRowPitch + (m / 2) * 8);
  constexpr uint32_t kQTileBytes = 16 * T::kRowPitch * 2;  // one 16-row MMA tile of Q
  // Q's A fragments stay in registers for one row tile up to head dim 128 (32 registers), sparing one ldmatrix per
  // 16 columns of every tile; at 256, or with two row tiles, they would not fit beside the accumulators, and are
  // read from shared memory each tile (one ldmatrix serves the two row tiles' S products).
  constexpr bool kQInRegisters = kHeadDim <= 128 && kMTiles == 1;
  uint32_t q_fragments[kQInRegisters ? kHeadDim / 16 : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) ldmatrix_x4(q_fragments[kk], q_address + kk * 32);
  }
  for (int i = 0; i < my_tiles; ++i) {
    const int ahead = i + T::kStages - 1;
    if (ahead < my_tiles) {
      load_tile(tile_of(ahead), ahead % T::kStages, next_page);
      if (ahead + 1 < my_tiles) next_page = fetch_page(tile_of(ahead + 1));
    }
    cp_async_commit();
    cp_async_wait<T::kStages - 1>();
    __syncwarp();
    const Element* k_tile = smem_kv + (i % T::kStages) * 2 * T::kTileElems;
    const Element* v_tile = k_tile + T::kTileElems;

    // S = Q K^T, 16 rows x 16 keys per row tile: s[mt][n] holds keys n * 8 + 2t, + 1 of rows g (0, 1) and g + 8
    // (2, 3) of row tile mt.
    float s[kMTiles][2][4] = {};
    const uint32_t k_address = smem_address(k_tile);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, k_address + kv_tile_offset<kHeadDim>((m / 2) * 8 + mr, 2 * kk + m % 2) * 2);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if constexpr (kQInRegisters) {
          mma_16x8x16<kDType>(s[mt][0], q_fragments[kk], b[0], b[1]);
          mma_16x8x16<kDType>(s[mt][1], q_fragments[kk], b[2], b[3]);
        } else {
          uint32_t a[4];
          ldmatrix_x4(a, q_address + mt * kQTileBytes + kk * 32);
          mma_16x8x16<kDType>(s[mt][0], a, b[0], b[1]);
          mma_16x8x16<kDType>(s[mt][1], a, b[2], b[3]);
        }
      }
    }

    // Online softmax in base 2, the scale folded into the exponent (scale_log2 > 0, so max(c s) = c max(s)).
    const int first_key = tile_of(i) * kBlockN;
    if (first_key + kBlockN > unmasked_end) {  // warp-uniform: a tile some row sees only in part
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (first_key + n * 8 + 2 * t + e % 2 >= limit[mt][e / 2]) s[mt][n][e] = -INFINITY;
          }
        }
      }
    }
    float shift[kMTiles][2], correction[kMTiles][2];
    bool rescale = false;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float tile_max = quad_max(fmaxf(fmaxf(s[mt][0][2 * h], s[mt][0][2 * h + 1]),
                                              fmaxf(s[mt][1][2 * h], s[mt][1][2 * h + 1])));
        const float new_max = fmaxf(row_max[mt][h], tile_max * p.scale_log2);
        shift[mt][h] = new_max == -INFINITY ? 0.f : new_max;  // a row with no key yet: exp2(-inf - 0) = 0, not NaN
        correction[mt][h] = exp2f(row_max[mt][h] - shift[mt][h]);
        row_max[mt][h] = new_max;
        rescale |= correction[mt][h] != 1.f;
      }
    }
    // The running max rarely moves after the first tiles: rescale only when it did for some row of the warp.
    if (__any_sync(0xffffffff, rescale)) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          row_sum[mt][h] *= correction[mt][h];
#pragma unroll
          for (int n = 0; n < kHeadDim / 8; ++n) {
            acc[mt][n][2 * h] *= correction[mt][h];
            acc[mt][n][2 * h + 1] *= correction[mt][h];
          }
        }
      }
    }
    // P's accumulator layout is the A-operand layout of the next MMA (16 rows x 16 keys).
    uint32_t pa[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      float probability[2][4];
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          probability[n][e] = exp2f(s[mt][n][e] * p.scale_log2 - shift[mt][e / 2]);
          row_sum[mt][e / 2] += probability[n][e];
        }
      }
      pa[mt][0] = pack_pair<kDType>(probability[0][0], probability[0][1]);
      pa[mt][1] = pack_pair<kDType>(probability[0][2], probability[0][3]);
      pa[mt][2] = pack_pair<kDType>(probability[1][0], probability[1][1]);
      pa[mt][3] = pack_pair<kDType>(probability[1][2], probability[1][3]);
    }
    const uint32_t v_address = smem_address(v_tile);
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; n += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_address + kv_tile_offset<kHeadDim>((m % 2) * 8 + mr, n + m / 2) * 2);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma_16x8x16<kDType>(acc[mt][n], pa[mt], b[0], b[1]);
        mma_16x8x16<kDType>(acc[mt][n + 1], pa[mt], b[2], b[3]);
      }
    }
    __syncwarp();  // this stage is refilled by the next iteration's copy
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline: its memory now holds the merge

  // Merge the warps' (max, sum, O) by their maxima.
  float* merge_o = reinterpret_cast<float*>(smem);
  float* merge_max = merge_o + kWarps * kRows * kHeadDim;
  float* merge_sum = merge_max + kWarps * kRows;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * mt + g + 8 * h;
      const float sum = quad_sum(row_sum[mt][h]);
      if (t == 0) {
        merge_max[warp * kRows + row] = row_max[mt][h];
        merge_sum[warp * kRows + row] = sum;
      }
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        float* destination = merge_o + (warp * kRows + row) * kHeadDim + n * 8 + 2 * t;
        destination[0] = acc[mt][n][2 * h];
        destination[1] = acc[mt][n][2 * h + 1];
      }
    }
  }
  __syncthreads();

  // Each thread finishes 8-column chunks of the kRows rows.
  const index_t rows_total = static_cast<index_t>(p.batch) * p.heads_q * p.seqlen_q;
  for (int chunk = threadIdx.x; chunk < kRows * T::kChunksPerRow; chunk += kThreads) {
    const int row = chunk / T::kChunksPerRow, c = (chunk % T::kChunksPerRow) * 8;
    const int packed_row = work.first_row + row;
    if (packed_row >= packed_rows || c >= p.head_dim) continue;
    float top = -INFINITY;
    for (int w = 0; w < kWarps; ++w) top = fmaxf(top, merge_max[w * kRows + row]);
    const float top_shift = top == -INFINITY ? 0.f : top;
    float weight[kWarps], total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      weight[w] = exp2f(merge_max[w * kRows + row] - top_shift);
      total += weight[w] * merge_sum[w * kRows + row];
    }
    // A row (or split) that saw no key: sum 0, output 0, LSE -inf.
    const float inverse = total == 0.f ? 0.f : 1.f / total;
    const int head = work.kv_head * p.group + packed_row % p.group, query_row = packed_row / p.group;
    const index_t out_row = (static_cast<index_t>(work.batch) * p.heads_q + head) * p.seqlen_q + query_row;
    float values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += weight[w] * merge_o[(w * kRows + row) * kHeadDim + c + e];
      values[e] = sum * inverse;
    }
    if (p.num_splits == 1) {
      Element* destination = static_cast<Element*>(p.o_ptr) + work.batch * p.o_batch_stride +
                             head * p.o_head_stride + static_cast<index_t>(query_row) * p.o_row_stride + c;
      *reinterpret_cast<uint4*>(destination) = pack_eight<kDType>(values);
    } else {
      float* destination = p.partial_o_ptr + (work.split * rows_total + out_row) * p.head_dim + c;
      *reinterpret_cast<float4*>(destination) = make_float4(values[0], values[1], values[2], values[3]);
      *reinterpret_cast<float4*>(destination + 4) = make_float4(values[4], values[5], values[6], values[7]);
    }
    if (c == 0) {
      const float lse = total == 0.f ? -INFINITY : (top_shift + __log2f(total)) * kLn2;
      if (p.num_splits == 1) {
        p.lse_ptr[out_row] = lse;
      } else {
        p.partial_lse_ptr[work.split * rows_total + out_row] = lse;
      }
    }
  }
}

// Merges the splits of output rows: out = sum_s w_s partial_s, w_s = exp(lse_s - lse), lse = log sum exp(lse_s). A
// warp per row: lane l holds the row's float4 columns l (and l + 32 at head dim 256) and the LSEs of splits l,
// l + 32, ...; each split's weight passes from its lane by a shuffle, so nothing goes through shared memory and no
// barrier is crossed. Latency-bound (a row is a few KiB): the first partials a lane reads are requested together with
// the LSEs, kChunk splits at a time (16 float4 registers in flight). 1.01-1.03x a block per row summing split groups
// in shared memory, on split calls at batch 1 (results/NOTES.md, "The decode combine, a warp per row").
template <DType kDType, int kHeadDim>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(const __grid_constant__ DecodeParams p) {
  using Element = typename Traits<kDType, kHeadDim, 2, 16, 4>::Element;
  constexpr int kVecs = (kHeadDim + 127) / 128;  // float4 columns per lane
  constexpr int kChunk = 16 / kVecs;             // splits whose partials a lane has in flight at once
  constexpr int kPerLane = kMaxSplits / 32;      // LSEs per lane
  static_assert(32 % kChunk == 0, "a chunk of splits takes its weights from one register of the lanes");
  const index_t rows_total = static_cast<index_t>(p.batch) * p.heads_q * p.seqlen_q;
  const index_t out_row = static_cast<index_t>(blockIdx.x) * kCombineRowsPerBlock + threadIdx.x / 32;
  if (out_row >= rows_total) return;
  const int lane = threadIdx.x % 32;
  const int vecs = p.head_dim / 4;  // float4 columns of a row (head_dim is a multiple of 8)
  // One warp runs the whole row, so its instruction count is its latency: addresses step by a pointer increment
  // from this lane's column, not by a 64-bit product per load.
  const float4* column = reinterpret_cast<const float4*>(p.partial_o_ptr) + out_row * vecs + lane;
  const index_t split_stride = rows_total * vecs;
  bool lane_has[kVecs];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) lane_has[j] = lane + 32 * j < vecs;
  float4 loaded[kChunk][kVecs];
  auto load_chunk = [&](int first) {
    const float4* source = column + first * split_stride;
#pragma unroll
    for (int i = 0; i < kChunk; ++i, source += split_stride) {
      const bool split_valid = first + i < p.num_splits;
#pragma unroll
      for (int j = 0; j < kVecs; ++j) {
        loaded[i][j] = split_valid && lane_has[j] ? source[32 * j] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  };
  load_chunk(0);

  float weight[kPerLane];  // of splits lane, lane + 32, ...
  float top = -INFINITY;
  const float* lse_column = p.partial_lse_ptr + out_row + lane * rows_total;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int s = lane + 32 * k;
    weight[k] = s < p.num_splits ? lse_column[32 * k * rows_total] : -INFINITY;
    top = fmaxf(top, weight[k]);
  }
  for (int offset = 16; offset > 0; offset /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, offset));
  const float top_shift = top == -INFINITY ? 0.f : top;
  float total = 0.f;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    weight[k] = __expf(weight[k] - top_shift);  // 0 for a split that saw no key (LSE -inf) or past the splits
    total += weight[k];
  }
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffff, total, offset);
  const float inverse = total == 0.f ? 0.f : 1.f / total;  // a row that saw no key: output 0, LSE -inf

  float sum[kVecs][4] = {};
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {  // splits 32k .. 32k + 31, whose weights the lanes hold in weight[k]
    if (32 * k >= p.num_splits) break;
    for (int first = 32 * k; first < 32 * k + 32 && first < p.num_splits; first += kChunk) {
      if (first > 0) load_chunk(first);  // the first chunk was requested with the LSEs
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const float w = __shfl_sync(0xffffffff, weight[k], (first + i) % 32);  // 0 past the splits
#pragma unroll
        for (int j = 0; j < kVecs; ++j) {
          sum[j][0] += w * loaded[i][j].x;
          sum[j][1] += w * loaded[i][j].y;
          sum[j][2] += w * loaded[i][j].z;
          sum[j][3] += w * loaded[i][j].w;
        }
      }
    }
  }

  const int query_row = static_cast<int>(out_row % p.seqlen_q);
  const int head = static_cast<int>((out_row / p.seqlen_q) % p.heads_q);
  const int batch = static_cast<int>(out_row / (static_cast<index_t>(p.seqlen_q) * p.heads_q));
  Element* destination = static_cast<Element*>(p.o_ptr) + batch * p.o_batch_stride + head * p.o_head_stride +
                         static_cast<index_t>(query_row) * p.o_row_stride;
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int vec = lane + 32 * j;
    if (vec >= vecs) continue;
    uint2 packed;
    packed.x = pack_pair<kDType>(sum[j][0] * inverse, sum[j][1] * inverse);
    packed.y = pack_pair<kDType>(sum[j][2] * inverse, sum[j][3] * inverse);
    *reinterpret_cast<uint2*>(destination + 4 * vec) = packed;
  }
  if (lane == 0) p.lse_ptr[out_row] = total == 0.f ? -INFINITY : top_shift + __logf(total);
}

// Writes the new tokens into the cache: one block of 32 threads per (batch, K/V head, token), 16 bytes a thread.
// Positions outside the cache (or on a page index outside it) are skipped.
__global__ void __launch_bounds__(32) decode_append_kernel(const __grid_constant__ DecodeParams p) {
  const int token = blockIdx.x % p.seqlen_new;
  const int kv_head = (blockIdx.x / p.seqlen_new) % p.heads_kv;
  const int batch = blockIdx.x / (p.seqlen_new * p.heads_kv);
  const long long position = static_cast<long long>(p.seqlens_ptr[batch]) + token;
  if (position < 0 || position >= p.capacity) return;
  const int key = static_cast<int>(position);
  int page = 0;
  if (p.block_table_ptr != nullptr) {
    page = p.block_table_ptr[batch * p.block_table_batch_stride + key / p.page_size];
    if (page < 0 || page >= p.num_pages) return;
  }
  const index_t k_offset =
      key_offset(p, page, batch, kv_head, key, p.k_batch_stride, p.k_head_stride, p.k_row_stride);
  const index_t v_offset =
      key_offset(p, page, batch, kv_head, key, p.v_batch_stride, p.v_head_stride, p.v_row_stride);
  const uint16_t* k_new = static_cast<const uint16_t*>(p.k_new_ptr) + batch * p.k_new_batch_stride +
                          kv_head * p.k_new_head_stride + token * p.k_new_row_stride;
  const uint16_t* v_new = static_cast<const uint16_t*>(p.v_new_ptr) + batch * p.v_new_batch_stride +
                          kv_head * p.v_new_head_stride + token * p.v_new_row_stride;
  uint16_t* k_cache = const_cast<uint16_t*>(static_cast<const uint16_t*>(p.k_ptr)) + k_offset;
  uint16_t* v_cache = const_cast<uint16_t*>(static_cast<const uint16_t*>(p.v_ptr)) + v_offset;
  for (int col = threadIdx.x * 8; col < p.head_dim; col += 32 * 8) {
    *reinterpret_cast<uint4*>(k_cache + col) = *reinterpret_cast<const uint4*>(k_new + col);
    *reinterpret_cast<uint4*>(v_cache + col) = *reinterpret_cast<const uint4*>(v_new + col);
  }
}

}  // namespace decode

namespace decode {
// The opt-in shared memory of the current device, queried once per device.
inline cudaError_t shared_memory_optin(int& bytes) {
  static int cached[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && cached[device] > 0) {
    bytes = cached[device];
    return cudaSuccess;
  }
  err = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess && device < kMaxDevices) cached[device] = bytes;
  return err;
}

template <DType kDType, int kHeadDim, int kStages, int kRows, int kWarps>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  using T = Traits<kDType, kHeadDim, kStages, kRows, kWarps>;
  constexpr auto kernel = decode_kernel<kDType, kHeadDim, kStages, kRows, kWarps>;
  const cudaError_t err = opt_in_shared_memory<kernel>(T::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int row_blocks = (p.group * p.seqlen_q + kRows - 1) / kRows;
  kernel<<<dim3(p.batch * p.heads_kv * row_blocks, p.num_splits), T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// kRows-row CTAs of the width the call asks for (p.cta_warps); wide ones with the deepest pipeline the device's
// shared memory fits. A shape this head dim does not have: cudaErrorInvalidValue.
template <DType kDType, int kHeadDim, int kRows>
cudaError_t launch_decode_rows(const DecodeParams& p, int optin, cudaStream_t stream) {
  using Cta = CtaChoice<kHeadDim>;
  if constexpr (Cta::kHasNarrow) {
    if (p.cta_warps == Cta::kNarrowWarps) {
      return launch_decode<kDType, kHeadDim, Cta::kNarrowStages, kRows, Cta::kNarrowWarps>(p, stream);
    }
  }
  if (p.cta_warps != Cta::kWideWarps) return cudaErrorInvalidValue;
  constexpr int kDeepBytes = Traits<kDType, kHeadDim, Cta::kDeepStages, kRows, Cta::kWideWarps>::kSmemBytes;
  return optin >= kDeepBytes
             ? launch_decode<kDType, kHeadDim, Cta::kDeepStages, kRows, Cta::kWideWarps>(p, stream)
             : launch_decode<kDType, kHeadDim, Cta::kShallowStages, kRows, Cta::kWideWarps>(p, stream);
}
}  // namespace decode

// Inline: every decode library exports it (one definition, by the ODR).
inline cudaError_t run_decode_append(const DecodeParams& p, cudaStream_t stream) {
  if (p.seqlen_new > 0) decode::decode_append_kernel<<<p.batch * p.heads_kv * p.seqlen_new, 32, 0, stream>>>(p);
  return cudaGetLastError();
}

template <DType kDType, int kHeadDim>
cudaError_t run_decode(const DecodeParams& p, cudaStream_t stream) {
  int optin = 0;
  cudaError_t err = decode::shared_memory_optin(optin);
  if (err != cudaSuccess) return err;
  constexpr int kMaxRows = decode::CtaChoice<kHeadDim>::kMaxRows;
  if (p.cta_rows == kMaxRows) {
    err = decode::launch_decode_rows<kDType, kHeadDim, kMaxRows>(p, optin, stream);
  } else if (p.cta_rows == 16) {
    err = decode::launch_decode_rows<kDType, kHeadDim, 16>(p, optin, stream);
  } else {
    err = cudaErrorInvalidValue;
  }
  if (err != cudaSuccess || p.num_splits == 1) return err;
  const index_t rows = static_cast<index_t>(p.batch) * p.heads_q * p.seqlen_q;
  const auto blocks = static_cast<unsigned>((rows + decode::kCombineRowsPerBlock - 1) / decode::kCombineRowsPerBlock);
  decode::decode_combine_kernel<kDType, kHeadDim><<<blocks, decode::kCombineThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace flash
