"""Launching the decode kernels (`_decode_kernel`): tile choice, the split-KV heuristic, partials and the combine."""

from __future__ import annotations

import functools

import torch
import triton

from .._decode_plan import DECODE_MAX_PACKED_ROWS, SplitCosts, num_splits_for
from .._validation import cache_geometry, empty_like_query, empty_lse
from ._decode_kernel import append_kernel, combine_kernel, decode_kernel
from ._kernel import kernel_scale
from ._launcher import PlanCache, aligned16, current_stream, direct_launch_available, launch

# Programs of the decode kernel that run at once on a multiprocessor: one, with three stages of 128-key K and V tiles
# (192 KiB at head dim 128 on Hopper). The depth of the wave that choose_num_splits fills.
PROGRAMS_PER_SM = 1
# The decode kernel's costs for the split heuristic, measured on an H100 (results/NOTES.md, "The split count"): one
# program streams 45 GB/s (four warps, Triton's software pipeline three tiles deep); a split call costs about 5 µs
# more than an unsplit one of the same read (two launches); a split takes at least one 128-key tile.
SPLIT_COSTS = SplitCosts(program_bytes_per_s=45e9, split_overhead_s=5e-6, min_keys_per_split=128)
# Warps and software-pipelining depth of the decode kernel on a GPU.
NUM_WARPS = 4
NUM_STAGES = 3
# Launch plans of the decode (and combine) kernels, by everything their arguments derive from (see _plan_key).
_plans = PlanCache()
# The most page indices a paged split loads up front (decode_kernel's SPLIT_PAGES); a split whose keys span more
# pages loads each tile's own. Against each tile's own (H100, graph replays, 64-key pages): up to 64 pages 1.01-1.05x
# at batch 1-4 and 0.99-1.01x at batch 16; at 256 pages (16k keys a split) 0.98-0.99x at batch 16, where a full wave
# of programs hides each tile's index load and the gather over 256 indices per tile costs more (results/NOTES.md,
# "The Triton decode kernel's page indices").
MAX_SPLIT_PAGES = 64


@functools.lru_cache(maxsize=None)
def _stage_elements(device_index: int) -> int:
    """Elements of one K (or V) tile, BLOCK_N x HEAD_DIM_PAD. With 227 KiB of shared memory a block (Hopper), 16K:
    128 keys at head_dim 128, three stages of K and V in 192 KiB; that measured 4.26-4.30 TB/s against 3.77-3.98
    for 64 keys at batch 16-64 on an H200 (results/NOTES.md, decode v1). Elsewhere 8K, which fits 164 KiB (A100)."""
    properties = torch.cuda.get_device_properties(device_index)
    optin = getattr(properties, "shared_memory_per_block_optin", 0)
    return 16384 if optin >= 200 * 1024 else 8192


