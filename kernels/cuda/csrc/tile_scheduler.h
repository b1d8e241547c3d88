// Which tile a CTA computes, written once for both kernel families: the host's grid and the device's decoding of
// it live side by side so they cannot drift apart. SM80: one CTA per tile (fwd_grid, current_tile). SM90: a grid
// walking the same tile order as a flat list, persistent with a static or a dynamic deal (PersistentTileScheduler).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>

#include "mask.h"
#include "params.h"

namespace flash {

// CUDA's grid limits: x up to 2^31 - 1 blocks, y and z up to 65,535.
constexpr int kMaxGridX = 0x7fffffff;
constexpr long long kMaxGridYZ = 65535;

// x: query tiles. batch * heads is folded over y and z, and CTAs past the end exit, so 100k (or 4 billion)
// batch * heads needs no second launch.
inline dim3 fwd_grid(const FwdParams& params, int block_m) {
  const long long num_m_blocks = (params.seqlen_q + block_m - 1) / block_m;
  const long long bh = static_cast<long long>(params.batch) * params.heads_q;
  const unsigned grid_y = static_cast<unsigned>(bh < kMaxGridYZ ? bh : kMaxGridYZ);
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

// The tile order of both families: the query tiles of one (batch, head) are adjacent, so the CTAs that run at once
// stream the same K/V tiles in step and DRAM delivers each once (L2 serves the rest); causal takes a head's last
// query tiles (the longest rows) first, so the short ones fill the tail. (The SM90 list walks causal calls of many
// tiles per head by sections of heads instead: causal_section_heads.)
template <bool kCausal>
__forceinline__ __device__ TileCoord make_tile(const FwdParams& params, index_t bh, int m_index, int num_m_blocks) {
  TileCoord tile;
  tile.valid = bh < index_t(params.batch) * params.heads_q;
  tile.bh = bh;
  tile.batch = int(bh / params.heads_q);
  tile.head = int(bh % params.heads_q);
  tile.head_kv = tile.head / params.group;
  tile.m_block = kCausal ? num_m_blocks - 1 - m_index : m_index;
  return tile;
}

// SM80: one CTA per tile, x the query tile and y, z the folded batch * heads.
template <bool kCausal>
__forceinline__ __device__ TileCoord current_tile(const FwdParams& params) {
  return make_tile<kCausal>(params, index_t(blockIdx.z) * gridDim.y + blockIdx.y, blockIdx.x, gridDim.x);
}

// SM90: the same order as one flat list, walked by a grid of one of three kinds (FwdParams::sm90_schedule, kAuto
// unless the backend's sm90_schedule option overrides it; make_persistent_scheduler resolves it):
// - one CTA per tile (CTA b runs tile b), the hardware's block scheduler balancing them;
// - persistent, static: one CTA per SM, CTA b takes tiles b, b + gridDim.x, b + 2 gridDim.x, ... Its next Q and K/V
//   loads overlap its current tile's last GEMM and epilogue, and no tile pays for a launch, a prologue or barrier
//   set-up. The default where tiles are equal (no mask, the tile height divides seqlen_q): CTAs take as many to
//   within one;
// - persistent, dynamic: CTA b takes tile b first, then draws the next unstarted tile from a global counter, so a
//   CTA that drew short tiles draws more. The default where tiles are unequal, since a static round-robin would
//   hand some CTAs only long ones: causal (with 4 query tiles per head and 132 SMs, CTA b always gets query tile
//   3 - b % 4), and a partial tile per head (with 6 tiles of 192 rows per head at N = 1024 and 132 SMs, 22 CTAs
//   get every one-third tile and the other 110 only full ones). The list runs longest first within each head, so
//   the short tiles fill the tail. The producer draws (an atomic on a 32-bit counter, issued a whole tile ahead so
//   its latency hides) and hands each tile index to the consumers through shared memory (sm90_fwd_kernel.h).
//   The counter needs no zeroing launch per call: each CTA draws once per tile and once past the end, then counts
//   itself finished, and the last to finish resets the counter (finish_draws), which the binding keeps per stream.
// Tile indices are 32-bit (the producer runs on 24 registers): 2^31 tiles of 128 query rows would be a query of
// 4 TB, so make_persistent_scheduler's check cannot fail on a real call; it only keeps the limit explicit.
//
// Causal SM90 tiles are aligned to the end of the queries: tile m holds rows [m * block_m - row_shift, + block_m),
// clipped at 0, so a partial tile is the first (the shortest rows, a key tile or two) and not the last (the longest,
// where with 192-row tiles one warpgroup would run every key tile of the row alone while the other two idle).
// row_shift is a multiple of 64 rows, so every consumer warpgroup still owns whole 64-row blocks.
struct PersistentTileScheduler {
  int num_tiles;
  int num_m_blocks;
  int row_shift;
  int section_heads;     // > 0: causal_section_heads' order (sections of heads, longest tiles first); 0: head-major
  bool persistent;
  TileCounter* counter;  // the dynamic deal's (FwdParams::tile_counter); null for the static deal and per-tile grid
};

// The causal order across heads. Drawn head by head, a causal list ends on the long tiles of its last heads: a CTA
// that draws the last head's longest tile late runs it alone while the others have finished. ncu at causal d128
// (fp16, 16 heads, batch 4 x 4k and 2 x 8k): the busiest SM active 769k cycles, the average 720k, so SMs idled 5-7%
// of the kernel, against 1.4-1.9% for FlashAttention-4's order. So causal lists with many tiles per head run longest
// first across a section of heads whose K and V fit the L2 together (FlashAttention-3/4's scheduler order): every
// head of a section gives its longest tile, then its next, ..., and the last draws are the shortest tiles of the
// last section. A section counts the K/V heads it reads: a power of two of them, as FlashAttention-3/4 take, keeps
// its K/V between half and all of the L2, and it holds their whole groups of query heads (GQA: a K/V head's group
// shares its bytes; against counting each query head's own K/V: +0.5-2% on GQA causal calls of 4k-16k keys and
// chunked prefill, +-0.2% at 64k; results/NOTES.md, "Sections of whole GQA groups"). A/B
// against head-major (bf16): +3-7% at causal 2k-8k tokens (head dims 64, 128, 256; 64 also at 16k) and chunked
// prefill on 8k keys, +-1% from 16k at 128 and 256. Fewer than 16 tiles per head (N < 2k at 128 rows) keep the
// head-major order: their tiles cost about the same (mostly the fixed part), and wide sections lost 1-3% at N = 512
// (results/NOTES.md, SM90 v9).
// Packed batches take the same order within each sequence (varlen_tiles.h), by its own key count. A section holds
// at most the list's `heads` (few or no keys fit any number of heads in the L2), so sections x tiles_per_head never
// passes the list's own tile count, an int.
constexpr int kSectionMinTilesPerHead = 16;
__host__ __device__ inline int section_heads(const FwdParams& params, int seqlen_k, int tiles_per_head, int heads) {
  if (tiles_per_head < kSectionMinTilesPerHead) return 0;
  const long long kv_head_bytes = 2LL * seqlen_k * params.head_dim * 2;  // K and V of one K/V head, 16-bit
  const long long fit = params.l2_bytes / (kv_head_bytes > 0 ? kv_head_bytes : 1LL);
  long long kv_heads = 1;
  while (2LL * kv_heads <= fit) kv_heads *= 2;
  const long long section = kv_heads * params.group;  // whole groups: a K/V head's query heads share its bytes
  return section < heads ? static_cast<int>(section) : heads;
}
inline int causal_section_heads(const FwdParams& params, int num_m_blocks) {
  const long long heads = std::min(static_cast<long long>(params.batch) * params.heads_q, 1LL << 30);
  return params.causal ? section_heads(params, params.seqlen_k, num_m_blocks, static_cast<int>(heads)) : 0;
}

// Tile i of `tiles_per_head` x `heads` tiles of one sequence, as (head, index among the head's tiles): head-major
// (sections 0), or by sections of `sections` heads, the heads of a section side by side per index.
struct TileInSequence {
  int head;
  int index;
};
__host__ __device__ inline TileInSequence tile_in_sequence(int i, int tiles_per_head, int heads, int sections) {
  if (sections <= 0) return {i / tiles_per_head, i % tiles_per_head};
  const int section = i / (sections * tiles_per_head);
  const int first_head = section * sections;
  const int heads_here = sections < heads - first_head ? sections : heads - first_head;
  const int rank = i - section * sections * tiles_per_head;
  const int index = rank / heads_here;
  return {first_head + rank - index * heads_here, index};
}

inline bool make_persistent_scheduler(const FwdParams& params, int block_m, int rows_per_consumer,
                                      PersistentTileScheduler& s) {
  s.num_m_blocks = (params.seqlen_q + block_m - 1) / block_m;
  const index_t num_tiles = index_t(params.batch) * params.heads_q * s.num_m_blocks;
  s.num_tiles = static_cast<int>(num_tiles);
  const int spare_rows = (block_m - params.seqlen_q % block_m) % block_m;  // the last tile's rows past seqlen_q
  s.row_shift = params.causal ? spare_rows / rows_per_consumer * rows_per_consumer : 0;
  s.section_heads = causal_section_heads(params, s.num_m_blocks);
  const bool unequal_tiles = params.causal || spare_rows != 0;
  const Sm90Schedule schedule = params.sm90_schedule;
  s.persistent = schedule != Sm90Schedule::kPerTile;
  const bool dynamic =
      schedule == Sm90Schedule::kDynamic || (schedule == Sm90Schedule::kAuto && unequal_tiles);
  s.counter = dynamic ? params.tile_counter : nullptr;
  return num_tiles <= kMaxGridX && (!dynamic || s.counter != nullptr);
}

// Where pairs of CTAs (a cluster of two, Sm90FwdTraits::kClusterM) share K/V: the two tiles of a pair are query
// tiles 2i and 2i + 1 of one head (the static deal and the per-tile grid give CTAs 2c and 2c + 1 tiles t and t + 1
// with t even, as the grid is even; the dynamic deal draws one pair of tiles for both), so every head's tiles must be
// full and even in number; both walk the key tiles of the pair's rows (causal: the later tile's, a key tile or two
// more than the earlier one's, which its warpgroups pass without a GEMM). And long rows only: a pair waits for its
// slower CTA at every K/V stage, which cost 1-4% where a tile walks 4-16 key tiles (N = 512-2k) and gained 2-5% from
// 32 (results/NOTES.md, SM90 v11).
// Causal, rows run from 1 to N keys: pairs only where most of them are long, chunked prefill (a chunk of queries at
// the end of at least twice as many keys) or N >= 16k: drawn dynamically, pairs gained 2-4.5% from N = 16k and on
// chunked prefill, and lost 5-6% at N = 4k (results/NOTES.md, "CTA pairs for causal calls").
constexpr int kSm90PairsMinKeys = 4096;
constexpr int kSm90CausalPairsMinKeys = 16384;
inline bool sm90_pairs_apply(const FwdParams& params, int block_m) {
  const bool rows_mostly_long =
      !params.causal || params.seqlen_k >= 2 * params.seqlen_q || params.seqlen_k >= kSm90CausalPairsMinKeys;
  return params.sm90_allow_pairs && params.seqlen_q % (2 * block_m) == 0 && params.seqlen_k >= kSm90PairsMinKeys &&
         rows_mostly_long;
}

// The query rows [first, end) of SM90 tile m_block (end may pass seqlen_q).
struct TileRows {
  int first;
  int end;
};
__forceinline__ __device__ TileRows tile_rows(const PersistentTileScheduler& s, int m_block, int block_m) {
  const int first = m_block * block_m - s.row_shift;
  return {max(first, 0), first + block_m};
}

inline dim3 persistent_grid(const PersistentTileScheduler& s, const FwdParams& params) {
  const int cap = s.persistent ? std::max(params.num_sms, 1) : kMaxGridX;
  return dim3(static_cast<unsigned>(std::min(s.num_tiles, cap)));
}

// Tile t of the flat list: head-major (a head's tiles adjacent), or by sections of heads (causal_section_heads), where
// the list walks units of kClusterM adjacent query tiles (a pair's two tiles stay adjacent: t and t ^ 1 share a unit)
// and, in each section, the heads' units of one length side by side, longest first.
template <bool kCausal, int kClusterM>
__forceinline__ __device__ TileCoord persistent_tile(const PersistentTileScheduler& s, const FwdParams& params,
                                                     int t) {
  if (kCausal && s.section_heads > 0) {  // the heads of batch * heads_q
    const TileInSequence unit =
        tile_in_sequence(t / kClusterM, s.num_m_blocks / kClusterM, params.batch * params.heads_q, s.section_heads);
    return make_tile<kCausal>(params, index_t(unit.head), unit.index * kClusterM + t % kClusterM, s.num_m_blocks);
  }
  return make_tile<kCausal>(params, index_t(t / s.num_m_blocks), t % s.num_m_blocks, s.num_m_blocks);
}

// Where one tile's sequence lies in the tensors, and its lengths. Dense calls: all of batch element `batch`, whose
// lengths are the call's (read from its parameters, as every dense kernel always did). Packed variable-length
// batches: a sequence's query rows [q_offset, + seqlen_q) and key rows [k_offset, + seqlen_k) of the one-batch
// packed tensors. Row and key indices inside the kernel are the sequence's own; only addresses add the offsets.
template <bool kVarlen>
struct TileSequence {
  __forceinline__ __device__ int seqlen_q(const FwdParams& args) const { return args.seqlen_q; }
  __forceinline__ __device__ int seqlen_k(const FwdParams& args) const { return args.seqlen_k; }
  __forceinline__ __device__ int q_offset() const { return 0; }
  __forceinline__ __device__ int k_offset() const { return 0; }
};

template <>
struct TileSequence<true> {
  int q_begin, q_len, k_begin, k_len;
  __forceinline__ __device__ int seqlen_q(const FwdParams&) const { return q_len; }
  __forceinline__ __device__ int seqlen_k(const FwdParams&) const { return k_len; }
  __forceinline__ __device__ int q_offset() const { return q_begin; }
  __forceinline__ __device__ int k_offset() const { return k_begin; }
};

// A packed batch's tiles come from a list that a small kernel writes ahead of the attention kernel (varlen_tiles.h):
// their count is known only on the device, so the host sizes the persistent grid by the list's capacity and every
// CTA draws from the dynamic deal's counter until the count the list states.
inline bool make_varlen_scheduler(const FwdParams& params, PersistentTileScheduler& s) {
  s.num_tiles = params.varlen_tiles.capacity;
  s.num_m_blocks = 1;
  s.row_shift = 0;
  s.section_heads = 0;  // the list's own order (varlen_tiles.h)
  s.persistent = true;
  s.counter = params.tile_counter;
  return s.num_tiles > 0 && s.counter != nullptr && params.varlen_tiles.tiles != nullptr;
}

__forceinline__ __device__ TileCoord varlen_tile_coord(const FwdParams& params, const VarlenTile& entry) {
  TileCoord tile;
  tile.valid = true;
  tile.bh = 0;
  tile.batch = 0;  // every sequence lives in the one packed batch
  tile.head = entry.head;
  tile.head_kv = entry.head / params.group;
  tile.m_block = 0;  // the rows are the entry's
  return tile;
}

// gridDim.x read where it is used: ptxas otherwise hoists it out of the producer's loop into a register and, on the
// producer's 24, spills it.
__forceinline__ __device__ int grid_size() {
  unsigned n;
  asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(n));
  return int(n);
}

// The tile after `t` for this CTA (for a pair: this pair's first tile): the next draw from the counter (dynamic) or
// t + gridDim.x (static, and one CTA per tile, where it is past the end). A pair draws pairs of tiles: the counter
// counts them, and pair c's first draw is the gridDim.x / 2 + c-th. Only the (first) producer calls it in the dynamic
// case. Past the end, draws keep counting up: at most one per CTA, far from overflow.
template <int kClusterM>
__forceinline__ __device__ int next_tile(const PersistentTileScheduler& s, int t) {
  if (s.counter != nullptr) return kClusterM * (int(atomicAdd(&s.counter->next, 1u)) + grid_size() / kClusterM);
  return t + grid_size();
}

// The dynamic deal's drawing producer, after its draw past the end. The one that finishes last resets the counter
// for the next kernel on the stream (which starts after this one ends): every draw of a CTA came before its count
// (the fence orders them), so no draw of this grid is left to see the reset. `drawers`: CTAs that draw.
__forceinline__ __device__ void finish_draws(TileCounter* counter, int drawers) {
  __threadfence();
  if (atomicAdd(&counter->finished, 1u) == unsigned(drawers) - 1u) {
    atomicExch(&counter->next, 0u);
    atomicExch(&counter->finished, 0u);
  }
}

// The two CTAs of a pair, through distributed shared memory: the dynamic deal's hand-off of each drawn pair of tiles
// (Sm90TileStream). Arrivals release and waits acquire at cluster scope, so a slot written into the other CTA is
// visible to whoever waits on its barrier there.
__forceinline__ __device__ uint32_t cluster_address(const void* local, uint32_t cta) {
  uint32_t address;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(address)
               : "r"(cute::cast_smem_ptr_to_uint(local)), "r"(cta));
  return address;
}
__forceinline__ __device__ void store_in_cta(int* local, uint32_t cta, int value) {
  asm volatile("st.shared::cluster.s32 [%0], %1;" ::"r"(cluster_address(local, cta)), "r"(value) : "memory");
}
// (Templates on the barrier type, cutlass::arch::ClusterBarrier: the SM80 family includes this header without it.)
template <typename Barrier>
__forceinline__ __device__ void arrive_in_cta(Barrier& barrier, uint32_t cta) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(cluster_address(&barrier, cta))
               : "memory");
}
template <typename Barrier>
__forceinline__ __device__ void wait_cluster_scope(Barrier& barrier, int parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n"
      "}\n" ::"r"(cute::cast_smem_ptr_to_uint(&barrier)),
      "r"(parity)
      : "memory");
}

