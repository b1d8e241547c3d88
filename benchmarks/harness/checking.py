"""The correctness check every method passes before it is measured: its output on a slice of the call (a few query
heads of a sequence or two) against float32 math on the same inputs.

The tolerance is FlashAttention's test method: a small multiple of the error that PyTorch's own same-dtype math makes
on that slice, plus one unit of rounding of the dtype. A method outside it gets its number marked ✗ in the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

CHECK_HEADS = 2  # query heads [0, CHECK_HEADS) of the checked sequence(s)
TOLERANCE_TEXT = "3x PyTorch's own same-dtype error + 1 ulp"


def attention_math(query, key, value, causal: bool, compute_dtype, rows_per_chunk: int = 2048) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in compute_dtype, (B, H, Nq, D) against (B, H, Nk, D) (key/value heads already
    matched to the query's: see query_heads), by chunks of query rows to bound the Nq x Nk scores' memory. Causal is
    bottom-right aligned: row i sees key j iff j <= i + Nk - Nq."""
    query, key, value = (tensor.to(compute_dtype) for tensor in (query, key, value))
    scale = query.shape[-1] ** -0.5
    seqlen_q, seqlen_k = query.shape[-2], key.shape[-2]
    chunks = []
    for start in range(0, seqlen_q, rows_per_chunk):
        scores = query[..., start:start + rows_per_chunk, :] @ key.transpose(-1, -2) * scale
        if causal:
            rows = torch.arange(start, start + scores.shape[-2], device=scores.device)[:, None]
            cols = torch.arange(seqlen_k, device=scores.device)[None, :]
            scores = scores.masked_fill(cols > rows + (seqlen_k - seqlen_q), float("-inf"))
        chunks.append(scores.softmax(dim=-1) @ value)
    return torch.cat(chunks, dim=-2)


def query_heads(query, key, value, heads: int):
    """Query heads [0, heads) of (B, Hq, N, D) tensors, and for each the key/value head it reads (GQA: query head h
    reads key head h // (Hq / Hkv)), so that attention_math pairs them one to one."""
    group = query.shape[1] // key.shape[1]
    kv_heads = [head // group for head in range(min(heads, query.shape[1]))]
    return query[:, :len(kv_heads)], key[:, kv_heads], value[:, kv_heads]


@dataclass
class Reference:
    """The float32 answers on the checked slices (kept on CPU, so that they do not count in GPU memory figures), how
    to take the same slices from a method's output, and the tolerance."""

    answers: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]
    tolerance: float

    @classmethod
    def of_slices(cls, slices) -> "Reference":
        """`slices`: (query, key, value, causal, take) per checked slice, the tensors (1, H, N, D) with matched heads,
        `take(output)` the same slice of a method's output in that layout."""
        answers, tolerance = [], 0.0
        for query, key, value, causal, take in slices:
            exact = attention_math(query, key, value, causal, torch.float32)
            same_dtype = attention_math(query, key, value, causal, query.dtype).float()
            same_dtype_error = (same_dtype - exact).abs().max().item()
            tolerance = max(tolerance, 3 * same_dtype_error + torch.finfo(query.dtype).eps)
            answers.append((take, exact.cpu()))
        return cls(answers, tolerance)

    def max_error(self, output: torch.Tensor) -> float:
        errors = [(take(output).float().cpu() - exact).abs().max().item() for take, exact in self.answers]
        return max(errors) if all(math.isfinite(error) for error in errors) else math.inf  # NaN: never within
