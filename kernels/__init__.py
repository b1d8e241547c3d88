"""FlashAttention forward pass: a Triton kernel, a CUDA C++ (CuTe) kernel and a naive PyTorch baseline.

    out = flash_attention.attention(query, key, value, causal=True)
    out, lse = flash_attention.attention(query, key, value, return_lse=True, backend="triton")

query is (batch, heads_q, seqlen_q, head_dim), key and value are (batch, heads_kv, seqlen_k, head_dim) with heads_q a
multiple of heads_kv. See README.md for the whole contract.
"""

from __future__ import annotations

import importlib
from typing import Union

import torch

from ._device import capability
from ._merge import merge_attention_states
from ._validation import check_attention_args, check_kvcache_args, check_varlen_args

__version__ = "0.1.0"
__all__ = [
    "attention", "attention_with_kvcache", "attention_varlen", "merge_attention_states", "BACKENDS",
    "available_backends", "backend_unavailable_reason", "__version__",
]

# Every backend module meets _backend.Backend (a typing.Protocol: the calls it exposes and its optional `auto` hooks).
BACKENDS = ("cuda", "triton", "naive")
# `auto` takes the first backend in this order that can run the input (and wants it: `auto_eligible`). Measured on
# an H100 (results/NOTES.md): the CUDA backend's Hopper family beats the Triton kernel where it runs (head dims
# 40-64, 104-128, 200-256; cuda.auto_eligible declines the others), and Triton (TMA + wgmma) beats the SM80-design CUDA
# family, so Hopper tries cuda first and newer GPUs, which run no sm_90a code, Triton. Before Hopper (unmeasured
# here) the CUDA kernel, FlashAttention-2's design for SM80, leads.
_AUTO_ORDER_HOPPER = ("cuda", "triton", "naive")
_AUTO_ORDER_POST_HOPPER = ("triton", "cuda", "naive")
_AUTO_ORDER_PRE_HOPPER = ("cuda", "triton", "naive")


# The backends register torch custom ops (flash_attention::*) when imported. They are imported by this package's
# installed name, whatever name this file runs under: run from the repository's root, Python also finds this folder
# as a package `kernels`, which transformers imports while probing for Hugging Face's `kernels` package, and a second
# copy of the backends would register the ops again, freeing the first registration under the first copy's feet
# (crashes in torch's op dispatch: results/NOTES.md, end of "Host time").
PACKAGE = "flash_attention"


def _import_backends() -> tuple[dict, dict]:
    """Import every backend once, up front: plain dict lookups later keep `attention` traceable by torch.compile.
    A backend whose import fails (say, triton missing) stays listed with the reason."""
    modules, import_errors = {}, {}
    for name in BACKENDS:
        try:
            modules[name] = importlib.import_module(f"{PACKAGE}.{name}")
        except ImportError as error:
            import_errors[name] = f"cannot import backend {name!r}: {error}"
    return modules, import_errors


_MODULES, _IMPORT_ERRORS = _import_backends()


def _backend_module(name: str):
    if name in _IMPORT_ERRORS:
        raise ValueError(_IMPORT_ERRORS[name])
    return _MODULES[name]