// The tiles one SM90 CTA runs, as its producer and its consumers walk them: the same tiles in the same order,
// skipping the same empty ones (causal rows that see no key), so the K/V/Q barrier phases agree. Under a static deal
// (and one CTA per tile) each role steps by the grid itself; under a dynamic one the producer draws each next tile
// and hands it on: the i-th tile goes through slot i % 2, whose full barrier completes for the i/2-th time when it
// is written and whose empty barrier when every consumer has read it. The index past the end is handed on too: it
// stops the consumers. A packed batch's tiles are entries of its list (their count is known only on the device),
// handed on with their index. A pair (kClusterM == 2) under a dynamic deal: the first CTA's producer draws pairs of
// tiles and writes each into its own slot and the second CTA's; the second's producer takes its tile from its slot
// as its consumers do, and all of them release the slot on the first CTA's empty barrier. The deal is a property of
// the call (make_persistent_scheduler), so one kernel serves all three and the roles call the same functions
// whichever it is; the producer's test of it is one uniform branch per tile. `Storage` holds the slots and their
// barriers (Sm90FwdTraits::SharedStorage).
template <bool kVarlen, int kClusterM, typename Storage>
class Sm90TileStream {
  static constexpr bool kPairs = kClusterM == 2;
  static_assert(!(kVarlen && kPairs), "a packed batch's tiles are drawn one CTA at a time");

