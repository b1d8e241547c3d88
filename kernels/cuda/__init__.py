"""The CUDA C++ (CuTe) backend, JIT-built on first use: FlashAttention-2's forward for SM80+ (mma.sync + cp.async),
and on compute capability 9.0 a Hopper family (TMA, warpgroup MMAs, warp specialization, a persistent grid).

    out = flash_attention.cuda.attention(q, k, v, causal=True)

The first call of a kind (head dim, dtype, mask) in a fresh cache builds the binding and that one kernel for the GPU in
hand (under a minute; see ``_loader``); ``python -m flash_attention.cuda.build`` builds every kernel ahead of time.
``backend="auto"`` picks this backend only once the kernel a call needs is built (:func:`auto_eligible`), so
automatic selection never starts a surprise build; where it passes over an unbuilt kernel it says so once per process,
naming the build command. ``BUILD_ON_FIRST_USE = True`` (or ``FLASH_ATTENTION_BUILD_ON_FIRST_USE=1``, read once at
import) lets ``auto`` take the kernel anyway and build it on that call.

The kernel is the op ``torch.ops.flash_attention.cuda_fwd(q, k, v, causal, softmax_scale) -> (out, lse)``: its schema,
fake implementation (for torch.compile / FakeTensor) and autograd rule live here, its CUDA implementation in
``csrc/binding.cpp``; likewise ``cuda_varlen_fwd`` (packed variable-length batches, the Hopper family's varlen kernels)
and the KV-cache ops ``cuda_decode`` and ``cuda_kvcache_append``. Forward only: backward raises NotImplementedError.
"""

from __future__ import annotations

import os
import warnings

import torch

from .. import _decode_plan
from .._custom_op import use_registered_op
from .._device import capability, device_index
from .._validation import (
    attention_entry_point, cache_geometry, check_cuda_tensor, empty_like_query, empty_varlen_lse,
    kvcache_entry_point, varlen_entry_point,
)
from . import _loader

__all__ = [
    "attention", "run_validated", "attention_with_kvcache", "run_kvcache_validated", "kvcache_unsupported_reason",
    "attention_varlen", "run_varlen_validated", "varlen_unsupported_reason", "unavailable_reason", "auto_eligible",
    "sm90_family_covers", "kernel_stem", "decode_kernel_stem", "load_kernel",
]

