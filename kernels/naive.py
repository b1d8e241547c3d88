"""The baseline: matmul -> softmax -> matmul in the input dtype, materializing the (seqlen_q, seqlen_k) scores.

It is the comparison point of the benchmarks (its memory grows with N^2) and the path for CPU tensors. It keeps the
whole contract (GQA, bottom-right causal, scale, LSE) so that tables compare like with like.
"""

from __future__ import annotations

import torch

from ._validation import check_attention_args, empty_like_query

__all__ = ["attention", "run_validated", "unavailable_reason"]


def unavailable_reason(query=None) -> str | None:
    return None


def causal_mask(seqlen_q: int, seqlen_k: int, device) -> torch.Tensor:
    """True where query i may see key j: j <= i + seqlen_k - seqlen_q (aligned bottom-right)."""
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    return cols <= rows + (seqlen_k - seqlen_q)


def attention(query, key, value, *, causal=False, softmax_scale=None, return_lse=False):
    shape = check_attention_args(
        query, key, value, causal=causal, softmax_scale=softmax_scale, return_lse=return_lse
    )
    return run_validated(query, key, value, shape, causal=causal, return_lse=return_lse)


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