def tile_shape(packed_rows: int, head_dim_pad: int, device_index: int | None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): the packed rows rounded up to a power of two (16 is the smallest MMA tile), at most 64;
    as many keys as fill a stage (at most 128). device_index None: the interpreter, which gets 16-key tiles so that
    CPU tests run several tiles per split."""
    block_m = max(16, min(triton.next_power_of_2(packed_rows), DECODE_MAX_PACKED_ROWS))
    if device_index is None:
        return block_m, 16
    return block_m, min(128, _stage_elements(device_index) // head_dim_pad)


def split_page_slots(capacity: int, num_splits: int, block_n: int, page_size: int) -> int:
    """decode_kernel's SPLIT_PAGES for a paged call: a power of two covering the pages of any split's keys (at most
    cdiv(tiles, num_splits) tiles of block_n keys, from a multiple of block_n), or 0 where that passes
    MAX_SPLIT_PAGES or the cache is contiguous."""
    if page_size == 0:
        return 0
    keys = triton.cdiv(triton.cdiv(capacity, block_n), num_splits) * block_n
    pages = triton.cdiv(keys, page_size) + (0 if block_n % page_size == 0 else 1)  # a misaligned start spans one more
    return triton.next_power_of_2(pages) if pages <= MAX_SPLIT_PAGES else 0


def _cache_strides(cache: torch.Tensor):
    return cache.stride(0), cache.stride(1), cache.stride(2)


def append(key_cache, value_cache, key, value, cache_seqlens, block_table, *, capacity, page_size, num_pages):
    """Write key/value (B, Hkv, Nnew, D) into the caches at cache_seqlens[b] + t, in place."""
    table = block_table if block_table is not None else cache_seqlens  # an unused pointer when contiguous
    plan_key = None
    if key.is_cuda:
        table_layout = None if block_table is None else (block_table.shape, block_table.stride())
        plan_key = ("append", key.device.index, key.dtype, key.shape, key.stride(), value.stride(), key_cache.shape,
                    key_cache.stride(), value_cache.stride(), table_layout,
                    aligned16(key, value, key_cache, value_cache, cache_seqlens, table))
        plan = _plans.get(plan_key)
        if plan is not None and direct_launch_available():
            plan(current_stream(key.device.index), key, value, key_cache, value_cache, cache_seqlens, table)
            return
    batch, heads_kv, seqlen_new, head_dim = key.shape
    block_t = min(16, triton.next_power_of_2(seqlen_new))
    grid = (batch * heads_kv, triton.cdiv(seqlen_new, block_t))
    args = (
        key, value, key_cache, value_cache, cache_seqlens, table,
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        *_cache_strides(key_cache), *_cache_strides(value_cache),
        block_table.stride(0) if block_table is not None else 0,
        heads_kv, seqlen_new, capacity, head_dim, num_pages,
    )
    options = dict(PAGE_SIZE=page_size, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)), BLOCK_T=block_t,
                   num_warps=4 if head_dim > 64 else 2)
    if plan_key is None:
        append_kernel[grid](*args, **options)
    else:
        _plans.put(plan_key, launch(append_kernel, grid, args, options, leading=6))


def _plan_key(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal, softmax_scale,
              num_splits) -> tuple:
    """Everything the decode and combine kernels' arguments and compiled variants derive from, besides the data
    pointers (the output, LSE and partials are allocated from query's shape and layout and the split count)."""
    optional = tuple(tensor for tensor in (cache_seqlens, block_table) if tensor is not None)
    table_layout = None if block_table is None else (block_table.shape, block_table.stride())
    return (query.device.index, query.dtype, query.shape, query.stride(), key_cache.shape, key_cache.stride(),
            value_cache.stride(), cache_seqlens is None, table_layout, aligned16(query, key_cache, value_cache,
                                                                                 *optional),
            seqlen_new, causal, softmax_scale, num_splits)


class _DecodePlan:
    """The decode launch and, with splits, the combine launch of one call signature."""

    __slots__ = ("decode", "combine", "num_splits")

    def __init__(self, decode, combine, num_splits):
        self.decode, self.combine, self.num_splits = decode, combine, num_splits

    def __call__(self, query, key_cache, value_cache, cache_seqlens, block_table):
        out, lse = empty_like_query(query), empty_lse(query)
        target, target_lse = _split_targets(query, out, lse, self.num_splits)
        stream = current_stream(query.device.index)
        self.decode(stream, query, key_cache, value_cache, target, target_lse,
                    cache_seqlens if cache_seqlens is not None else lse,
                    block_table if block_table is not None else lse)
        if self.combine is not None:
            self.combine(stream, target, target_lse, out, lse)
        return out, lse


def _split_targets(query, out, lse, num_splits):
    """Where the decode kernel writes: the output itself, or float32 partials (splits, B, Hq, Nq, D) and their LSEs
    (at most MAX_NUM_SPLITS x the output's rows) that the combine kernel merges into it."""
    if num_splits == 1:
        return out, lse
    batch, heads_q, seqlen_q, head_dim = query.shape
    return (query.new_empty((num_splits, batch, heads_q, seqlen_q, head_dim), dtype=torch.float32),
            query.new_empty((num_splits, batch, heads_q, seqlen_q), dtype=torch.float32))


def attend(query, key_cache, value_cache, cache_seqlens, block_table, *, heads_kv, capacity, seqlen_new, page_size,
           num_pages, causal, softmax_scale, num_splits, interpreted, dot_in_fp32):
    """(out, lse) of query against the cache; num_splits None picks it by `num_splits_for`."""
    plan_key = None
    if not interpreted:
        plan_key = _plan_key(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal,
                             softmax_scale, num_splits)
        plan = _plans.get(plan_key)
        if plan is not None and direct_launch_available():
            return plan(query, key_cache, value_cache, cache_seqlens, block_table)
    batch, heads_q, seqlen_q, head_dim = query.shape
    group = heads_q // heads_kv
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    block_m, block_n = tile_shape(group * seqlen_q, head_dim_pad, None if interpreted else query.device.index)
    row_blocks = triton.cdiv(group * seqlen_q, block_m)
    programs = batch * heads_kv * row_blocks
    if num_splits is None:
        num_splits = 1
        if not interpreted:
            num_splits = num_splits_for(query, heads_kv=heads_kv, keys=capacity, programs=programs,
                                        programs_per_sm=PROGRAMS_PER_SM, costs=SPLIT_COSTS)
    qk_scale, positive_scale = kernel_scale(softmax_scale)
    out = empty_like_query(query)
    lse = empty_lse(query)
    target, target_lse = _split_targets(query, out, lse, num_splits)
    if num_splits == 1:
        out_strides = (0, out.stride(0), out.stride(1), out.stride(2))
        lse_split_stride = 0
    else:
        out_strides = target.stride()[:4]
        lse_split_stride = batch * heads_q * seqlen_q
    seqlens_arg = cache_seqlens if cache_seqlens is not None else lse  # an unused pointer without lengths
    table_arg = block_table if block_table is not None else lse
    decode_args = (
        query, key_cache, value_cache, target, target_lse, seqlens_arg, table_arg,
        query.stride(0), query.stride(1), query.stride(2),
        *_cache_strides(key_cache), *_cache_strides(value_cache),
        *out_strides, lse_split_stride,
        block_table.stride(0) if block_table is not None else 0,
        heads_kv, group, seqlen_q, capacity, seqlen_new, head_dim, num_pages, qk_scale, num_splits,
    )
    decode_options = dict(
        IS_CAUSAL=causal, POSITIVE_SCALE=positive_scale, HAS_SEQLENS=cache_seqlens is not None,
        PAGE_SIZE=page_size, SPLIT_PAGES=split_page_slots(capacity, num_splits, block_n, page_size),
        HEAD_DIM_PAD=head_dim_pad, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_IN_FP32=dot_in_fp32, num_warps=NUM_WARPS, num_stages=1 if interpreted else NUM_STAGES,
    )
    combine_args = (
        target, target_lse, out, lse,
        batch * heads_q * seqlen_q, heads_q, seqlen_q, head_dim, num_splits,
        out.stride(0), out.stride(1), out.stride(2),
    )
    combine_options = dict(SPLITS_PAD=triton.next_power_of_2(num_splits), HEAD_DIM_PAD=head_dim_pad, num_warps=4)
    decode_grid, combine_grid = (programs, num_splits), (batch * heads_q * seqlen_q,)
    if plan_key is None:
        decode_kernel[decode_grid](*decode_args, **decode_options)
        if num_splits > 1:
            combine_kernel[combine_grid](*combine_args, **combine_options)
        return out, lse
    decode = launch(decode_kernel, decode_grid, decode_args, decode_options, leading=7)
    combine = None
    if num_splits > 1:
        combine = launch(combine_kernel, combine_grid, combine_args, combine_options, leading=4)
    if decode is not None and (combine is not None or num_splits == 1):
        _plans.put(plan_key, _DecodePlan(decode, combine, num_splits))
    return out, lse


def run_append(key_cache, value_cache, key, value, cache_seqlens, block_table):
    """Append key/value (B, Hkv, Nnew, D) to the caches at cache_seqlens[b], in place (validated input)."""
    capacity, page_size, num_pages = cache_geometry(key_cache, block_table)
    append(key_cache, value_cache, key, value, cache_seqlens, block_table, capacity=capacity, page_size=page_size,
           num_pages=num_pages)


def run_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, *, causal, softmax_scale,
               num_splits, interpreted, dot_in_fp32):
    """(out, lse) of query against the caches, sequence b holding cache_seqlens[b] + seqlen_new keys."""
    capacity, page_size, num_pages = cache_geometry(key_cache, block_table)
    return attend(query, key_cache, value_cache, cache_seqlens, block_table, heads_kv=key_cache.shape[1],
                  capacity=capacity, seqlen_new=seqlen_new, page_size=page_size, num_pages=num_pages, causal=causal,
                  softmax_scale=softmax_scale, num_splits=num_splits, interpreted=interpreted,
                  dot_in_fp32=dot_in_fp32)