 public:
  // Readers of a slot that its empty barrier counts (the first CTA's, for a pair): every consumer thread, and the
  // second CTA's producer.
  static constexpr int slot_readers(int consumer_threads) { return consumer_threads * kClusterM + kClusterM - 1; }

  struct Work {
    int index;         // in the flat tile order (dense calls) or the tile list (packed batches)
    VarlenTile entry;  // packed batches: the list's entry for the tile
  };

  __forceinline__ __device__ Sm90TileStream(const PersistentTileScheduler& scheduler, const FwdParams& args,
                                            Storage& storage)
      : scheduler_(scheduler), args_(args), storage_(storage), list_size_(kVarlen ? *args.varlen_tiles.num_tiles : 0) {}

  // A dense call's count and deal are read from the kernel's parameters at each use, which costs the producer (24
  // registers) no register.
  __forceinline__ __device__ bool done(const Work& work) const {
    return work.index >= (kVarlen ? list_size_ : scheduler_.num_tiles);
  }

  // Each role's loop: take a tile (done: the one past the end), run it, advance. The producer hands each tile on
  // under a dynamic deal, and calls finish() after the tile past the end; the consumers take what it handed on, or
  // step by the grid as it does.
  __forceinline__ __device__ Work producer_take() {
    if (handed_tiles()) return take();
    return hand_on(next_);
  }
  __forceinline__ __device__ void producer_advance(const Work& work) {
    if (!handed_tiles()) next_ = next_tile<kClusterM>(scheduler_, work.index);
    ++round_;
  }
  __forceinline__ __device__ void producer_finish() const {
    if (dynamic() && !handed_tiles()) finish_draws(scheduler_.counter, grid_size() / kClusterM);
  }

