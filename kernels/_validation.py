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


LOG2E = 1.4426950408889634
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def softmax_scale_sign(softmax_scale: float) -> int:
    """The sign of a (finite) softmax scale as every kernel treats it: +1, -1, or 0 where scale * log2(e) is below
    float32's smallest normal magnitude. A GPU flushes such a subnormal float32 to zero (and the Triton interpreter
    mishandles it), and every score times it is below float32 resolution next to the row max anyway, so the softmax
    is uniform and 0 is the exact treatment. The kernels' exponentials are exp2, hence the log2(e)."""
    scaled = softmax_scale * LOG2E
    if abs(scaled) < _FLOAT32_TINY:
        return 0
    return 1 if scaled > 0 else -1


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


def attention_entry_point(run_validated, backend: str):
    """A backend's public `attention`: validate, then its `run_validated` (the same for every backend, as
    kvcache_entry_point and varlen_entry_point are for the other calls)."""

    def attention(query, key, value, *, causal=False, softmax_scale=None, return_lse=False, **options):
        shape = check_attention_args(query, key, value, causal=causal, softmax_scale=softmax_scale,
                                     return_lse=return_lse)
        return run_validated(query, key, value, shape, causal=causal, return_lse=return_lse, **options)

    attention.__doc__ = (f"The {backend} backend's attention; the contract is flash_attention.attention's. Keyword "
                         f"options, if the backend has any, are its run_validated's.")
    return attention


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


# ------------------------------------------------------------------------------------------------ the KV-cache call
MAX_NUM_SPLITS = 128  # split-KV partials are (num_splits, B, Hq, Nq, D) float32: this bounds them


@dataclass(frozen=True)
class KVCacheShape:
    """The sizes of one validated ``attention_with_kvcache`` call; ``softmax_scale`` is resolved.

    ``capacity`` is how many keys a sequence's cache holds: N_max for a contiguous cache, max_blocks x page_size for a
    paged one. ``page_size`` is 0 for a contiguous cache. ``seqlen_new`` is the number of appended tokens (0 without
    key/value)."""

    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    head_dim: int
    capacity: int
    page_size: int
    num_pages: int
    seqlen_new: int
    softmax_scale: float
    num_splits: int | None

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv


def cache_geometry(key_cache, block_table) -> tuple[int, int, int]:
    """(capacity, page_size, num_pages) of a cache: the keys a sequence's cache holds, and for a paged one
    (block_table given) its page size and page count (both 0 for a contiguous cache)."""
    if block_table is None:
        return key_cache.shape[2], 0, 0
    return block_table.shape[1] * key_cache.shape[2], key_cache.shape[2], key_cache.shape[0]


def _check_index_tensor(name: str, value, query, rank: int, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {_describe(value)}")
    if value.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype torch.int32, got {value.dtype}")
    if value.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {what}, got {value.dim()}-D with shape {tuple(value.shape)}")
    if value.device != query.device:
        raise ValueError(f"{name} is on {value.device} but query is on {query.device}; it must be on query's device")
    if value.shape[-1] > 1 and value.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last dimension, got strides {tuple(value.stride())}; "
                         f"call .contiguous() on it")


def _check_same_kind(name: str, tensor, query) -> None:
    if tensor.dtype != query.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but query has {query.dtype}; they must match")
    if tensor.device != query.device:
        raise ValueError(f"{name} is on {tensor.device} but query is on {query.device}; they must match")


def _values_checkable(tensor: torch.Tensor) -> bool:
    """Whether reading `tensor`'s values costs nothing: a CPU tensor outside a torch.compile trace (where a value is
    data the graph cannot branch on). A CUDA tensor's would cost a host synchronisation."""
    return not tensor.is_cuda and not torch.compiler.is_compiling()


def _check_num_splits(num_splits) -> None:
    if num_splits is None:
        return
    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"num_splits must be an int or None, got {_describe(num_splits)}")
    if not 1 <= num_splits <= MAX_NUM_SPLITS:
        raise ValueError(f"num_splits must be between 1 and {MAX_NUM_SPLITS} (or None for the heuristic), "
                         f"got {num_splits}")


