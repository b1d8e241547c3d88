"""Decode-shaped attention in Triton: few query rows against a long KV cache, contiguous or paged.

Three kernels:
- `decode_kernel`, one program per (batch, K/V head, packed row block, key split). The query heads of a GQA group and
  the query rows are packed into one tile's rows (row r is query row r // group of head kv_head * group + r % group),
  so each K/V tile is read once per group rather than once per query head. The keys a row block sees are cut into
  `num_splits` contiguous ranges of whole tiles; each program runs the online softmax over its range and writes
  either the final output (one split) or a float32 partial output and its log-sum-exp.
- `combine_kernel`, one program per query row: merges the partials by their log-sum-exps.
- `append_kernel`, one program per (batch, K/V head, block of new tokens): writes new tokens into the cache.

Keys are addressed row by row, so one code path serves a contiguous cache ((B, Hkv, N_max, D), any strides) and a
paged one ((num_pages, Hkv, page_size, D) with a block table). Lengths and page indices come from device tensors the
host never reads; the kernels clamp them so that nothing outside the cache is read or written.
"""

import triton
import triton.language as tl

from ._kernel import LN2


@triton.jit
def _sequence_length(SeqLens, off_b, seqlen_new, capacity, HAS_SEQLENS: tl.constexpr):
    """Keys of sequence off_b after the append: cache_seqlens[b] + new tokens, clamped to the cache's capacity."""
    if HAS_SEQLENS:
        length = tl.load(SeqLens + off_b) + seqlen_new
        return tl.minimum(tl.maximum(length, 0), capacity)
    else:
        return capacity


@triton.jit
def _split_pages(BlockTable, table_row, lo, hi, PAGE_SIZE: tl.constexpr, SPLIT_PAGES: tl.constexpr):
    """The page indices of keys [lo, hi), lo // PAGE_SIZE onwards, in one load (SPLIT_PAGES covers them); the slots
    past hi's page hold 0."""
    slots = lo // PAGE_SIZE + tl.arange(0, SPLIT_PAGES)
    return tl.load(BlockTable + table_row + slots, mask=slots * PAGE_SIZE < hi, other=0)