  __forceinline__ __device__ Work consumer_take() {
    if (dynamic()) return take();
    return Work{next_, VarlenTile{}};
  }
  __forceinline__ __device__ void consumer_advance() {
    if (!dynamic()) next_ += grid_size();
    ++round_;
  }

  // Calls body(tile, rows, key_tiles, sequence) for the tile: its coordinates, its query rows, the key tiles those
  // rows see (mask.h), and where its sequence lies (TileSequence).
  template <bool kCausal, int kBlockM, int kBlockN, typename Body>
  __forceinline__ __device__ void visit(const Work& work, Body&& body) const {
    if constexpr (kVarlen) {
      const VarlenTile& entry = work.entry;
      const TileSequence<true> seq{entry.q_offset, entry.seqlen_q, entry.k_offset, entry.seqlen_k};
      const TileRows rows{entry.first_row, entry.end_row};
      body(varlen_tile_coord(args_, entry), rows,
           KeyMask<kCausal, kBlockN, TileSequence<true>>{args_, seq}.tiles_of_rows(rows.first, rows.end), seq);
    } else {
      const TileCoord tile = persistent_tile<kCausal, kClusterM>(scheduler_, args_, work.index);
      const TileRows rows = tile_rows(scheduler_, tile.m_block, kBlockM);
      const TileSequence<false> seq{};
      const KeyMask<kCausal, kBlockN, TileSequence<false>> mask{args_, seq};
      if constexpr (kCausal && kClusterM == 2) {  // the key tiles of both tiles' rows (the two share each load)
        const TileCoord other = persistent_tile<kCausal, kClusterM>(scheduler_, args_, work.index ^ 1);
        const TileRows partner = tile_rows(scheduler_, other.m_block, kBlockM);
        body(tile, rows, mask.tiles_of_rows(min(rows.first, partner.first), max(rows.end, partner.end)), seq);
      } else {
        body(tile, rows, mask.tiles_of_rows(rows.first, rows.end), seq);
      }
    }
  }