_OP_NAME = "flash_attention::cuda_fwd"
_VARLEN_OP_NAME = "flash_attention::cuda_varlen_fwd"
_DECODE_OP_NAME = "flash_attention::cuda_decode"
_APPEND_OP_NAME = "flash_attention::cuda_kvcache_append"
_CUDA_KERNEL_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
# Whether `auto` takes a kernel that is not built yet, building it on the call (tens of seconds, once per kernel and
# cache) instead of running another backend. Off by default: a first call should not stall without being asked to.
BUILD_ON_FIRST_USE = os.environ.get("FLASH_ATTENTION_BUILD_ON_FIRST_USE", "0") == "1"
BUILD_COMMAND = "python -m flash_attention.cuda.build"
_told_unbuilt = False
_LOG2E = 1.4426950408889634
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _define_op() -> None:
    # The schema lives in Python so that FakeTensor / torch.compile can trace the op before (or without) a build.
    global _LIBRARY
    try:
        torch._C._dispatch_find_schema_or_throw(_OP_NAME, "")
        return  # already defined in this process (module reloaded): keep the first registration alive
    except RuntimeError:
        pass
    _LIBRARY = torch.library.Library("flash_attention", "FRAGMENT")  # registrations live as long as this object
    _LIBRARY.define("cuda_fwd(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale) -> (Tensor, Tensor)")

    @torch.library.register_fake(_OP_NAME)
    def _cuda_fwd_fake(q, k, v, causal, softmax_scale):
        _load_while_tracing(q, causal)
        batch, heads_q, seqlen_q, _ = q.shape
        out = empty_like_query(q)
        lse = q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)
        return out, lse

    def _setup_context(ctx, inputs, output):
        pass

    def _backward(ctx, grad_out, grad_lse):
        raise NotImplementedError(
            "flash_attention cuda backend is forward-only: no backward pass; use backend='naive' for gradients"
        )

    torch.library.register_autograd(_OP_NAME, _backward, setup_context=_setup_context)

    # Packed variable-length batches (the SM90 family's varlen kernels): out (total_q, Hq, D), lse (Hq, total_q).
    _LIBRARY.define(
        "cuda_varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, "
        "int max_seqlen_k, bool causal, float softmax_scale) -> (Tensor, Tensor)")

    @torch.library.register_fake(_VARLEN_OP_NAME)
    def _cuda_varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                              softmax_scale):
        _load_varlen_while_tracing(q)
        return empty_like_query(q), empty_varlen_lse(q)

    torch.library.register_autograd(_VARLEN_OP_NAME, _backward, setup_context=_setup_context)

    # The KV-cache call is two ops: an append that writes the caches in place (no outputs, so nothing to
    # differentiate), and a functional decode whose backward raises like cuda_fwd's. kernel_head_dim names the
    # decode instantiation (64, 128 or 256).
    _LIBRARY.define(
        "cuda_kvcache_append(Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor key, Tensor value, "
        "Tensor cache_seqlens, Tensor? block_table, int kernel_head_dim) -> ()")
    _LIBRARY.define(
        "cuda_decode(Tensor q, Tensor key_cache, Tensor value_cache, Tensor? cache_seqlens, Tensor? block_table, "
        "int seqlen_new, bool causal, float softmax_scale, int num_splits, int kernel_head_dim) -> (Tensor, Tensor)")

    @torch.library.register_fake(_APPEND_OP_NAME)
    def _cuda_kvcache_append_fake(key_cache, value_cache, key, value, cache_seqlens, block_table, kernel_head_dim):
        _load_decode_while_tracing(key_cache)
        return None

    @torch.library.register_fake(_DECODE_OP_NAME)
    def _cuda_decode_fake(q, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal, softmax_scale,
                          num_splits, kernel_head_dim):
        _load_decode_while_tracing(q)
        return empty_like_query(q), q.new_empty(q.shape[:3], dtype=torch.float32)

    torch.library.register_autograd(_DECODE_OP_NAME, _backward, setup_context=_setup_context)


_define_op()


def unavailable_reason(query=None) -> str | None:
    """None if this backend can run `query` (or, without it, run on the current GPU); otherwise why not.

    Cheap, and never builds: it checks CUDA, the GPU's compute capability, and that either a build for this GPU is
    cached or nvcc and the CUTLASS headers are there to make one.
    """
    if query is not None and (not isinstance(query, torch.Tensor) or query.device.type != "cuda"):
        where = query.device if isinstance(query, torch.Tensor) else type(query).__name__
        return f"the cuda backend needs CUDA tensors, got query on {where}"
    if not torch.cuda.is_available():
        return "CUDA is not available (no GPU, or a CPU-only torch build)"
    major, minor = capability(query)
    if major < 8:
        return f"the cuda backend needs compute capability >= 8.0, GPU {device_index(query)} has {major}.{minor}"
    if _loader.is_built(f"{major}{minor}"):
        return None
    if _loader.find_nvcc() is None:
        return "nvcc not found (set CUDA_HOME) and no build cached for this GPU, so the extension cannot be built"
    if _loader.find_cutlass_include() is None:
        return _loader.cutlass_missing_reason()
    return None


# The head dims that have their own kernel; every other multiple of 8 runs the next one up, zero-padded. Mirrors
# padded_head_dim in csrc/static_switch.h; the SM90 family instantiates 64, 128 and 256 (binding.cpp).
_PADDED_HEAD_DIMS = (32, 64, 96, 128, 160, 192, 256)
_SM90_HEAD_DIMS = (64, 128, 256)
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _padded_head_dim(head_dim: int):
    return next((d for d in _PADDED_HEAD_DIMS if d >= head_dim), None)


def sm90_family_covers(head_dim: int) -> bool:
    """Whether, on compute capability 9.0, a call of this head_dim runs the Hopper (SM90) kernel family."""
    return _padded_head_dim(head_dim) in _SM90_HEAD_DIMS


