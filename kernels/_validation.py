"""Input validation shared by every backend: one place, one set of messages.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device or value) with a message
that names the argument, what was expected and what came. Backends call :func:`check_attention_args` first, so a
direct call of ``flash_attention.triton.attention`` refuses bad input exactly as ``flash_attention.attention`` does.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# Tests set this so that outputs start as NaN and an element a kernel never writes shows up (the API allocates them).
POISON_OUTPUTS = False
MAX_HEAD_DIM = 256
HEAD_DIM_MULTIPLE = 8


@dataclass(frozen=True)
class AttentionShape:
    """The sizes of one validated call; ``softmax_scale`` is resolved (never None)."""

    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    softmax_scale: float


def _describe(value) -> str:
    return type(value).__name__


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if value.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype torch.float16 or torch.bfloat16, got {value.dtype}")
    if value.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (batch, heads, seqlen, head_dim), got {value.dim()}-D with shape {tuple(value.shape)}"
        )
    if value.stride(-1) != 1 and value.shape[-1] > 1:
        raise ValueError(
            f"{name} must have unit stride in its last (head_dim) dimension, got strides {tuple(value.stride())}; "
            f"call .contiguous() on it"
        )


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")


def resolve_softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale must be a real number or None, got {_describe(softmax_scale)}")
    scale = float(softmax_scale)
    if not math.isfinite(scale):
        raise ValueError(f"softmax_scale must be finite, got {scale}")
    return scale


def check_attention_args(query, key, value, *, causal, softmax_scale, return_lse) -> AttentionShape:
    """Validate one call of ``attention`` and return its sizes; raises TypeError/ValueError on bad input."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        _check_tensor(name, tensor)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)

    for name, tensor in (("key", key), ("value", value)):
        if tensor.dtype != query.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but query has {query.dtype}; all three must match")
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device} but query is on {query.device}; all three must match")

    batch, heads_q, seqlen_q, head_dim = query.shape
    if key.shape != value.shape:
        raise ValueError(f"key and value must have the same shape, got {tuple(key.shape)} and {tuple(value.shape)}")
    batch_k, heads_kv, seqlen_k, head_dim_k = key.shape
    if batch_k != batch:
        raise ValueError(f"key has batch size {batch_k} but query has {batch}")
    if head_dim_k != head_dim:
        raise ValueError(f"key has head_dim {head_dim_k} but query has {head_dim}")
    for name, size in (("batch size", batch), ("query heads", heads_q), ("key heads", heads_kv),
                       ("query seqlen", seqlen_q), ("key seqlen", seqlen_k), ("head_dim", head_dim)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size} (query {tuple(query.shape)}, key {tuple(key.shape)})")
    if heads_q % heads_kv != 0:
        raise ValueError(
            f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv}) for grouped-query attention"
        )
    if head_dim % HEAD_DIM_MULTIPLE != 0 or head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} and at most {MAX_HEAD_DIM}, got {head_dim}"
        )
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    return AttentionShape(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, scale)


def check_cuda_tensor(backend: str, query: torch.Tensor) -> None:
    """Kernels that need a GPU refuse CPU tensors with a message that says what to do instead."""
    if query.device.type != "cuda":
        raise ValueError(
            f"backend {backend!r} needs CUDA tensors, got query on {query.device}; "
            f"move the inputs to a GPU or use backend='naive'"
        )


def _maybe_poison(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.fill_(float("nan")) if POISON_OUTPUTS else tensor


def empty_like_query(query: torch.Tensor) -> torch.Tensor:
    """The output: query's shape, dtype and device, and its memory layout where query's is dense (e.g. BSHD views)."""
    return _maybe_poison(torch.empty_like(query, memory_format=torch.preserve_format))


def empty_lse(query: torch.Tensor) -> torch.Tensor:
    """The log-sum-exp: float32, (batch, heads_q, seqlen_q), contiguous."""
    batch, heads_q, seqlen_q, _ = query.shape
    return _maybe_poison(query.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32))