def check_kvcache_args(query, key_cache, value_cache, *, cache_seqlens, block_table, key, value, causal,
                       softmax_scale, return_lse, num_splits=None) -> KVCacheShape:
    """Validate one call of ``attention_with_kvcache`` and return its sizes; raises TypeError/ValueError.

    Values inside CUDA tensors (cache_seqlens, block_table) are not read here: that would synchronise with the GPU.
    The kernels clamp them so that no access leaves the cache; on CPU tensors they are checked, since it is free."""
    for name, tensor in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        _check_tensor(name, tensor)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    _check_num_splits(num_splits)
    for name, tensor in (("key_cache", key_cache), ("value_cache", value_cache)):
        _check_same_kind(name, tensor, query)
    if key_cache.shape != value_cache.shape:
        raise ValueError(f"key_cache and value_cache must have the same shape, got {tuple(key_cache.shape)} and "
                         f"{tuple(value_cache.shape)}")
    batch, heads_q, seqlen_q, head_dim = query.shape
    for name, size in (("batch size", batch), ("query heads", heads_q), ("query seqlen", seqlen_q)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size} (query {tuple(query.shape)})")
    rows, heads_kv, cache_len, head_dim_k = key_cache.shape
    if head_dim_k != head_dim:
        raise ValueError(f"key_cache has head_dim {head_dim_k} but query has {head_dim}")
    if head_dim % HEAD_DIM_MULTIPLE != 0 or head_dim > MAX_HEAD_DIM or head_dim < 1:
        raise ValueError(f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} and at most {MAX_HEAD_DIM}, "
                         f"got {head_dim}")
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value cache heads ({heads_kv}) for "
                         f"grouped-query attention")
    if cache_len < 1:
        raise ValueError(f"key_cache must hold at least one key per {'page' if block_table is not None else 'row'}, "
                         f"got shape {tuple(key_cache.shape)}")

    if block_table is None:
        if rows != batch:
            raise ValueError(f"key_cache has batch size {rows} but query has {batch} (a contiguous cache is "
                             f"(batch, heads_kv, max_seqlen, head_dim); pass block_table for a paged one)")
    else:
        _check_index_tensor("block_table", block_table, query, 2, "(batch, max_blocks_per_sequence)")
        if block_table.shape[0] != batch or block_table.shape[1] < 1:
            raise ValueError(f"block_table must be (batch={batch}, max_blocks >= 1), got {tuple(block_table.shape)}")
        if rows < 1:
            raise ValueError("a paged key_cache (num_blocks, heads_kv, page_size, head_dim) needs num_blocks >= 1")
    capacity, page_size, num_pages = cache_geometry(key_cache, block_table)
    if block_table is not None and _values_checkable(block_table) and block_table.numel():
        low, high = int(block_table.min()), int(block_table.max())
        if low < 0 or high >= num_pages:
            raise ValueError(f"block_table entries must index key_cache's {num_pages} blocks, got values from "
                             f"{low} to {high}")

    seqlen_new = 0
    if (key is None) != (value is None):
        raise ValueError("key and value must be given together (the new tokens to append) or both be None")
    if key is not None:
        for name, tensor in (("key", key), ("value", value)):
            _check_tensor(name, tensor)
            _check_same_kind(name, tensor, query)
        if key.shape != value.shape:
            raise ValueError(f"key and value must have the same shape, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        if key.shape[0] != batch or key.shape[1] != heads_kv or key.shape[3] != head_dim or key.shape[2] < 1:
            raise ValueError(f"key must be (batch={batch}, heads_kv={heads_kv}, new_tokens >= 1, "
                             f"head_dim={head_dim}), got {tuple(key.shape)}")
        if cache_seqlens is None:
            raise ValueError("key/value (new tokens) need cache_seqlens: it says where in the cache they are written")
        seqlen_new = key.shape[2]

    if cache_seqlens is not None:
        _check_index_tensor("cache_seqlens", cache_seqlens, query, 1, "(batch,)")
        if cache_seqlens.shape[0] != batch:
            raise ValueError(f"cache_seqlens must have one entry per sequence ({batch}), got "
                             f"{cache_seqlens.shape[0]}")
        if _values_checkable(cache_seqlens):
            low, high = int(cache_seqlens.min()), int(cache_seqlens.max())
            if low < 0 or high + seqlen_new > capacity:
                raise ValueError(f"cache_seqlens + new tokens must lie in [0, {capacity}] (the cache's capacity), "
                                 f"got cache_seqlens from {low} to {high} with {seqlen_new} new tokens")
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    return KVCacheShape(batch, heads_q, heads_kv, seqlen_q, head_dim, capacity, page_size, num_pages, seqlen_new,
                        scale, num_splits)


def kvcache_entry_point(run_kvcache_validated, backend: str):
    """A backend's public `attention_with_kvcache`: validate, then its `run_kvcache_validated`."""

    def attention_with_kvcache(query, key_cache, value_cache, *, cache_seqlens=None, block_table=None, key=None,
                               value=None, causal=False, softmax_scale=None, return_lse=False, num_splits=None):
        shape = check_kvcache_args(query, key_cache, value_cache, cache_seqlens=cache_seqlens,
                                   block_table=block_table, key=key, value=value, causal=causal,
                                   softmax_scale=softmax_scale, return_lse=return_lse, num_splits=num_splits)
        return run_kvcache_validated(query, key_cache, value_cache, shape, cache_seqlens=cache_seqlens,
                                     block_table=block_table, key=key, value=value, causal=causal,
                                     return_lse=return_lse)

    attention_with_kvcache.__doc__ = (f"The {backend} backend against a KV cache; the contract is "
                                      f"flash_attention.attention_with_kvcache's.")
    return attention_with_kvcache


# ------------------------------------------------------------------------------------------------ the varlen call
@dataclass(frozen=True)
class VarlenShape:
    """The sizes of one validated ``attention_varlen`` call; ``softmax_scale`` is resolved. ``batch`` counts the
    sequences (len(cu_seqlens) - 1); ``total_q``/``total_k`` are the packed rows of query and key."""

    batch: int
    heads_q: int
    heads_kv: int
    total_q: int
    total_k: int
    head_dim: int
    max_seqlen_q: int
    max_seqlen_k: int
    softmax_scale: float

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv


def _check_packed_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if value.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype torch.float16 or torch.bfloat16, got {value.dtype}")
    if value.dim() != 3:
        raise ValueError(f"{name} must be 3-D (total_tokens, heads, head_dim), got {value.dim()}-D with shape "
                         f"{tuple(value.shape)}")
    if value.stride(-1) != 1 and value.shape[-1] > 1:
        raise ValueError(f"{name} must have unit stride in its last (head_dim) dimension, got strides "
                         f"{tuple(value.stride())}; call .contiguous() on it")


def _check_max_seqlen(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int (an upper bound on the sequence lengths), got "
                        f"{_describe(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_cu_seqlens_values(name: str, cu_seqlens: torch.Tensor, total: int, max_seqlen: int,
                             max_name: str) -> None:
    """What the caller guarantees about cu_seqlens, checked where reading it is free (CPU tensors)."""
    values = cu_seqlens.long()
    lengths = values[1:] - values[:-1]
    if int(values[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {int(values[0])}")
    if bool((lengths < 0).any()):
        raise ValueError(f"{name} must be non-decreasing, got {values.tolist()}")
    if int(values[-1]) > total:
        raise ValueError(f"{name} ends at {int(values[-1])}, past the {total} packed rows of its tensor")
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest > max_seqlen:
        raise ValueError(f"{max_name} ({max_seqlen}) is smaller than the longest sequence of {name} ({longest})")


def check_varlen_args(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal,
                      softmax_scale, return_lse) -> VarlenShape:
    """Validate one call of ``attention_varlen`` and return its sizes; raises TypeError/ValueError on bad input.

    The values of CUDA index tensors are not read (that would synchronise with the GPU): the kernels clamp them so
    that no access leaves the packed tensors. On CPU tensors they are checked, since it is free."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        _check_packed_tensor(name, tensor)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    for name, tensor in (("key", key), ("value", value)):
        _check_same_kind(name, tensor, query)
    if key.shape != value.shape:
        raise ValueError(f"key and value must have the same shape, got {tuple(key.shape)} and {tuple(value.shape)}")
    total_q, heads_q, head_dim = query.shape
    total_k, heads_kv, head_dim_k = key.shape
    if head_dim_k != head_dim:
        raise ValueError(f"key has head_dim {head_dim_k} but query has {head_dim}")
    if heads_q < 1 or heads_kv < 1:
        raise ValueError(f"query and key need at least one head, got query {tuple(query.shape)}, key "
                         f"{tuple(key.shape)}")
    if heads_q % heads_kv != 0:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv}) for "
                         f"grouped-query attention")
    if head_dim < 1 or head_dim % HEAD_DIM_MULTIPLE != 0 or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} and at most {MAX_HEAD_DIM}, "
                         f"got {head_dim}")
    for name, tensor in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        _check_index_tensor(name, tensor, query, 1, "(batch + 1,)")
        if tensor.shape[0] < 2:
            raise ValueError(f"{name} must hold batch + 1 >= 2 offsets (0 first), got {tensor.shape[0]}")
    if cu_seqlens_q.shape[0] != cu_seqlens_k.shape[0]:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got "
                         f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}")
    _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    _check_max_seqlen("max_seqlen_k", max_seqlen_k)
    if _values_checkable(cu_seqlens_q):
        _check_cu_seqlens_values("cu_seqlens_q", cu_seqlens_q, total_q, max_seqlen_q, "max_seqlen_q")
    if _values_checkable(cu_seqlens_k):
        _check_cu_seqlens_values("cu_seqlens_k", cu_seqlens_k, total_k, max_seqlen_k, "max_seqlen_k")
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    return VarlenShape(cu_seqlens_q.shape[0] - 1, heads_q, heads_kv, total_q, total_k, head_dim, max_seqlen_q,
                       max_seqlen_k, scale)


def empty_varlen_lse(query: torch.Tensor) -> torch.Tensor:
    """The log-sum-exp of a varlen call: float32, (heads_q, total_q), contiguous (FlashAttention's layout)."""
    total_q, heads_q, _ = query.shape
    return _maybe_poison(query.new_empty((heads_q, total_q), dtype=torch.float32))


def varlen_entry_point(run_varlen_validated, backend: str):
    """A backend's public `attention_varlen`: validate, then its `run_varlen_validated`."""

    def attention_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                         causal=False, softmax_scale=None, return_lse=False):
        shape = check_varlen_args(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  causal=causal, softmax_scale=softmax_scale, return_lse=return_lse)
        return run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, causal=causal,
                                    return_lse=return_lse)

    attention_varlen.__doc__ = (f"The {backend} backend on packed variable-length sequences; the contract is "
                                f"flash_attention.attention_varlen's.")
    return attention_varlen
