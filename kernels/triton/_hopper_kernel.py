"""The forward pass for Hopper in Gluon (Triton's tile-level language): warp-specialized, FlashAttention-3's shape.

Why a second Triton kernel: `tl.dot` cannot overlap the softmax of one key tile with the matrix products of the
next, nor split a CTA into a loading warp and computing warpgroups, on Triton 3.6-3.9 (results/NOTES.md, "Triton on
Hopper"), and those two overlaps are what separates FlashAttention-2's 0.73-0.79x of cuDNN at head dim 128 from
FlashAttention-3's parity. Gluon exposes the pieces: TMA copies, mbarriers, asynchronous warpgroup MMAs and warp
specialization.

A CTA runs work tiles of 128 query rows of one (batch, head) in three partitions:
- the loader (one warp): each tile's Q into one of two Q buffers, then its K and V tiles by TMA into a ring of
  STAGES buffers; every buffer has a "ready" mbarrier (completed by the copy's bytes) and an "empty" one (completed
  when both consumers are done with it);
- two consumers (a warpgroup each, 64 of the tile's query rows each): S = Q K^T and O += P V as asynchronous wgmma
  with P in registers; while O += P V of key tile j - 1 runs on the tensor cores, the softmax of tile j runs on the
  FMA and MUFU pipes (FlashAttention-3's intra-warpgroup overlap). The output leaves through the consumer's part of
  the Q buffer by a TMA store, whose completion frees that buffer for the tile after next.
Causal rows see a prefix of the keys: each consumer walks the key tiles its own rows see, masks only the tiles that
cross the diagonal or the end of the keys, and releases unread the tiles loaded for the other consumer's later rows.
Key tiles run from the last down (the masked ones first, FlashAttention-2's order): the CTAs that run one head's
tiles at once then begin on different K/V tiles, where from the first up they all wait for the same ones (+1-3% at
causal rows of 512-2k keys, H100; results/NOTES.md, twenty-third session).
Query rows past seqlen_q and keys past seqlen_k are zero-filled by TMA (4-D descriptors, so the bounds are per head)
and the output store stops at seqlen_q.
The grid is persistent: a CTA per SM (at most one per work tile) walks its share of the work list, dealt round-robin
where tiles are equal (no mask) and drawn from a global counter where they are not (causal): the loader draws its
CTA's next tile while it loads the current one and hands it to the consumers with the Q buffer.

Scope: head dims 64 and 128, fp16/bf16, dense calls with a positive softmax scale and TMA-compatible strides on
compute capability 9.x (`flash_attention.triton.sm90_kernel_applies` decides); everything else runs the portable
kernel (_kernel.py).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from ._kernel import LN2

# The TMA copies are async_copy_* in Triton 3.6 (the GPU machine) and async_load/async_store in newer ones (CI).
_tma_load = getattr(tma, "async_load", tma.async_copy_global_to_shared)
_tma_store = getattr(tma, "async_store", tma.async_copy_shared_to_global)

# Rows of a consumer warpgroup (the M of one wgmma), and consumers per CTA.
CONSUMER_ROWS = gl.constexpr(64)
CONSUMERS = gl.constexpr(2)
BLOCK_M = gl.constexpr(CONSUMER_ROWS.value * CONSUMERS.value)


@gluon.jit
def _key_tile_counts(first_row, rows, seqlen_q, seqlen_k, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """(tiles, unmasked): the key tiles rows [first_row, first_row + rows) see, and how many of those every one of
    the rows sees in full (no mask). Causal is bottom-right aligned: row i sees key j iff j <= i + seqlen_k -
    seqlen_q."""
    if IS_CAUSAL:
        diagonal = seqlen_k - seqlen_q
        end = gl.minimum(gl.maximum(first_row + rows + diagonal, 0), seqlen_k)
        unmasked = gl.minimum(gl.maximum(first_row + diagonal + 1, 0) // BLOCK_N, seqlen_k // BLOCK_N)
    else:
        end = seqlen_k
        unmasked = seqlen_k // BLOCK_N
    return gl.cdiv(end, BLOCK_N), unmasked


@gluon.jit
def _work_tile(position, num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k,
               BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """The work tile at `position` of the list: (batch x head, batch, head, K/V head, first query row, key tiles its
    last row sees). Without a mask the list is head-major (a head's tiles adjacent, so that CTAs running at once
    share its K/V in L2); causal, by sections of section_heads heads (>= 1) whose K/V fit a share of the L2
    together (sm90_section_heads): every head of a section gives its longest tile, then its next, ..., so the list
    runs longest first in a section."""
    num_m_blocks = gl.cdiv(seqlen_q, BLOCK_M)
    if IS_CAUSAL:  # by sections of heads, longest first
        section_tiles = section_heads * num_m_blocks
        section = position // section_tiles
        rank = position - section * section_tiles
        heads_here = gl.minimum(section_heads, num_tiles // num_m_blocks - section * section_heads)
        index = rank // heads_here
        bh = section * section_heads + rank - index * heads_here
        m_block = num_m_blocks - 1 - index
    else:  # head-major
        bh = position // num_m_blocks
        m_block = position % num_m_blocks
    start_m = m_block * BLOCK_M
    off_h = bh % heads_q
    block_tiles, _ = _key_tile_counts(start_m, BLOCK_M, seqlen_q, seqlen_k, BLOCK_N, IS_CAUSAL)
    return bh, bh // heads_q, off_h, off_h // group, start_m, block_tiles


@gluon.jit
def _draw(counter, count, DYNAMIC: gl.constexpr):
    """The list position of this CTA's next work tile, its `count`-th (its first, count 0, is its own index): dealt
    round-robin (static), or the next unstarted one, drawn from the counter (dynamic)."""
    if DYNAMIC:
        return gl.atomic_add(counter, 1) + gl.num_programs(0)
    else:
        return count * gl.num_programs(0) + gl.program_id(0)


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
            tile_slot, counter, num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k, BLOCK_N: gl.constexpr,
            STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, DYNAMIC: gl.constexpr):
    # Waits on an "empty" barrier take the parity before its first completion, which counts as done, so the first
    # use of each buffer passes at once.
    slot_layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    loaded = 0  # K/V tiles so far: ring position loaded % STAGES
    count = 0  # work tiles so far: Q buffer count % 2
    position = gl.program_id(0)
    while position < num_tiles:
        bh, off_b, off_h, off_kv, start_m, block_tiles = _work_tile(position, num_tiles, section_heads,
                                                                    heads_q, group, seqlen_q, seqlen_k, BLOCK_N,
                                                                    IS_CAUSAL)
        buffer = count % 2
        mbarrier.wait(q_empty.index(buffer), ((count // 2) & 1) ^ 1)
        # The consumers learn the tile from its slot, which the Q buffer's ready barrier publishes.
        tile_slot.index(buffer).store(gl.full([1], position, gl.int32, layout=slot_layout))
        mbarrier.expect(q_ready.index(buffer), CONSUMERS * q_desc.block_type.nbytes)
        for half in gl.static_range(CONSUMERS):
            _tma_load(q_desc, [off_b, off_h, start_m + half * CONSUMER_ROWS, 0], q_ready.index(buffer),
                      q_smem.index(buffer * CONSUMERS + half))
        position = _draw(counter, count + 1, DYNAMIC)  # a whole tile ahead: its latency hides under the loads
        for j in range(block_tiles - 1, -1, -1):  # the last key tile first (_consumer)
            stage = loaded % STAGES
            parity = ((loaded // STAGES) & 1) ^ 1
            mbarrier.wait(k_empty.index(stage), parity)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            _tma_load(k_desc, [off_b, off_kv, j * BLOCK_N, 0], k_ready.index(stage), k_smem.index(stage))
            mbarrier.wait(v_empty.index(stage), parity)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            _tma_load(v_desc, [off_b, off_kv, j * BLOCK_N, 0], v_ready.index(stage), v_smem.index(stage))
            loaded += 1
        count += 1
    # Past the end: a slot without a Q load tells the consumers to stop.
    buffer = count % 2
    mbarrier.wait(q_empty.index(buffer), ((count // 2) & 1) ^ 1)
    tile_slot.index(buffer).store(gl.full([1], position, gl.int32, layout=slot_layout))
    mbarrier.arrive(q_ready.index(buffer), count=1)
    if DYNAMIC:
        # Every draw of this CTA is done; the last CTA to get here finds every draw of the grid done and leaves the
        # counter zero for the next kernel on the stream.
        if gl.atomic_add(counter + 1, 1) == gl.num_programs(0) - 1:
            gl.atomic_xchg(counter, 0)
            gl.atomic_xchg(counter + 1, 0)


@gluon.jit
def _masked(scores, tile, first_row, seqlen_q, seqlen_k, layout: gl.constexpr, ROWS: gl.constexpr,
            BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """Key tile `tile`'s scores with the keys a row does not see at -inf. One limit per row (where the keys it sees
    end, counted from the tile's first key), so that each score costs one comparison with its column, as in the cuda
    backend's mask.h. Measured against a key index per score tested twice: 256 fewer selects in the causal kernel's
    SASS, 1-3% at causal 512-2k on an H100 (results/NOTES.md, twenty-first session)."""
    columns = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    if IS_CAUSAL:
        rows = first_row + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
        limit = gl.minimum(rows + (seqlen_k - seqlen_q + 1 - tile * BLOCK_N), seqlen_k - tile * BLOCK_N)
        visible = gl.expand_dims(columns, 0) < gl.expand_dims(limit, 1)
    else:
        visible = gl.expand_dims(columns < seqlen_k - tile * BLOCK_N, 0)
    return gl.where(visible, scores, float("-inf"))


@gluon.jit
def _softmax(scores, row_max, row_sum, qk_scale, MASKED: gl.constexpr):
    """One key tile of the online softmax in base 2 (qk_scale = softmax scale x log2 e, positive): the tile's
    probabilities, the new running max and sum, and the factor that rescales what was accumulated before."""
    new_max = gl.maximum(row_max, gl.max(scores, 1) * qk_scale)
    base = new_max
    if MASKED:
        # A row that has seen no key yet keeps max -inf (a later tile may show it keys); its exponentials take 0 as
        # the max, so that exp2 gives 0, not NaN.
        base = gl.where(new_max == float("-inf"), 0.0, new_max)
    p = gl.exp2(scores * qk_scale - gl.expand_dims(base, 1))
    alpha = gl.exp2(row_max - base)
    return p, new_max, row_sum * alpha + gl.sum(p, 1), alpha


@gluon.jit
def _release_previous_output(q_empty, buffer, count):
    """The previous work tile's output left through the other Q buffer: once its store has read it, the loader may
    fill that buffer with the next tile's Q. Called early in a tile, so that load overlaps this tile's work."""
    tma.store_wait(0)
    mbarrier.arrive(q_empty.index(1 - buffer), count=1, pred=count > 0)


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, tile_slot, o_desc, Lse,
              num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k, qk_scale,
              WARPGROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              IS_CAUSAL: gl.constexpr):
    ROWS: gl.constexpr = CONSUMER_ROWS
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    no_scores = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)

    slot_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    consumed = 0  # K/V tiles so far, as the loader counts them
    count = 0  # work tiles so far
    buffer = 0
    mbarrier.wait(q_ready.index(buffer), 0)
    position = gl.max(tile_slot.index(buffer).load(slot_layout), 0)
    while position < num_tiles:
        bh, off_b, off_h, _, start_m, block_tiles = _work_tile(position, num_tiles, section_heads,
                                                               heads_q, group, seqlen_q, seqlen_k, BLOCK_N, IS_CAUSAL)
        q_tile = q_smem.index(buffer * CONSUMERS + WARPGROUP)
        q = q_tile.reshape([ROWS, HEAD_DIM])
        first_row = start_m + WARPGROUP * ROWS
        tiles, unmasked = _key_tile_counts(first_row, ROWS, seqlen_q, seqlen_k, BLOCK_N, IS_CAUSAL)
        tiles = gl.minimum(tiles, block_tiles)

        # Tiles loaded for the other consumer's later rows (causal) come first: released unread.
        for i in range(block_tiles - tiles):
            stage = (consumed + i) % STAGES
            mbarrier.wait(k_ready.index(stage), ((consumed + i) // STAGES) & 1)
            mbarrier.arrive(k_empty.index(stage), count=1)
            mbarrier.wait(v_ready.index(stage), ((consumed + i) // STAGES) & 1)
            mbarrier.arrive(v_empty.index(stage), count=1)
        consumed += block_tiles - tiles

        row_max = gl.full([ROWS], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        row_sum = gl.zeros([ROWS], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
        if tiles > 0:
            # Step i reads key tile tiles - 1 - i: the masked tiles (the diagonal's, the keys' end) come first.
            stage = consumed % STAGES
            mbarrier.wait(k_ready.index(stage), (consumed // STAGES) & 1)
            scores = warpgroup_mma(q, k_smem.index(stage).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), no_scores,
                                   use_acc=False, is_async=True)
            scores = warpgroup_mma_wait(0, deps=(scores, ))
            mbarrier.arrive(k_empty.index(stage), count=1)
            _release_previous_output(q_empty, buffer, count)
            if tiles > unmasked:
                scores = _masked(scores, tiles - 1, first_row, seqlen_q, seqlen_k, s_layout, ROWS, BLOCK_N,
                                 IS_CAUSAL)
                p, row_max, row_sum, alpha = _softmax(scores, row_max, row_sum, qk_scale, True)
            else:
                p, row_max, row_sum, alpha = _softmax(scores, row_max, row_sum, qk_scale, False)
            p = gl.convert_layout(p.to(dtype), p_layout)
            for i in range(1, tiles):
                stage = (consumed + i) % STAGES
                before = (consumed + i - 1) % STAGES
                mbarrier.wait(k_ready.index(stage), ((consumed + i) // STAGES) & 1)
                scores = warpgroup_mma(q, k_smem.index(stage).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                                       no_scores, use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(before), ((consumed + i - 1) // STAGES) & 1)
                acc = warpgroup_mma(p, v_smem.index(before).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                # Groups complete in order: with one left in flight, S of this step is done while P V of the
                # previous one runs on the tensor cores beside this step's softmax.
                scores = warpgroup_mma_wait(1, deps=(scores, ))
                mbarrier.arrive(k_empty.index(stage), count=1)
                if tiles - 1 - i >= unmasked:
                    scores = _masked(scores, tiles - 1 - i, first_row, seqlen_q, seqlen_k, s_layout, ROWS, BLOCK_N,
                                     IS_CAUSAL)
                    p_next, row_max, row_sum, alpha = _softmax(scores, row_max, row_sum, qk_scale, True)
                else:
                    p_next, row_max, row_sum, alpha = _softmax(scores, row_max, row_sum, qk_scale, False)
                acc, p = warpgroup_mma_wait(0, deps=(acc, p))
                mbarrier.arrive(v_empty.index(before), count=1)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
                p = gl.convert_layout(p_next.to(dtype), p_layout)
            last = (consumed + tiles - 1) % STAGES
            mbarrier.wait(v_ready.index(last), ((consumed + tiles - 1) // STAGES) & 1)
            acc = warpgroup_mma(p, v_smem.index(last).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
            acc, p = warpgroup_mma_wait(0, deps=(acc, p))
            mbarrier.arrive(v_empty.index(last), count=1)
        else:
            _release_previous_output(q_empty, buffer, count)
        consumed += tiles

        # Epilogue. A row that saw no key has row_sum 0: output 0 and LSE -inf (log2(0) = -inf), never NaN.
        rows = first_row + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
        gl.store(Lse + bh.to(gl.int64) * seqlen_q + rows, (row_max + gl.log2(row_sum)) * LN2, mask=rows < seqlen_q)
        # One division a row, then a product an element: a float32 division an element compiles to a range-checked
        # sequence (FMUL, FSEL and a rescale each), 2.5-7% of the kernel at rows of 512-2k keys (H100).
        inverse = gl.convert_layout(1.0 / gl.where(row_sum == 0.0, 1.0, row_sum), o_rows)
        # The output leaves through this consumer's part of the Q buffer (its last S product has completed); the
        # store stops at seqlen_q (the descriptor's bound).
        q.store((acc * gl.expand_dims(inverse, 1)).to(dtype))
        fence_async_shared()
        _tma_store(o_desc, [off_b, off_h, first_row, 0], q_tile)
        count += 1
        buffer = count % 2
        mbarrier.wait(q_ready.index(buffer), (count // 2) & 1)
        position = gl.max(tile_slot.index(buffer).load(slot_layout), 0)
    tma.store_wait(0)


@gluon.jit
def attention_fwd_sm90_kernel(q_desc, k_desc, v_desc, o_desc, Lse, TileCounter, seqlen_q, seqlen_k, heads_q, group,
                              num_tiles, section_heads, qk_scale, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                              STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, DYNAMIC: gl.constexpr):
    """Q, K, V and Out as 4-D (batch, heads, seqlen, head_dim) TMA descriptors (blocks [1, 1, CONSUMER_ROWS,
    HEAD_DIM] for Q and Out, [1, 1, BLOCK_N, HEAD_DIM] for K and V), Lse (batch, heads_q, seqlen_q) float32.
    Persistent: each CTA runs its share of the num_tiles = batch x heads_q x cdiv(seqlen_q, BLOCK_M) work tiles
    (_draw, _work_tile), so its set-up is paid once and the next tile's Q and K/V loads overlap this
    tile's last products and its output store."""
    dtype: gl.constexpr = q_desc.dtype
    # Two Q buffers (each CONSUMERS parts of CONSUMER_ROWS rows), so the next tile's Q loads during this tile.
    q_smem = gl.allocate_shared_memory(dtype, [2 * CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    # Each Q buffer's work tile (its list position), written by the loader before the buffer's ready barrier.
    tile_slot = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    for buffer in gl.static_range(2):
        mbarrier.init(q_ready.index(buffer), count=1)
        mbarrier.init(q_empty.index(buffer), count=CONSUMERS)
    for stage in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(stage), count=1)
        mbarrier.init(v_ready.index(stage), count=1)
        mbarrier.init(k_empty.index(stage), count=CONSUMERS)
        mbarrier.init(v_empty.index(stage), count=CONSUMERS)

    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, tile_slot, o_desc,
                     Lse, num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k, qk_scale, 0,
                     HEAD_DIM, BLOCK_N, STAGES, IS_CAUSAL)),
        (_consumer, (q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, tile_slot, o_desc,
                     Lse, num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k, qk_scale, 1,
                     HEAD_DIM, BLOCK_N, STAGES, IS_CAUSAL)),
        (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty,
                   v_empty, tile_slot, TileCounter, num_tiles, section_heads, heads_q, group, seqlen_q, seqlen_k,
                   BLOCK_N, STAGES, IS_CAUSAL, DYNAMIC)),
    ], [4, 1], [240, 24])