def backend_unavailable_reason(name: str, query: torch.Tensor | None = None) -> str | None:
    """None if backend `name` can run on `query`'s device (here, now), else a sentence saying why not."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name in _IMPORT_ERRORS:
        return _IMPORT_ERRORS[name]
    return _MODULES[name].unavailable_reason(query)


def available_backends(query: torch.Tensor | None = None) -> list[str]:
    """The backends that can run on `query` (or, without it, on this machine's default device)."""
    return [name for name in BACKENDS if backend_unavailable_reason(name, query) is None]


def _auto_order(query) -> tuple[str, ...]:
    major_minor = capability(query)
    if major_minor == (9, 0):
        return _AUTO_ORDER_HOPPER
    return _AUTO_ORDER_POST_HOPPER if major_minor > (9, 0) else _AUTO_ORDER_PRE_HOPPER


def _auto_backend(query, causal, key=None) -> str:
    if query.device.type != "cuda":
        return "naive"  # the CPU path (the Triton interpreter is a test vehicle, not a way to run models)
    for name in _auto_order(query):
        module = _MODULES.get(name)
        if module is None:
            continue
        eligible = getattr(module, "auto_eligible", None)
        if eligible(query, causal, key) if eligible is not None else module.unavailable_reason(query) is None:
            return name
    return "naive"


def _check_backend_name(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")


# What the attention calls return: the output, or (output, log-sum-exp) with return_lse=True.
AttentionResult = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, causal: bool = False,
              softmax_scale: float | None = None, return_lse: bool = False, backend: str = "auto") -> AttentionResult:
    """Scaled dot-product attention, forward only.

    Args:
        query: (batch, heads_q, seqlen_q, head_dim), float16 or bfloat16, unit stride in head_dim.
        key, value: (batch, heads_kv, seqlen_k, head_dim), same dtype and device; heads_q % heads_kv == 0.
        causal: bottom-right aligned mask: query i sees key j iff j <= i + seqlen_k - seqlen_q.
        softmax_scale: multiplies q @ k^T before the softmax; default 1 / sqrt(head_dim).
        return_lse: also return the natural-log log-sum-exp of the scaled scores, float32 (batch, heads_q, seqlen_q).
        backend: "auto", "cuda", "triton" or "naive".

    Returns:
        out with query's shape, dtype, device and layout; or (out, lse) if return_lse.
    """
    _check_backend_name(backend)
    # Validate before picking a backend, so that bad input gets the same error whatever is installed.
    shape = check_attention_args(
        query, key, value, causal=causal, softmax_scale=softmax_scale, return_lse=return_lse
    )
    name = _auto_backend(query, causal, key) if backend == "auto" else backend
    return _backend_module(name).run_validated(query, key, value, shape, causal=causal, return_lse=return_lse)


def _kvcache_backend_module(name: str, query, key_cache, value_cache):
    """The module that runs a KV-cache call: `name`, or for auto the first backend in the auto order that can run
    the input (naive on CPU tensors)."""
    if name != "auto":
        module = _backend_module(name)
        reason = module.unavailable_reason(query)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this input: {reason}")
        return module
    if query.device.type == "cuda":
        for candidate in _AUTO_ORDER_HOPPER:
            module = _MODULES.get(candidate)
            if module is None:
                continue
            eligible = getattr(module, "kvcache_auto_eligible", None)
            if eligible(query, key_cache, value_cache) if eligible is not None else \
                    module.unavailable_reason(query) is None:
                return module
    return _MODULES["naive"]


def attention_with_kvcache(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, *,
                           cache_seqlens: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
                           key: torch.Tensor | None = None, value: torch.Tensor | None = None, causal: bool = False,
                           softmax_scale: float | None = None, return_lse: bool = False,
                           num_splits: int | None = None, backend: str = "auto") -> AttentionResult:
    """Attention of a few new query rows against a KV cache (decoding), contiguous or paged, with an in-place append.

    Args:
        query: (batch, heads_q, seqlen_q, head_dim), float16 or bfloat16, unit stride in head_dim.
        key_cache, value_cache: contiguous (batch, heads_kv, max_seqlen, head_dim), or with `block_table` pages
            (num_blocks, heads_kv, page_size, head_dim); any strides with a unit last one, so FlashAttention's and
            vLLM's (..., seqlen/page, heads, head_dim) storage passes as `.transpose(1, 2)` without a copy.
        cache_seqlens: int32 (batch,) on query's device: the keys already in each sequence's cache; None: all of it.
        block_table: int32 (batch, max_blocks): the pages of each sequence, in order.
        key, value: (batch, heads_kv, new_tokens, head_dim) or None: written into the cache in place at
            cache_seqlens[b] .. + new_tokens, then attended to in the same call (needs cache_seqlens).
        causal: row i of sequence b sits at position L_b - seqlen_q + i (L_b = cache_seqlens[b] + new_tokens) and
            sees keys j <= that position; without it, every row sees keys 0 .. L_b - 1.
        softmax_scale: default 1 / sqrt(head_dim). return_lse: also return the log-sum-exp, float32 (B, Hq, Nq).
        num_splits: how many key ranges run in parallel (split-KV); None: chosen from the GPU and the shape.
        backend: "auto", "cuda", "triton" or "naive".

    The caller guarantees, for CUDA tensors (checked on CPU ones, where it needs no synchronisation), that
    0 <= cache_seqlens[b] and cache_seqlens[b] + new_tokens <= the capacity (max_seqlen, or max_blocks x page_size),
    and that block_table entries index key_cache's blocks. The kernels never access memory outside the cache: keys
    past the capacity or on an out-of-range page are not read (nor written by the append).

    Returns:
        out with query's shape, dtype and layout; or (out, lse). A row that sees no key gives 0 and LSE -inf.
    """
    _check_backend_name(backend)
    shape = check_kvcache_args(query, key_cache, value_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                               key=key, value=value, causal=causal, softmax_scale=softmax_scale,
                               return_lse=return_lse, num_splits=num_splits)
    module = _kvcache_backend_module(backend, query, key_cache, value_cache)
    return module.run_kvcache_validated(query, key_cache, value_cache, shape, cache_seqlens=cache_seqlens,
                                        block_table=block_table, key=key, value=value, causal=causal,
                                        return_lse=return_lse)


def _varlen_backend_module(name: str, query, causal: bool):
    """The module that runs a varlen call: `name`, or for auto the first backend in the auto order that runs
    varlen calls and can run this input (naive on CPU tensors)."""
    if name != "auto":
        module = _backend_module(name)
        if not hasattr(module, "run_varlen_validated"):
            raise ValueError(f"backend {name!r} does not run attention_varlen")
        reason = module.unavailable_reason(query)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this input: {reason}")
        return module
    if query.device.type == "cuda":
        for candidate in _auto_order(query):
            module = _MODULES.get(candidate)
            if module is None or not hasattr(module, "run_varlen_validated"):
                continue
            eligible = getattr(module, "varlen_auto_eligible", None)
            if eligible(query, causal) if eligible is not None else module.unavailable_reason(query) is None:
                return module
    return _MODULES["naive"]


def attention_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     softmax_scale: float | None = None, return_lse: bool = False,
                     backend: str = "auto") -> AttentionResult:
    """Attention over a batch of sequences of different lengths, packed one after another (no padding).

    Args:
        query: (total_q, heads_q, head_dim), float16 or bfloat16, unit stride in head_dim (a slice of a packed QKV
            projection passes without a copy). Sequence b's queries are rows cu_seqlens_q[b] : cu_seqlens_q[b + 1].
        key, value: (total_k, heads_kv, head_dim), same dtype and device; heads_q % heads_kv == 0.
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) on query's device: 0, then the running totals of the
            sequences' lengths (non-decreasing; a sequence may be empty).
        max_seqlen_q, max_seqlen_k: Python ints, at least the longest query / key sequence (they size the grid
            without reading cu_seqlens on the host).
        causal: bottom-right aligned within each sequence: its query i sees its key j iff j <= i + len_k - len_q.
        softmax_scale: default 1 / sqrt(head_dim). return_lse: also return the log-sum-exp, float32
            (heads_q, total_q) (FlashAttention's layout).
        backend: "auto", "cuda" (its Hopper family: compute capability 9.0, head dims 40-64, 104-128, 200-256),
            "triton" or "naive".

    The caller guarantees, for CUDA tensors (checked on CPU ones, where it needs no synchronisation), that the
    cu_seqlens start at 0, do not decrease, end within the packed rows, and that no sequence is longer than its
    max_seqlen. The kernels never access memory outside the packed tensors on any input. Query rows past
    cu_seqlens_q[batch] belong to no sequence and are not written; a query sequence with no keys gives 0 and
    LSE -inf.

    Returns:
        out (total_q, heads_q, head_dim) in query's dtype (query's layout where it is dense); or (out, lse).
    """
    _check_backend_name(backend)
    shape = check_varlen_args(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              causal=causal, softmax_scale=softmax_scale, return_lse=return_lse)
    module = _varlen_backend_module(backend, query, causal)
    return module.run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, causal=causal,
                                       return_lse=return_lse)
