"""The float64 reference and the tolerance method of DESIGN.md (FlashAttention's own test method).

A kernel passes when its error against float64 is at most a small multiple of the error that PyTorch's own
same-dtype computation (matmul -> softmax -> matmul in float16/bfloat16) makes against float64, plus a floor of a few
units in the last place of the dtype.
"""

from __future__ import annotations

import torch


def _expand_kv(query, tensor):
    return tensor.repeat_interleave(query.shape[1] // tensor.shape[1], dim=1)


def _visible(seqlen_q, seqlen_k, causal, device):
    if not causal:
        return torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    return cols <= rows + seqlen_k - seqlen_q


def attention_reference(query, key, value, *, causal=False, softmax_scale=None, dtype=torch.float64):
    """(out, lse) computed in `dtype` from the same inputs; K/V repeated for GQA (a path unlike the kernels')."""
    scale = query.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    q, k, v = (t.to(dtype) for t in (query, _expand_kv(query, key), _expand_kv(query, value)))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    visible = _visible(query.shape[2], key.shape[2], causal, query.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores.double(), dim=-1)
    probs = torch.softmax(scores, dim=-1).masked_fill(~visible.any(-1, keepdim=True), 0.0)
    return torch.matmul(probs, v), lse


def assert_attention_close(out, lse, query, key, value, *, causal=False, softmax_scale=None, multiple=2.0):
    """Compare a kernel's (out, lse) with float64, within `multiple` x PyTorch's same-dtype error."""
    assert out.shape == query.shape and out.dtype == query.dtype and out.device == query.device
    ref_out, ref_lse = attention_reference(query, key, value, causal=causal, softmax_scale=softmax_scale)
    same_dtype_out, same_dtype_lse = attention_reference(
        query, key, value, causal=causal, softmax_scale=softmax_scale, dtype=query.dtype
    )
    # FlashAttention's absolute floor: what adding and removing 0.3 in the dtype does to the reference, twice. It keeps
    # the bound meaningful when the same-dtype error of a tiny output (one query row) happens to be small.
    in_dtype = ref_out.to(query.dtype)
    floor = 2 * ((in_dtype + 0.3 - 0.3).double() - ref_out).abs().max().item()
    allowed = multiple * (same_dtype_out.double() - ref_out).abs().max().item() + floor
    assert not out.isnan().any(), "output has NaN (an element the kernel never wrote, or a NaN it made)"
    error = (out.double() - ref_out).abs().max().item()
    assert error <= allowed, f"max |out - ref| = {error:.3g} > allowed {allowed:.3g}"
    if lse is None:
        return
    assert lse.shape == query.shape[:3] and lse.dtype == torch.float32
    assert torch.equal(lse.isneginf(), ref_lse.isneginf()), "LSE must be -inf exactly for rows that see no key"
    finite = ref_lse.isfinite()
    if not finite.any():
        return
    lse_error = (lse.double() - ref_lse)[finite].abs().max().item()
    same_dtype_lse_error = (same_dtype_lse - ref_lse)[finite].abs().max().item()
    float32_rounding = 1e-5 * max(1.0, ref_lse[finite].abs().max().item())
    lse_allowed = multiple * same_dtype_lse_error + float32_rounding
    assert lse_error <= lse_allowed, f"max |lse - ref| = {lse_error:.3g} > allowed {lse_allowed:.3g}"
