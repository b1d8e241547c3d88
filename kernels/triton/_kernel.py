"""The FlashAttention-2 forward in Triton: one program per (batch, query head, BLOCK_M query rows).

Q is loaded once; K/V tiles stream through `_attend_tiles`, which is written once and called per stage:
  stage 1: key tiles every row of the block sees in full (no mask at all);
  stage 2: key tiles that cross the causal diagonal or the end of the keys (masked);
key tiles above the diagonal are never visited. The online softmax runs in float32 in base 2 with the softmax scale
folded into log2(e); the accumulator is rescaled only by the change of the running max, and divided by the row sum
once, in the epilogue.

Tiles move by TMA (host tensor descriptors over the 4-D (batch, heads, seqlen, head_dim) view, so any strides work)
where the GPU has it, and by masked pointer loads elsewhere and under the interpreter (Triton 3.9 removed block
pointers). Both zero-fill out-of-bounds rows and the head_dim padding columns (head_dim is padded to a power of two,
HEAD_DIM_PAD).

Packed variable-length batches (`attention_varlen`) run the same kernel (IS_VARLEN): the packed tensors are one batch
of total rows, and each program reads its sequence's row range from cu_seqlens. A tile's rows past its sequence read
the next sequence's rows (masked for keys, never stored for queries), so TMA still loads; the output is stored with
pointers, masked at the sequence's end. Its grid is the longest sequence's row blocks for every sequence (the extra
programs exit at once), or, where that would be more than twice as many programs (one long sequence among many short
ones: SEARCH_SEQUENCE), the packed rows' blocks plus one per sequence, each program finding its sequence by a binary
search over cu_seqlens_q (_varlen_row_block).
"""

import triton
import triton.language as tl

from .._validation import LOG2E, softmax_scale_sign

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr: jit code may read only constexpr globals


def kernel_scale(softmax_scale: float) -> tuple[float, bool]:
    """(qk_scale, positive): the softmax scale in base 2, as the kernels take it (zero where the package's scale rule,
    flash_attention._validation.softmax_scale_sign, says the softmax is uniform), and whether it is positive (then the
    kernels fold it into exp2's argument)."""
    sign = softmax_scale_sign(softmax_scale)
    return (softmax_scale * LOG2E if sign != 0 else 0.0), sign > 0


@triton.jit
def _tile_pointers(base, start, seqlen, stride_n, head_dim, BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
    rows = start + tl.arange(0, BLOCK)
    cols = tl.arange(0, HEAD_DIM_PAD)
    # int64 row offsets: seqlen x stride may pass 2^31 elements.
    ptrs = base + rows[:, None].to(tl.int64) * stride_n + cols[None, :]
    return ptrs, (rows[:, None] < seqlen) & (cols[None, :] < head_dim)


@triton.jit
def _load_tile(desc, base, off_b, off_h, start, seqlen, stride_n, head_dim,
               BLOCK: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, USE_TMA: tl.constexpr):
    if USE_TMA:
        return desc.load([off_b, off_h, start, 0]).reshape(BLOCK, HEAD_DIM_PAD)
    else:
        ptrs, in_bounds = _tile_pointers(base, start, seqlen, stride_n, head_dim, BLOCK, HEAD_DIM_PAD)
        return tl.load(ptrs, mask=in_bounds, other=0.0)


@triton.jit
def _attend_tiles(acc, row_sum, row_max, q, K, V, k_base, v_base, off_b, off_kv_head, offs_m, lo, hi,
                  q_end, k_end, stride_kn, stride_vn, head_dim, qk_scale,
                  MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, POSITIVE_SCALE: tl.constexpr,
                  BLOCK_N: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, USE_TMA: tl.constexpr,
                  DOT_IN_FP32: tl.constexpr):
    """Key tiles [lo, hi) of rows offs_m. Rows and keys are absolute (packed) indices that end at q_end and k_end: a
    key j is visible to row i iff j < k_end and, causal, j <= i + k_end - q_end (bottom-right aligned)."""
    offs_n = tl.arange(0, BLOCK_N)
    # With a positive scale the max commutes with scaling, so the scale rides in the FMA inside exp2's argument.
    # Any other finite scale (negative, zero) scales first so that the max and the -inf mask stay right.
    exp_scale = qk_scale if POSITIVE_SCALE else 1.0
    for start_n in tl.range(lo, hi, BLOCK_N):
        k = _load_tile(K, k_base, off_b, off_kv_head, start_n, k_end, stride_kn, head_dim,
                       BLOCK_N, HEAD_DIM_PAD, USE_TMA)
        if DOT_IN_FP32:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k))
        if not POSITIVE_SCALE:
            qk = qk * qk_scale
        if MASKED:
            cols = start_n + offs_n
            visible = cols[None, :] < k_end
            if IS_CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + (k_end - q_end))
            qk = tl.where(visible, qk, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(qk, 1) * exp_scale)
        if MASKED:
            # A row that has seen no key yet keeps max -inf; subtract 0 instead so exp2 gives 0, not NaN.
            new_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.math.exp2(qk * exp_scale - new_max[:, None])
        correction = tl.math.exp2(row_max - new_max)
        row_sum = row_sum * correction + tl.sum(p, 1)
        acc = acc * correction[:, None]
        v = _load_tile(V, v_base, off_b, off_kv_head, start_n, k_end, stride_vn, head_dim,
                       BLOCK_N, HEAD_DIM_PAD, USE_TMA)
        p = p.to(v.dtype)
        if DOT_IN_FP32:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p, v, acc)
        row_max = new_max
    return acc, row_sum, row_max


