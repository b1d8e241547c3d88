"""Merging attention results computed over disjoint sets of keys, by their log-sum-exps.

If out_s and lse_s are attention over key set s (softmax-normalised over s alone), attention over the union is
sum_s w_s out_s with w_s = exp(lse_s - lse), lse = log sum_s exp(lse_s). Split-KV decoding does this inside its
kernels; this is the same rule for callers who split keys themselves (a shared prefix cached apart from each
sequence's suffix, ring attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["merge_attention_states"]


def _stacked(name: str, parts) -> torch.Tensor:
    if isinstance(parts, torch.Tensor):
        return parts
    if not isinstance(parts, (list, tuple)) or not parts:
        raise TypeError(f"{name} must be a non-empty list or tuple of tensors, or one stacked tensor, "
                        f"got {type(parts).__name__}")
    for index, part in enumerate(parts):
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(part).__name__}")
        if part.shape != parts[0].shape or part.device != parts[0].device:
            raise ValueError(f"{name}[{index}] has shape {tuple(part.shape)} on {part.device}, but {name}[0] has "
                             f"{tuple(parts[0].shape)} on {parts[0].device}; all parts must match")
    return torch.stack(list(parts))


def merge_attention_states(outs: Sequence[torch.Tensor] | torch.Tensor,
                           lses: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial attention results over disjoint key sets into the result over all of them.

    Args:
        outs: S partial outputs, each (..., seqlen, head_dim) (e.g. (B, H, N, D)), as a list/tuple or stacked into one
            (S, ..., seqlen, head_dim) tensor; any floating dtype.
        lses: their natural-log log-sum-exps, each (..., seqlen) (the partial outputs' shape without head_dim), as a
            list/tuple or stacked; -inf marks a row that saw no key in that part.

    Returns:
        (out, lse): out in outs' dtype with one part's shape, lse float32. A row that saw no key in any part gives
        out 0 and lse -inf. Differentiable (plain PyTorch), and traceable by torch.compile.
    """
    out_parts = _stacked("outs", outs)
    lse_parts = _stacked("lses", lses)
    if not out_parts.is_floating_point() or not lse_parts.is_floating_point():
        raise TypeError(f"outs and lses must be floating point, got {out_parts.dtype} and {lse_parts.dtype}")
    if out_parts.dim() < 2 or out_parts.shape[:-1] != lse_parts.shape:
        raise ValueError(f"each lse must have its output's shape without the last (head_dim) dimension: outs "
                         f"{tuple(out_parts.shape)} (parts first) against lses {tuple(lse_parts.shape)}")
    if out_parts.device != lse_parts.device:
        raise ValueError(f"outs are on {out_parts.device} but lses on {lse_parts.device}; they must match")
    lse_parts = lse_parts.float()
    top = lse_parts.amax(dim=0)
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)  # no key anywhere: weights exp(-inf) = 0
    weights = torch.exp(lse_parts - top)
    total = weights.sum(dim=0)
    merged = (out_parts.float() * weights.unsqueeze(-1)).sum(dim=0)
    merged = merged / torch.where(total == 0, torch.ones_like(total), total).unsqueeze(-1)
    return merged.to(out_parts.dtype), top + torch.log(total)