@triton.jit
def _key_rows(BlockTable, table_row, keys, first_key, key_limit, stride_k_seq, stride_k_row, stride_v_seq,
              stride_v_row, num_pages, split_pages, split_first_key, PAGE_SIZE: tl.constexpr, ONE_PAGE: tl.constexpr,
              SPLIT_PAGES: tl.constexpr):
    """Element offsets of `keys` in the K and V caches (relative to the sequence's base for a contiguous cache, to
    the head's base for a paged one) and whether each key may be read: below key_limit and on a real page.
    ONE_PAGE: the keys are first_key + 0, 1, ... and lie inside one page. SPLIT_PAGES > 0: their page indices are
    in split_pages (_split_pages from split_first_key), so no key tile waits on a load of its own indices."""
    readable = keys < key_limit
    if PAGE_SIZE > 0:
        if SPLIT_PAGES > 0:
            slot = keys // PAGE_SIZE - split_first_key // PAGE_SIZE
            page = tl.gather(split_pages, tl.minimum(slot, SPLIT_PAGES - 1), axis=0)
        elif ONE_PAGE:
            # One index load per tile instead of a gather of one per key (which halved paged throughput at batch
            # 16, results/NOTES.md).
            page = tl.load(BlockTable + table_row + first_key // PAGE_SIZE) + tl.zeros_like(keys)
        else:
            page = tl.load(BlockTable + table_row + keys // PAGE_SIZE, mask=readable, other=0)
        readable = readable & (page >= 0) & (page < num_pages)
        page = page.to(tl.int64)
        in_page = (keys % PAGE_SIZE).to(tl.int64)
        return page * stride_k_seq + in_page * stride_k_row, page * stride_v_seq + in_page * stride_v_row, readable
    else:
        keys64 = keys.to(tl.int64)
        return keys64 * stride_k_row, keys64 * stride_v_row, readable


@triton.jit
def _cache_bases(K, V, off_b, off_kv, stride_kb, stride_kh, stride_vb, stride_vh, PAGE_SIZE: tl.constexpr):
    """Where (batch off_b, K/V head off_kv) starts in the caches: its sequence's rows (contiguous), or the head's
    offset inside every page (paged: _key_rows adds the page)."""
    if PAGE_SIZE > 0:
        return K + off_kv.to(tl.int64) * stride_kh, V + off_kv.to(tl.int64) * stride_vh
    else:
        return (K + off_b.to(tl.int64) * stride_kb + off_kv.to(tl.int64) * stride_kh,
                V + off_b.to(tl.int64) * stride_vb + off_kv.to(tl.int64) * stride_vh)


@triton.jit
def decode_kernel(
    Q, K, V, Out, Lse, SeqLens, BlockTable,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,  # stride_kb: per sequence (contiguous) or per page (paged); likewise V
    stride_vb, stride_vh, stride_vn,
    stride_os, stride_ob, stride_oh, stride_om,  # stride_os: per split (0 when Out is the final output)
    stride_ls,  # Lse is (splits, B, Hq, Nq) with this split stride, or (B, Hq, Nq)
    stride_tb,  # block table: per sequence (its entries are contiguous in a row)
    heads_kv, group, seqlen_q, capacity, seqlen_new, head_dim, num_pages, qk_scale, num_splits,
    IS_CAUSAL: tl.constexpr, POSITIVE_SCALE: tl.constexpr, HAS_SEQLENS: tl.constexpr, PAGE_SIZE: tl.constexpr,
    SPLIT_PAGES: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    # Axis 0 (limit 2^31 - 1): (batch, K/V head, row block); axis 1: the key split (at most MAX_NUM_SPLITS).
    pid = tl.program_id(0)
    split = tl.program_id(1)
    packed_rows = group * seqlen_q
    num_row_blocks = tl.cdiv(packed_rows, BLOCK_M)
    row_block = pid % num_row_blocks
    off_kv = (pid // num_row_blocks) % heads_kv
    off_b = pid // (num_row_blocks * heads_kv)

    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < packed_rows
    query_row = rows // group
    head = off_kv * group + rows % group
    cols = tl.arange(0, HEAD_DIM_PAD)
    col_ok = cols < head_dim

    q_ptrs = (Q + off_b.to(tl.int64) * stride_qb + head[:, None].to(tl.int64) * stride_qh
              + query_row[:, None].to(tl.int64) * stride_qm + cols[None, :])
    q = tl.load(q_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    # Row i of sequence b sits at position length - seqlen_q + i; causal, it sees keys up to that position.
    length = _sequence_length(SeqLens, off_b, seqlen_new, capacity, HAS_SEQLENS)
    if IS_CAUSAL:
        row_limit = tl.minimum(tl.maximum(length - seqlen_q + 1 + query_row, 0), length)
        last_row = tl.minimum(row_block * BLOCK_M + BLOCK_M, packed_rows) - 1
        block_limit = tl.minimum(tl.maximum(length - seqlen_q + 1 + last_row // group, 0), length)
    else:
        row_limit = tl.zeros([BLOCK_M], dtype=tl.int32) + length
        block_limit = length
    tiles = tl.cdiv(block_limit, BLOCK_N)
    tiles_per_split = tl.cdiv(tiles, num_splits)
    lo = split * tiles_per_split * BLOCK_N
    hi = tl.minimum(lo + tiles_per_split * BLOCK_N, block_limit)

    k_base, v_base = _cache_bases(K, V, off_b, off_kv, stride_kb, stride_kh, stride_vb, stride_vh, PAGE_SIZE)
    table_row = off_b.to(tl.int64) * stride_tb
    # A paged split's page indices, loaded before its first tile where they fit SPLIT_PAGES: each tile's own index
    # load would be a DRAM latency between the length and the tile's K/V, and between one tile and the next in the
    # pipeline's prologue (results/NOTES.md, "The Triton decode kernel's page indices").
    if SPLIT_PAGES > 0:
        split_pages = _split_pages(BlockTable, table_row, lo, hi, PAGE_SIZE, SPLIT_PAGES)
    else:
        split_pages = 0

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # With a positive scale the max commutes with scaling, so the scale rides inside exp2's argument; any other
    # finite scale multiplies the scores first so that the max and the -inf mask stay right.
    exp_scale = qk_scale if POSITIVE_SCALE else 1.0
    offs_n = tl.arange(0, BLOCK_N)
    for start in tl.range(lo, hi, BLOCK_N):
        keys = start + offs_n
        # Tiles start at multiples of BLOCK_N, so a page of a multiple of BLOCK_N keys holds whole tiles.
        k_rows, v_rows, readable = _key_rows(BlockTable, table_row, keys, start, hi, stride_kb, stride_kn, stride_vb,
                                             stride_vn, num_pages, split_pages, lo, PAGE_SIZE,
                                             PAGE_SIZE % BLOCK_N == 0, SPLIT_PAGES)
        kv_mask = readable[:, None] & col_ok[None, :]
        k = tl.load(k_base + k_rows[:, None] + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + v_rows[:, None] + cols[None, :], mask=kv_mask, other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k))
        if not POSITIVE_SCALE:
            scores = scores * qk_scale
        visible = readable[None, :] & (keys[None, :] < row_limit[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1) * exp_scale)
        # A row that has seen no key keeps max -inf; exponentiate against 0 instead so that exp2 gives 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.math.exp2(scores * exp_scale - shift[:, None])
        correction = tl.math.exp2(row_max - shift)
        row_sum = row_sum * correction + tl.sum(p, 1)
        if DOT_IN_FP32:
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None])
        row_max = new_max

    # A row (or a split) that saw no key has row_sum 0: output 0 and LSE -inf, never NaN.
    lse = (row_max + tl.math.log2(row_sum)) * LN2
    out = acc * (1.0 / tl.where(row_sum == 0.0, 1.0, row_sum))[:, None]  # one division a row (_hopper_kernel.py)
    o_ptrs = (Out + split.to(tl.int64) * stride_os + off_b.to(tl.int64) * stride_ob
              + head[:, None].to(tl.int64) * stride_oh + query_row[:, None].to(tl.int64) * stride_om + cols[None, :])
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    lse_rows = (off_b.to(tl.int64) * heads_kv * group + head) * seqlen_q + query_row
    tl.store(Lse + split.to(tl.int64) * stride_ls + lse_rows, lse, mask=row_ok)


@triton.jit
def combine_kernel(
    Partial, PartialLse, Out, Lse,
    rows_total, heads_q, seqlen_q, head_dim, num_splits,
    stride_ob, stride_oh, stride_om,
    SPLITS_PAD: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
):
    """Out[row] = sum_s w_s Partial[s, row], w_s = exp(lse_s - lse), lse = log sum_s exp(lse_s); Partial is
    (splits, rows_total, head_dim) float32 and PartialLse (splits, rows_total), rows ordered as (B, Hq, Nq)."""
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < num_splits
    lses = tl.load(PartialLse + splits * rows_total + row, mask=split_ok, other=float("-inf"))
    top = tl.max(lses, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weights = tl.exp(lses - top)
    total = tl.sum(weights, 0)
    cols = tl.arange(0, HEAD_DIM_PAD)
    parts = tl.load(Partial + (splits[:, None] * rows_total + row) * head_dim + cols[None, :],
                    mask=split_ok[:, None] & (cols[None, :] < head_dim), other=0.0)
    out = tl.sum(parts * weights[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    query_row = row % seqlen_q
    head = (row // seqlen_q) % heads_q
    off_b = row // (seqlen_q * heads_q)
    tl.store(Out + off_b * stride_ob + head * stride_oh + query_row * stride_om + cols,
             out.to(Out.dtype.element_ty), mask=cols < head_dim)
    tl.store(Lse + row, top + tl.log(total))


@triton.jit
def append_kernel(
    KNew, VNew, KCache, VCache, SeqLens, BlockTable,
    stride_nb, stride_nh, stride_nn, stride_wb, stride_wh, stride_wn,  # new K, new V: (B, Hkv, Nnew, D)
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,  # caches, as in decode_kernel
    stride_tb,
    heads_kv, seqlen_new, capacity, head_dim, num_pages,
    PAGE_SIZE: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Writes new tokens t of (batch, K/V head) to cache position cache_seqlens[b] + t; positions outside the cache
    (or on a page index outside it) are skipped."""
    pid = tl.program_id(0)
    off_kv = pid % heads_kv
    off_b = pid // heads_kv
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    positions = tl.load(SeqLens + off_b) + tokens
    writable = (tokens < seqlen_new) & (positions >= 0)
    k_rows, v_rows, writable = _key_rows(BlockTable, off_b.to(tl.int64) * stride_tb, tl.maximum(positions, 0), 0,
                                         tl.where(writable, capacity, 0), stride_kb, stride_kn, stride_vb, stride_vn,
                                         num_pages, 0, 0, PAGE_SIZE, False, 0)
    cols = tl.arange(0, HEAD_DIM_PAD)
    mask = writable[:, None] & (cols[None, :] < head_dim)
    new_rows = tokens[:, None].to(tl.int64)
    k = tl.load(KNew + off_b.to(tl.int64) * stride_nb + off_kv.to(tl.int64) * stride_nh + new_rows * stride_nn
                + cols[None, :], mask=mask)
    v = tl.load(VNew + off_b.to(tl.int64) * stride_wb + off_kv.to(tl.int64) * stride_wh + new_rows * stride_wn
                + cols[None, :], mask=mask)
    k_base, v_base = _cache_bases(KCache, VCache, off_b, off_kv, stride_kb, stride_kh, stride_vb, stride_vh,
                                  PAGE_SIZE)
    tl.store(k_base + k_rows[:, None] + cols[None, :], k, mask=mask)
    tl.store(v_base + v_rows[:, None] + cols[None, :], v, mask=mask)