@triton.jit
def _sequence_start(cu_seqlens, index, total):
    """cu_seqlens[index] clamped into [0, total], whatever it holds (the caller's guarantee on device values cannot
    be checked without a sync; no access may leave the tensor)."""
    return tl.minimum(tl.maximum(tl.load(cu_seqlens + index), 0), total)


@triton.jit
def _sequence_bounds(cu_seqlens, index, total):
    """[start, end) of packed sequence `index`, clamped into [0, total] and end >= start."""
    start = _sequence_start(cu_seqlens, index, total)
    end = tl.minimum(tl.maximum(tl.load(cu_seqlens + index + 1), start), total)
    return start, end


@triton.jit
def _varlen_row_block(CuSeqlensQ, virtual_block, num_sequences, total_q, BLOCK_M: tl.constexpr):
    """(sequence, row block within it) of a packed batch's `virtual_block`. Sequence b owns the virtual blocks
    [first(b), first(b + 1)), first(b) = cu_seqlens_q[b] // BLOCK_M + b: that holds its cdiv(length, BLOCK_M) row
    blocks and at most two more, so cdiv(total_q, BLOCK_M) + num_sequences virtual blocks cover any batch, where a
    grid of the longest sequence's blocks for every sequence holds 919k programs x heads for 9k real row blocks at
    one 8k sequence among 448 of 128 tokens. A binary search over first(), which rises with b (the offsets clamped,
    _sequence_start). The row block may lie past the sequence's last (or, for a cu_seqlens_q[0] above 0, be
    negative): the caller skips those."""
    lo = num_sequences * 0  # first(lo) <= virtual_block < first(hi), hi == num_sequences standing for +inf
    hi = num_sequences + 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _sequence_start(CuSeqlensQ, mid, total_q) // BLOCK_M + mid <= virtual_block:
            lo = mid
        else:
            hi = mid
    return lo, virtual_block - (_sequence_start(CuSeqlensQ, lo, total_q) // BLOCK_M + lo)


@triton.jit(do_not_specialize=["seqlen_q_bucket", "seqlen_k_bucket", "total_q", "total_k", "num_sequences"])
def attention_fwd_kernel(
    Q, K, V, Out, Lse, CuSeqlensQ, CuSeqlensK,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads_q, group_size, seqlen_q, seqlen_k, head_dim, qk_scale,
    total_q, total_k,  # varlen: the packed rows of Q and K (the LSE row length and the clamp for cu_seqlens)
    num_sequences,  # varlen: the packed batch's sequences (cu_seqlens has one more entry)
    seqlen_q_bucket, seqlen_k_bucket,  # autotune keys only: a new length bucket retunes
    IS_CAUSAL: tl.constexpr, POSITIVE_SCALE: tl.constexpr, IS_BF16: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr, DOT_IN_FP32: tl.constexpr, IS_VARLEN: tl.constexpr, SEARCH_SEQUENCE: tl.constexpr,
):
    """Dense: Q (B, Hq, seqlen_q, D), K/V (B, Hkv, seqlen_k, D). Varlen (IS_VARLEN): the packed (total, H, D)
    tensors seen as one batch (1, H, total, D), sequence b's rows [CuSeqlensQ[b], CuSeqlensQ[b + 1]) and keys
    likewise; seqlen_q and seqlen_k are then the callers' max_seqlen bounds. Either way the kernel works on absolute
    row indices within [q_start, q_end) and [k_start, k_end)."""
    # One flat grid axis (limit 2^31 - 1) so that batch x heads beyond 65,535 needs no y/z dimension.
    pid = tl.program_id(0)
    if SEARCH_SEQUENCE:  # (virtual row block, head), heads innermost
        off_h = pid % heads_q
        off_b, m_index = _varlen_row_block(CuSeqlensQ, pid // heads_q, num_sequences, total_q, BLOCK_M)
    else:  # (batch x head, row block of the longest sequence)
        num_m_blocks = tl.cdiv(seqlen_q, BLOCK_M)
        bh = pid // num_m_blocks
        m_index = pid % num_m_blocks
        off_b = bh // heads_q
        off_h = bh % heads_q
    off_kv_head = off_h // group_size  # GQA: query heads of a group share one K/V head, never copied
    if IS_VARLEN:
        q_start, q_end = _sequence_bounds(CuSeqlensQ, off_b, total_q)
        k_start, k_end = _sequence_bounds(CuSeqlensK, off_b, total_k)
        seq_m_blocks = tl.cdiv(q_end - q_start, BLOCK_M)
        if (m_index < 0) | (m_index >= seq_m_blocks):  # past a shorter sequence's rows, or a spare searched block
            return
        addr_b = tl.zeros_like(off_b)  # every sequence lives in the one packed "batch"
    else:
        q_start, q_end, k_start, k_end = 0, seqlen_q, 0, seqlen_k
        seq_m_blocks = num_m_blocks
        addr_b = off_b
    m_block = m_index
    if IS_CAUSAL:
        m_block = seq_m_blocks - 1 - m_index  # bottom rows see the most keys: start them first
    start_m = q_start + m_block * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)

    # 64-bit base offsets: a (batch, head) slice may start past 2^31 elements.
    q_base = Q
    k_base = K
    v_base = V
    o_base = Out
    if not USE_TMA or IS_VARLEN:  # stored with pointers (see the epilogue)
        o_base = Out + addr_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    if not USE_TMA:
        q_base = Q + addr_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        k_base = K + addr_b.to(tl.int64) * stride_kb + off_kv_head.to(tl.int64) * stride_kh
        v_base = V + addr_b.to(tl.int64) * stride_vb + off_kv_head.to(tl.int64) * stride_vh

    q = _load_tile(Q, q_base, addr_b, off_h, start_m, q_end, stride_qm, head_dim,
                   BLOCK_M, HEAD_DIM_PAD, USE_TMA)
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    # Key ranges. Unmasked: [k_start, full_hi); masked: [full_hi, masked_hi); past masked_hi nothing is visible.
    full_tiles_k = (k_end - k_start) // BLOCK_N
    if IS_CAUSAL:
        diagonal = k_end - q_end  # row i sees key j iff j <= i + diagonal
        first_row_sees = tl.maximum(start_m + diagonal + 1 - k_start, 0)  # keys visible to the block's first row
        full_hi = k_start + tl.minimum(first_row_sees // BLOCK_N, full_tiles_k) * BLOCK_N
        masked_hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diagonal, k_start), k_end)
    else:
        full_hi = k_start + full_tiles_k * BLOCK_N
        masked_hi = k_end

    acc, row_sum, row_max = _attend_tiles(
        acc, row_sum, row_max, q, K, V, k_base, v_base, addr_b, off_kv_head, offs_m, k_start, full_hi,
        q_end, k_end, stride_kn, stride_vn, head_dim, qk_scale,
        False, IS_CAUSAL, POSITIVE_SCALE, BLOCK_N, HEAD_DIM_PAD, USE_TMA, DOT_IN_FP32)
    acc, row_sum, row_max = _attend_tiles(
        acc, row_sum, row_max, q, K, V, k_base, v_base, addr_b, off_kv_head, offs_m, full_hi, masked_hi,
        q_end, k_end, stride_kn, stride_vn, head_dim, qk_scale,
        True, IS_CAUSAL, POSITIVE_SCALE, BLOCK_N, HEAD_DIM_PAD, USE_TMA, DOT_IN_FP32)

    # Epilogue. A row that saw no key has row_sum 0: output 0 and LSE -inf (log2(0) = -inf), never NaN.
    lse = (row_max + tl.math.log2(row_sum)) * LN2
    acc = acc * (1.0 / tl.where(row_sum == 0.0, 1.0, row_sum))[:, None]  # one division a row (_hopper_kernel.py)
    if IS_VARLEN:
        lse_ptrs = Lse + off_h.to(tl.int64) * total_q + offs_m  # (heads_q, total_q)
    else:
        lse_ptrs = Lse + bh.to(tl.int64) * seqlen_q + offs_m  # (batch, heads_q, seqlen_q)
    tl.store(lse_ptrs, lse, mask=offs_m < q_end)
    out = acc.to(tl.bfloat16 if IS_BF16 else tl.float16)
    if USE_TMA and not IS_VARLEN:
        Out.store([off_b, off_h, start_m, 0], out.reshape(1, 1, BLOCK_M, HEAD_DIM_PAD))
    else:
        # A varlen tile's rows past q_end are the next sequence's: the store stops at q_end (a TMA box would not).
        ptrs, in_bounds = _tile_pointers(o_base, start_m, q_end, stride_om, head_dim, BLOCK_M, HEAD_DIM_PAD)
        tl.store(ptrs, out, mask=in_bounds)
