"""The baseline: matmul -> softmax -> matmul in the input dtype, materializing the (seqlen_q, seqlen_k) scores.

It is the comparison point of the benchmarks (its memory grows with N^2) and the path for CPU tensors. It keeps the
whole contract (GQA, bottom-right causal, scale, LSE) so that tables compare like with like.
"""

from __future__ import annotations

import torch

from ._validation import attention_entry_point, empty_like_query, kvcache_entry_point, varlen_entry_point

__all__ = ["attention", "run_validated", "attention_with_kvcache", "run_kvcache_validated", "attention_varlen",
           "run_varlen_validated", "unavailable_reason"]


def unavailable_reason(query=None) -> str | None:
    return None


def causal_mask(seqlen_q: int, seqlen_k: int, device) -> torch.Tensor:
    """True where query i may see key j: j <= i + seqlen_k - seqlen_q (aligned bottom-right)."""
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    return cols <= rows + (seqlen_k - seqlen_q)


def run_validated(query, key, value, shape, *, causal, return_lse):
    """`attention` after check_attention_args (which returned `shape`): flash_attention.attention validates once."""
    group = shape.heads_q // shape.heads_kv
    # GQA without repeating K/V: (B, Hkv, group, Nq, D) against (B, Hkv, 1, Nk, D) broadcast over the group.
    q = query.unflatten(1, (shape.heads_kv, group))
    k = key.unsqueeze(2)
    v = value.unsqueeze(2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * shape.softmax_scale
    visible = None
    if causal:
        visible = causal_mask(shape.seqlen_q, shape.seqlen_k, query.device)
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if visible is not None and shape.seqlen_q > shape.seqlen_k:
        # Rows that see no key: softmax of all -inf is NaN; the contract says output 0.
        probs = probs.masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
    out = empty_like_query(query)
    out.copy_(torch.matmul(probs, v).flatten(1, 2))
    if not return_lse:
        return out
    lse = torch.logsumexp(scores.float(), dim=-1).flatten(1, 2)
    return out, lse


attention = attention_entry_point(run_validated, "naive")


# ------------------------------------------------------------------------------------------------ the KV-cache call
def _cache_slots(shape, cache_seqlens, block_table, device):
    """For the appended tokens: (first index, second index) of each (sequence, token) slot in the cache, clamped into
    it, and whether the slot is really inside (the caller's guarantee; invalid slots are rewritten unchanged)."""
    positions = cache_seqlens.long()[:, None] + torch.arange(shape.seqlen_new, device=device)[None, :]
    inside = (positions >= 0) & (positions < shape.capacity)
    positions = positions.clamp(0, shape.capacity - 1)
    if block_table is None:
        rows = torch.arange(shape.batch, device=device)[:, None].expand_as(positions)
        return rows, positions, inside
    pages = block_table.long().gather(1, positions // shape.page_size)
    inside = inside & (pages >= 0) & (pages < shape.num_pages)
    return pages.clamp(0, shape.num_pages - 1), positions % shape.page_size, inside


def append_to_cache(cache, new, slots) -> None:
    """Write new tokens (B, Hkv, Nnew, D) into the cache at `slots` (from _cache_slots), in place, no host sync."""
    first, second, inside = slots
    current = cache[first, :, second]  # (B, Nnew, Hkv, D)
    cache[first, :, second] = torch.where(inside[..., None, None], new.transpose(1, 2), current)


def logical_cache(cache, shape, block_table):
    """The cache as (B, Hkv, capacity, D): itself if contiguous, its pages gathered in sequence order if paged."""
    if block_table is None:
        return cache
    pages = cache[block_table.long().clamp(0, shape.num_pages - 1)]  # (B, max_blocks, Hkv, page, D)
    return pages.transpose(1, 2).flatten(2, 3)


def kvcache_visibility(shape, cache_seqlens, block_table, causal, device):
    """(B, 1, Nq, capacity) bool: query row i of sequence b sees key j iff j < L_b (and, causal,
    j <= L_b - Nq + i), L_b = cache_seqlens[b] + new tokens, and j's page is a real page."""
    keys = torch.arange(shape.capacity, device=device)
    if cache_seqlens is None:
        lengths = torch.full((shape.batch,), shape.capacity, device=device)
    else:
        lengths = (cache_seqlens.long() + shape.seqlen_new).clamp(0, shape.capacity)
    limit = lengths[:, None].expand(shape.batch, shape.seqlen_q)
    if causal:
        limit = limit - shape.seqlen_q + 1 + torch.arange(shape.seqlen_q, device=device)[None, :]
    visible = keys[None, None, :] < limit[:, :, None]
    if block_table is not None:
        pages = block_table.long()[:, keys // shape.page_size]
        visible = visible & ((pages >= 0) & (pages < shape.num_pages))[:, None, :]
    return visible[:, None]


def run_kvcache_validated(query, key_cache, value_cache, shape, *, cache_seqlens, block_table, key, value, causal,
                          return_lse):
    """`attention_with_kvcache` after check_kvcache_args: the reference path (gathers the whole cache)."""
    if key is not None:
        slots = _cache_slots(shape, cache_seqlens, block_table, query.device)
        append_to_cache(key_cache, key, slots)
        append_to_cache(value_cache, value, slots)
    k = logical_cache(key_cache, shape, block_table).unsqueeze(2)
    v = logical_cache(value_cache, shape, block_table).unsqueeze(2)
    q = query.unflatten(1, (shape.heads_kv, shape.group))  # (B, Hkv, group, Nq, D)
    visible = kvcache_visibility(shape, cache_seqlens, block_table, causal, query.device)[:, :, None]
    scores = torch.matmul(q, k.transpose(-1, -2)) * shape.softmax_scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
    out = empty_like_query(query)
    out.copy_(torch.matmul(probs, v).flatten(1, 2))
    if not return_lse:
        return out
    return out, torch.logsumexp(scores.float(), dim=-1).flatten(1, 2)


attention_with_kvcache = kvcache_entry_point(run_kvcache_validated, "naive")


# ------------------------------------------------------------------------------------------------ the varlen call
def varlen_visibility(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int, causal: bool) -> torch.Tensor:
    """(total_q, total_k) bool: packed query row i sees packed key j iff both lie in the same sequence b (and,
    causal, j - k_start <= i - q_start + len_k - len_q, i.e. j <= i + k_end - q_end: bottom-right aligned)."""
    device = cu_seqlens_q.device
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    batch = cu_q.shape[0] - 1
    # The sequence of each packed row: b with cu[b] <= row < cu[b + 1]; rows past cu[batch] get batch (none). A
    # comparison count rather than searchsorted, which Inductor cannot lower on the slice cu[1:].
    seq_q = (torch.arange(total_q, device=device)[:, None] >= cu_q[None, 1:]).sum(dim=1)
    seq_k = (torch.arange(total_k, device=device)[:, None] >= cu_k[None, 1:]).sum(dim=1)
    visible = (seq_q[:, None] == seq_k[None, :]) & (seq_q[:, None] < batch)
    if causal:
        shift = (cu_k[1:] - cu_q[1:])[seq_q.clamp(max=batch - 1)]  # k_end - q_end of each row's sequence
        rows = torch.arange(total_q, device=device)[:, None]
        visible = visible & (torch.arange(total_k, device=device)[None, :] <= rows + shift[:, None])
    return visible


def run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, *, causal, return_lse):
    """`attention_varlen` after check_varlen_args: every sequence at once, as one packed (total_q, total_k) score
    matrix per head with the other sequences' keys masked (memory grows with total_q x total_k; no host sync)."""
    visible = varlen_visibility(cu_seqlens_q, cu_seqlens_k, shape.total_q, shape.total_k, causal)
    q = query.permute(1, 0, 2).unflatten(0, (shape.heads_kv, shape.group))  # (Hkv, group, total_q, D)
    k = key.permute(1, 0, 2).unsqueeze(1)  # (Hkv, 1, total_k, D)
    v = value.permute(1, 0, 2).unsqueeze(1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * shape.softmax_scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
    out = empty_like_query(query)
    out.copy_(torch.matmul(probs, v).flatten(0, 1).permute(1, 0, 2))
    if not return_lse:
        return out
    return out, torch.logsumexp(scores.float(), dim=-1).flatten(0, 1)


attention_varlen = varlen_entry_point(run_varlen_validated, "naive")