 private:
  // Whether this CTA's producer takes its tiles from its slot rather than drawing them: the second CTA of a pair
  // under a dynamic deal (a pair's CTAs are blocks 2c and 2c + 1).
  __forceinline__ __device__ bool handed_tiles() const { return kPairs && dynamic() && (blockIdx.x & 1u); }

  // The tile handed on through this round's slot (dynamic deals).
  __forceinline__ __device__ Work take() {
    const int slot = round_ & 1;
    if constexpr (kPairs) {
      wait_cluster_scope(storage_.barrier_tile_full[slot], (round_ >> 1) & 1);
    } else {
      storage_.barrier_tile_full[slot].wait((round_ >> 1) & 1);
    }
    Work work{storage_.tile_slot[slot], VarlenTile{}};
    next_ = work.index;
    if constexpr (kVarlen) work.entry = storage_.varlen_slot[slot];
    if constexpr (kPairs) {
      arrive_in_cta(storage_.barrier_tile_empty[slot], 0);  // the first CTA writes both CTAs' slots
    } else {
      storage_.barrier_tile_empty[slot].arrive();
    }
    return work;
  }

  __forceinline__ __device__ Work hand_on(int t) {
    VarlenTile entry{};
    if (dynamic()) {
      const int slot = round_ & 1;
      if constexpr (kVarlen) {
        if (t < list_size_) entry = args_.varlen_tiles.tiles[t];
      }
      // Waits on an "empty" barrier use the parity of the use before (a fresh barrier counts its phase -1 as done),
      // so the first uses pass at once without a branch: the producer has 24 registers.
      const int parity = ((round_ >> 1) & 1) ^ 1;  // the index it held before was read
      if constexpr (kPairs) {
        wait_cluster_scope(storage_.barrier_tile_empty[slot], parity);
        store_in_cta(&storage_.tile_slot[slot], 1, t + 1);  // the second CTA's tile of the pair
        arrive_in_cta(storage_.barrier_tile_full[slot], 1);
      } else {
        storage_.barrier_tile_empty[slot].wait(parity);
      }
      storage_.tile_slot[slot] = t;
      if constexpr (kVarlen) storage_.varlen_slot[slot] = entry;
      storage_.barrier_tile_full[slot].arrive();
    }
    return Work{t, entry};
  }

  __forceinline__ __device__ bool dynamic() const { return kVarlen || scheduler_.counter != nullptr; }

  const PersistentTileScheduler& scheduler_;
  const FwdParams& args_;
  Storage& storage_;
  const int list_size_;  // a packed batch's tiles (its list's count, read once)
  int next_ = int(blockIdx.x);  // the tile to take next (the producer's own, or as the consumers last saw it)
  int round_ = 0;               // tiles taken so far
};

}  // namespace flash