def kernel_stem(major_minor: tuple[int, int], head_dim: int, dtype: torch.dtype, causal: bool) -> str:
    """The kernel translation unit (csrc/<stem>.cu) that runs a call, as binding.cpp picks it: the SM90 family on
    compute capability 9.0 where it covers the head dim (unless FLASH_ATTENTION_CUDA_KERNEL=sm80), else the SM80 one."""
    sm90 = (tuple(major_minor) == (9, 0) and sm90_family_covers(head_dim)
            and os.environ.get("FLASH_ATTENTION_CUDA_KERNEL") != "sm80")
    return _family_stem(sm90, head_dim, dtype, causal)


def _family_stem(sm90: bool, head_dim: int, dtype: torch.dtype, causal: bool) -> str:
    """csrc/<stem>.cu of a family's (padded head dim, dtype, mask) instantiation."""
    family = "fwd_sm90_hdim" if sm90 else "fwd_hdim"
    return f"{family}{_padded_head_dim(head_dim)}_{_DTYPE_NAMES[dtype]}{'_causal' if causal else ''}"


# The decode family's head dims; a call runs the next one up (its extra columns zero-filled).
_DECODE_HEAD_DIMS = (64, 128, 256)
# Decode CTAs resident on a multiprocessor at once: one, whose pipeline takes most of the shared memory
# (decode_kernel.h, StageChoice). The wave depth for the split heuristic (flash_attention._decode_plan).
_DECODE_PROGRAMS_PER_SM = 1
_DECODE_ROWS = 16  # packed query rows per decode CTA (csrc/decode_kernel.h, kRows)


def _decode_head_dim(head_dim: int) -> int:
    return next(d for d in _DECODE_HEAD_DIMS if d >= head_dim)


def decode_kernel_stem(head_dim: int, dtype: torch.dtype) -> str:
    """The decode translation unit (csrc/<stem>.cu) that runs a KV-cache call of this head_dim and dtype."""
    return f"decode_hdim{_decode_head_dim(head_dim)}_{_DTYPE_NAMES[dtype]}"


def _load_decode_while_tracing(query) -> None:
    """As _load_while_tracing, for the decode kernel."""
    head_dim = query.shape[-1]
    if query.device.type != "cuda" or not isinstance(head_dim, int) or not torch.cuda.is_available():
        return
    if query.dtype not in _DTYPE_NAMES or not 0 < head_dim <= _DECODE_HEAD_DIMS[-1]:
        return
    try:
        _ensure_decode_kernel_loaded(query)
    except (RuntimeError, ValueError):
        pass


def load_kernel(query, causal: bool = False) -> None:
    """Build (if the cache lacks it) and load the kernel that `attention(query, ..., causal=causal)` runs. Calls through
    the API do this themselves; call it before calling torch.ops.flash_attention.cuda_fwd directly."""
    _loader.load(query.device, kernels=(kernel_stem(capability(query), query.shape[-1], query.dtype, causal),))


def _load_while_tracing(query, causal) -> None:
    """torch.compile traces the op through its fake implementation and never runs `run_validated`'s load, so the
    kernel a compiled graph will launch is loaded here, at trace time. Best effort: without a GPU (FakeTensors on a
    CPU machine) or a toolchain, the compiled call itself reports what is missing."""
    head_dim = query.shape[-1]
    if query.device.type != "cuda" or not isinstance(head_dim, int) or not torch.cuda.is_available():
        return
    if query.dtype not in _DTYPE_NAMES or _padded_head_dim(head_dim) is None:
        return
    try:
        load_kernel(query, bool(causal))
    except (RuntimeError, ValueError):
        pass


def auto_eligible(query, causal: bool = False, key=None) -> bool:
    """Whether `auto` should take this backend for `query`: only once the kernel the call needs is loaded or cached
    for this GPU (`auto` never triggers a build), and on Hopper only for head dims the SM90 family covers, where it
    measured faster than the Triton kernel (results/NOTES.md); there the SM80 family, for the rest, is not. With
    `key`, a decode-shaped call asks for the decode kernel instead."""
    if unavailable_reason(query) is not None:
        return False
    major_minor = capability(query)
    if key is not None and _decode_plan.decode_shaped(query.shape[2], query.shape[1] // key.shape[1]):
        return _decode_auto_eligible(query, key.shape[1])
    if major_minor == (9, 0) and not sm90_family_covers(query.shape[-1]):
        return False
    return _built_for_auto(query, kernel_stem(major_minor, query.shape[-1], query.dtype, causal))


def _built_for_auto(query, stem: str) -> bool:
    """Whether `auto` may take kernel `stem`: built (or loaded) for this GPU, or BUILD_ON_FIRST_USE set (the call then
    builds it). Otherwise `auto` moves on to the next backend, and the first time in a process it says so with the
    build command: on a GPU where this backend leads, a new user would otherwise run the slower one without knowing."""
    global _told_unbuilt
    major, minor = capability(query)
    if _loader.is_built(f"{major}{minor}", (stem,)) or BUILD_ON_FIRST_USE:
        return True
    if not _told_unbuilt:
        _told_unbuilt = True
        warnings.warn(
            f"flash_attention: backend='auto' runs another backend because the cuda backend's kernel {stem} is not "
            f"built for this GPU yet (auto never starts a build). Build every kernel once with `{BUILD_COMMAND}` "
            f"(about two minutes on 16 cores; cached per user), or set flash_attention.cuda.BUILD_ON_FIRST_USE = True "
            f"(FLASH_ATTENTION_BUILD_ON_FIRST_USE=1) to build each kernel on its first call.", stacklevel=5)
    return False


def _with_positive_scale(query, softmax_scale: float):
    """The kernel takes the row max of raw scores and scales it (max(c*s) = c*max(s)), which needs a positive scale
    whose float32 value is normal (a subnormal one is flushed to 0, and -inf * 0 is NaN in masked tiles). Any other
    finite scale is folded into a copy of the query: c < 0 -> (-q, -c); |c| tiny -> (0 * q, 1), a uniform softmax
    that keeps NaN/Inf in q visible. Rare values, so the copy is acceptable."""
    if softmax_scale * _LOG2E >= _FLOAT32_TINY:
        return query, softmax_scale
    if softmax_scale * _LOG2E <= -_FLOAT32_TINY:
        return -query, -softmax_scale
    return query * 0.0, 1.0


# What picks a kernel, for every kernel this process has loaded. A call whose key is here skips the capability check
# and the loader (path, lock and cache lookups: about 40% of the host time of a call, measured on the H100), which
# at short sequence lengths is what the GPU waits for. The variable is in the key because it switches the family.
_ready_kernels: set = set()


def _ensure_kernel_loaded(query, causal) -> None:
    key = (query.device, query.dtype, query.shape[-1], bool(causal), os.environ.get("FLASH_ATTENTION_CUDA_KERNEL"))
    if key in _ready_kernels:
        return
    _require_sm80(query)
    load_kernel(query, causal)
    _ready_kernels.add(key)


def _require_sm80(query) -> None:
    major, minor = capability(query)
    if major < 8:
        raise ValueError(f"backend 'cuda' needs a GPU with compute capability >= 8.0, got {major}.{minor} "
                         f"on {query.device}; use backend='triton' or 'naive'")


def run_validated(query, key, value, shape, *, causal, return_lse):
    """`attention` after check_attention_args (which returned `shape`): flash_attention.attention validates once."""
    check_cuda_tensor("cuda", query)
    if _decode_plan.decode_shaped(shape.seqlen_q, shape.heads_q // shape.heads_kv):
        # Few packed rows: key/value is a contiguous cache that every sequence fills (the decode kernel, split-KV).
        # Unlike a cache, they may be copied to make them 16-byte copyable.
        key, value = (t if _copyable_in_16_bytes(t) else t.contiguous() for t in (key, value))
        out, lse = _run_decode(query, key, value, None, None, None, None, causal=causal,
                               softmax_scale=shape.softmax_scale, num_splits=None)
        return (out, lse) if return_lse else out
    if not torch.compiler.is_compiling():
        # Under torch.compile only the fake implementation runs while tracing (and loads the kernel: see
        # _load_while_tracing); the compiled graph calls the op.
        _ensure_kernel_loaded(query, causal)
    # The op allocates out as empty_like_query does (query's layout) and lse as empty_lse does (float32, (B, Hq, Nq)),
    # launches on torch's current stream under a guard for query's device, and writes both. Allocating inside the
    # op (not passing out/lse in) keeps it functional, which torch.compile traces without auto_functionalize.
    query, softmax_scale = _with_positive_scale(query, shape.softmax_scale)
    if use_registered_op(query, key, value):
        out, lse = torch.ops.flash_attention.cuda_fwd(query, key, value, causal, softmax_scale)
    else:  # straight to the CUDA kernel, past the Python autograd wrapper (see flash_attention._custom_op)
        out, lse = torch.ops.flash_attention.cuda_fwd.default.redispatch(
            _CUDA_KERNEL_ONLY, query, key, value, causal, softmax_scale
        )
    return (out, lse) if return_lse else out


attention = attention_entry_point(run_validated, "cuda")


# ------------------------------------------------------------------------------------------------ decode
def _ensure_decode_kernel_loaded(query) -> None:
    key = ("decode", query.device, query.dtype, query.shape[-1])
    if key in _ready_kernels:
        return
    _require_sm80(query)
    _loader.load(query.device, kernels=(decode_kernel_stem(query.shape[-1], query.dtype),))
    _ready_kernels.add(key)


def _copyable_in_16_bytes(tensor) -> bool:
    """cp.async moves 16 bytes: a 16-byte aligned base and strides that are multiples of 8 elements. While
    torch.compile traces, the base is unknown (fake tensors have no storage): the binding checks it at run time."""
    aligned = torch.compiler.is_compiling() or tensor.data_ptr() % 16 == 0
    return aligned and all(size == 1 or stride % 8 == 0 for size, stride in zip(tensor.shape[:3], tensor.stride()[:3]))


def kvcache_unsupported_reason(query, key_cache, value_cache) -> str | None:
    """Why this backend cannot run a (validated) KV-cache call on these tensors, or None. The caches are read and
    appended to in place, never copied, so they must be 16-byte copyable."""
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if not _copyable_in_16_bytes(cache):
            return (f"the cuda backend needs {name} with a 16-byte aligned base and strides that are multiples of 8 "
                    f"elements, got strides {tuple(cache.stride())}")
    return None


def _decode_auto_eligible(query, heads_kv: int) -> bool:
    """`auto` takes the decode kernel where its packed rows fit one 16-row tile: with more, each row block reads the
    K/V again (0.60-0.67 of FlashAttention-4 at 32 rows, batch 16, on an H200, where the Triton kernel's 32-row tile
    reached 0.98-1.00: results/runtime_decode-heads_bf16.md). And only once it is built (`auto` never builds)."""
    if query.shape[1] // heads_kv * query.shape[2] > _DECODE_ROWS:
        return False
    return _built_for_auto(query, decode_kernel_stem(query.shape[-1], query.dtype))


def kvcache_auto_eligible(query, key_cache, value_cache) -> bool:
    """Whether `auto` should take this backend for a KV-cache call (see _decode_auto_eligible)."""
    if unavailable_reason(query) is not None or kvcache_unsupported_reason(query, key_cache, value_cache) is not None:
        return False
    return _decode_auto_eligible(query, key_cache.shape[1])


def _call(op, *args):
    """A decode op through its registered custom op when compiling or differentiating, else straight to the kernel
    (see flash_attention._custom_op)."""
    if use_registered_op(*(arg for arg in args if isinstance(arg, torch.Tensor))):
        return op(*args)
    return op.default.redispatch(_CUDA_KERNEL_ONLY, *args)


def _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, key, value, *, causal, softmax_scale,
                num_splits):
    """Append key/value (if given), then the decode kernel, on validated, 16-byte copyable caches: (out, lse)."""
    if not torch.compiler.is_compiling():
        _ensure_decode_kernel_loaded(query)
    batch, heads_q, seqlen_q, head_dim = query.shape
    heads_kv = key_cache.shape[1]
    kernel_head_dim = _decode_head_dim(head_dim)
    if num_splits is None:
        capacity = cache_geometry(key_cache, block_table)[0]
        programs = batch * heads_kv * -(-(heads_q // heads_kv * seqlen_q) // _DECODE_ROWS)
        num_splits = _decode_plan.choose_num_splits(programs, capacity, _decode_plan.multiprocessors(
            device_index(query)), _DECODE_PROGRAMS_PER_SM)
    seqlen_new = 0
    if key is not None:
        seqlen_new = key.shape[2]
        _call(torch.ops.flash_attention.cuda_kvcache_append, key_cache, value_cache, key, value, cache_seqlens,
              block_table, kernel_head_dim)
    query, softmax_scale = _with_positive_scale(query, softmax_scale)
    return _call(torch.ops.flash_attention.cuda_decode, query, key_cache, value_cache, cache_seqlens, block_table,
                 seqlen_new, causal, softmax_scale, num_splits, kernel_head_dim)


def run_kvcache_validated(query, key_cache, value_cache, shape, *, cache_seqlens, block_table, key, value, causal,
                          return_lse):
    """`attention_with_kvcache` after check_kvcache_args (which returned `shape`)."""
    check_cuda_tensor("cuda", query)
    reason = kvcache_unsupported_reason(query, key_cache, value_cache)
    if reason is not None:
        raise ValueError(f"backend 'cuda' cannot run this input: {reason}; use backend='triton'")
    out, lse = _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, key, value, causal=causal,
                           softmax_scale=shape.softmax_scale, num_splits=shape.num_splits)
    return (out, lse) if return_lse else out


attention_with_kvcache = kvcache_entry_point(run_kvcache_validated, "cuda")


# ------------------------------------------------------------------------------------------------ varlen
def _varlen_stem(query, causal: bool) -> str:
    """The SM90 library that holds the varlen kernel of a packed call (each SM90 file holds the dense and the varlen
    kernel of its head dim, dtype and mask)."""
    return _family_stem(True, query.shape[-1], query.dtype, causal)


def varlen_unsupported_reason(query) -> str | None:
    """Why this backend cannot run a (validated) varlen call of `query`, or None: its varlen kernels are the Hopper
    family's (compute capability 9.0, head dims 40-64, 104-128, 200-256)."""
    if capability(query) != (9, 0):
        major, minor = capability(query)
        return f"its varlen kernels run on compute capability 9.0 (Hopper), this GPU has {major}.{minor}"
    if not sm90_family_covers(query.shape[-1]):
        return f"its varlen kernels serve head dims 40-64, 104-128 and 200-256, got {query.shape[-1]}"
    return None


def varlen_auto_eligible(query, causal: bool = False) -> bool:
    """Whether `auto` should take this backend for a varlen call: where its varlen kernel runs, once built."""
    if unavailable_reason(query) is not None or varlen_unsupported_reason(query) is not None:
        return False
    return _built_for_auto(query, _varlen_stem(query, causal))


def _ensure_varlen_kernel_loaded(query, causal: bool) -> None:
    key = ("varlen", query.device, query.dtype, query.shape[-1], bool(causal))
    if key in _ready_kernels:
        return
    _loader.load(query.device, kernels=(_varlen_stem(query, causal),))
    _ready_kernels.add(key)


def _load_varlen_while_tracing(query) -> None:
    """As _load_while_tracing, for the varlen kernels (both masks: the fake implementation does not know which)."""
    head_dim = query.shape[-1]
    if query.device.type != "cuda" or not isinstance(head_dim, int) or not torch.cuda.is_available():
        return
    if query.dtype not in _DTYPE_NAMES or varlen_unsupported_reason(query) is not None:
        return
    try:
        for causal in (False, True):
            _ensure_varlen_kernel_loaded(query, causal)
    except (RuntimeError, ValueError):
        pass


def run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, *, causal, return_lse):
    """`attention_varlen` after check_varlen_args (which returned `shape`)."""
    check_cuda_tensor("cuda", query)
    reason = varlen_unsupported_reason(query)
    if reason is not None:
        raise ValueError(f"backend 'cuda' cannot run this input: {reason}; use backend='triton'")
    if not torch.compiler.is_compiling():
        _ensure_varlen_kernel_loaded(query, causal)
    query, softmax_scale = _with_positive_scale(query, shape.softmax_scale)
    out, lse = _call(torch.ops.flash_attention.cuda_varlen_fwd, query, key, value, cu_seqlens_q, cu_seqlens_k,
                     shape.max_seqlen_q, shape.max_seqlen_k, causal, softmax_scale)
    return (out, lse) if return_lse else out


attention_varlen = varlen_entry_point(run_varlen_validated, "cuda")
