"""The CUDA C++ (CuTe) backend, JIT-built on first use: FlashAttention-2's forward for SM80+ (mma.sync + cp.async),
and on compute capability 9.0 a Hopper family (TMA, warpgroup MMAs, warp specialization, a persistent grid).

    out = flash_attention.cuda.attention(q, k, v, causal=True)

The first call of a kind (head dim, dtype, mask) in a fresh cache builds the binding and that one kernel for the GPU in
hand (under a minute; see ``_loader``); ``python -m flash_attention.cuda.build`` builds every kernel ahead of time.
``backend="auto"`` picks this backend only once the kernel a call needs is built (:func:`auto_eligible`), so
automatic selection never starts a surprise build; where it passes over an unbuilt kernel it says so once per process,
naming the build command. ``BUILD_ON_FIRST_USE = True`` (or ``FLASH_ATTENTION_BUILD_ON_FIRST_USE=1``, read once at
import) lets ``auto`` take the kernel anyway and build it on that call.

Which kernel runs a call is ``_registry``'s decision alone; :func:`attention` takes its research knobs as keyword
options (``kernel_family``, ``sm90_schedule``, ``sm90_cta_pairs``; defaults from the environment, read once by
``flash_attention._settings``).

The kernel is the op ``torch.ops.flash_attention.cuda_fwd(q, k, v, causal, softmax_scale, kernel, sm90_schedule,
sm90_cta_pairs) -> (out, lse)``, ``kernel`` the registry's handle: its schema, fake implementation (for torch.compile /
FakeTensor) and autograd rule live here, its CUDA implementation in ``csrc/binding.cpp``; likewise ``cuda_varlen_fwd``
(packed variable-length batches, the Hopper family's varlen kernels) and the KV-cache ops ``cuda_decode`` and
``cuda_kvcache_append``. Forward only: backward raises NotImplementedError.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch

from .. import _decode_plan, _settings
from .._custom_op import use_registered_op
from .._device import capability, device_index
from .._validation import (
    attention_entry_point, cache_geometry, check_cuda_tensor, empty_like_query, empty_varlen_lse,
    kvcache_entry_point, softmax_scale_sign, varlen_entry_point,
)
from . import _loader, _registry
from ._registry import KERNELS, Kernel

__all__ = [
    "attention", "run_validated", "attention_with_kvcache", "run_kvcache_validated", "kvcache_unsupported_reason",
    "attention_varlen", "run_varlen_validated", "varlen_unsupported_reason", "unavailable_reason", "auto_eligible",
    "kernel_stem", "load_kernel", "decode_launch",
]

_OP_NAME = "flash_attention::cuda_fwd"
_VARLEN_OP_NAME = "flash_attention::cuda_varlen_fwd"
_DECODE_OP_NAME = "flash_attention::cuda_decode"
_APPEND_OP_NAME = "flash_attention::cuda_kvcache_append"
_CUDA_KERNEL_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
# Whether `auto` takes a kernel that is not built yet, building it on the call (tens of seconds, once per kernel and
# cache) instead of running another backend. Off by default: a first call should not stall without being asked to.
BUILD_ON_FIRST_USE = _settings.current.build_on_first_use
BUILD_COMMAND = "python -m flash_attention.cuda.build"
_told_unbuilt = False


def _define_op() -> None:
    # The schema lives in Python so that FakeTensor / torch.compile can trace the op before (or without) a build.
    global _LIBRARY
    try:
        torch._C._dispatch_find_schema_or_throw(_OP_NAME, "")
        return  # already defined in this process (module reloaded): keep the first registration alive
    except RuntimeError:
        pass
    _LIBRARY = torch.library.Library("flash_attention", "FRAGMENT")  # registrations live as long as this object
    _LIBRARY.define("cuda_fwd(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale, int kernel, "
                    "int sm90_schedule, bool sm90_cta_pairs) -> (Tensor, Tensor)")

    @torch.library.register_fake(_OP_NAME)
    def _cuda_fwd_fake(q, k, v, causal, softmax_scale, kernel, sm90_schedule, sm90_cta_pairs):
        _load_while_tracing(q, kernel)
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
        "int max_seqlen_k, bool causal, float softmax_scale, int kernel) -> (Tensor, Tensor)")

    @torch.library.register_fake(_VARLEN_OP_NAME)
    def _cuda_varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                              softmax_scale, kernel):
        _load_while_tracing(q, kernel)
        return empty_like_query(q), empty_varlen_lse(q)

    torch.library.register_autograd(_VARLEN_OP_NAME, _backward, setup_context=_setup_context)

    # The KV-cache call is two ops: an append that writes the caches in place (no outputs, so nothing to
    # differentiate), and a functional decode whose backward raises like cuda_fwd's. `kernel` is the decode kernel's
    # handle.
    _LIBRARY.define(
        "cuda_kvcache_append(Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor key, Tensor value, "
        "Tensor cache_seqlens, Tensor? block_table, int kernel) -> ()")
    _LIBRARY.define(
        "cuda_decode(Tensor q, Tensor key_cache, Tensor value_cache, Tensor? cache_seqlens, Tensor? block_table, "
        "int seqlen_new, bool causal, float softmax_scale, int num_splits, int cta_rows, int cta_warps, int kernel) "
        "-> (Tensor, Tensor)")

    @torch.library.register_fake(_APPEND_OP_NAME)
    def _cuda_kvcache_append_fake(key_cache, value_cache, key, value, cache_seqlens, block_table, kernel):
        _load_while_tracing(key_cache, kernel)
        return None

    @torch.library.register_fake(_DECODE_OP_NAME)
    def _cuda_decode_fake(q, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal, softmax_scale,
                          num_splits, cta_rows, cta_warps, kernel):
        _load_while_tracing(q, kernel)
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


def kernel_stem(major_minor: tuple[int, int], head_dim: int, dtype: torch.dtype, causal: bool,
                kernel_family: str | None = None) -> str:
    """The library (kernel) that runs `attention` of this head_dim, dtype and mask on a GPU of compute capability
    `major_minor`, as the registry selects it (kernel_family None: the default option)."""
    family = _registry.launch_options(kernel_family=kernel_family).kernel_family
    return _registry.forward_kernel(major_minor, head_dim, dtype, causal, family).stem


@dataclass(frozen=True)
class DecodeCta:
    """A CTA width of the decode kernel (csrc/decode_kernel.h, CtaChoice) and its costs for the split model
    (flash_attention._decode_plan): `warps` warps, each streaming its own 16-key tiles."""

    warps: int
    costs: _decode_plan.SplitCosts


# Measured on an H100 (results/NOTES.md, "The split count" and "Narrow decode CTAs"). Wide CTAs (eight warps, one an
# SM) stream 80 GB/s each; narrow ones (four warps, two an SM) 57 GB/s; a split call costs 3.5-4 µs more than an
# unsplit one of the same read; a split gives each warp at least one 16-key tile.
_NARROW_DECODE_CTA = DecodeCta(4, _decode_plan.SplitCosts(program_bytes_per_s=57e9, split_overhead_s=4e-6,
                                                          min_keys_per_split=64))
_WIDE_DECODE_CTA = DecodeCta(8, _decode_plan.SplitCosts(program_bytes_per_s=80e9, split_overhead_s=4e-6,
                                                        min_keys_per_split=128))
# Head dim 256 has one width: four warps whose tiles fill the shared memory as eight do at 128.
_HEAD_DIM_256_DECODE_CTA = DecodeCta(4, _WIDE_DECODE_CTA.costs)
# The split count fills one wave of a CTA per SM, either width: the second narrow CTA of an SM overlaps the first's
# prologue and merge but adds no bandwidth (twice the splits at batch 1 with 4k keys: 0.91x).
_DECODE_PROGRAMS_PER_SM = 1
# Narrow CTAs pay where they go two to an SM (more CTAs than SMs) or where each streams few keys (its prologue and
# merge are much of its time: batch 1 with 1k-16k keys split 16 ways, 1.02-1.04x wide ones); a single wave of long
# streams of one row tile read up to 3% slower in them (four warps an SM keep fewer copies in flight: head dim 64,
# batch 16, 4k-16k keys, 0.97-0.99x). Where a grid of 16-row CTAs has at most one CTA an SM, narrow ones stream at
# most this many keys each. 32-row CTAs (two row tiles a warp: twice the MMA and softmax work per byte) keep narrow
# ones there too: 1.007-1.015x wide ones at batch 16, 64/8 heads, 4 query rows, 4k keys, 0.997-1.004x at 32k (two
# runs).
_NARROW_DECODE_MAX_SINGLE_WAVE_KEYS = 2048


def decode_ctas(kernel_head_dim: int) -> tuple[DecodeCta, ...]:
    """The CTA widths the decode kernel of this (instantiated) head dim has, narrow first: where the split model
    predicts a tie (a call bound by memory), narrow CTAs measured faster."""
    return (_NARROW_DECODE_CTA, _WIDE_DECODE_CTA) if kernel_head_dim <= 128 else (_HEAD_DIM_256_DECODE_CTA,)


@dataclass(frozen=True)
class DecodeLaunch:
    """How the decode kernel runs a call: key splits, packed query rows per CTA, warps per CTA."""

    num_splits: int
    rows: int
    warps: int


def decode_launch(query, key_cache, block_table, num_splits: int | None = None) -> DecodeLaunch:
    """How the decode kernel runs this call (_planned_decode_launch, once per shape and GPU)."""
    batch, heads_q, seqlen_q, head_dim = query.shape
    return _planned_decode_launch(device_index(query), batch, heads_q, seqlen_q, head_dim, key_cache.shape[1],
                                  cache_geometry(key_cache, block_table)[0], query.element_size(), num_splits)


@functools.lru_cache(maxsize=1024)
def _planned_decode_launch(device: int, batch: int, heads_q: int, seqlen_q: int, head_dim: int, heads_kv: int,
                           capacity: int, element_size: int, num_splits: int | None) -> DecodeLaunch:
    """The launch the split model (flash_attention._decode_plan) predicts fastest over the CTA shapes this head dim
    has (decode_ctas; narrow 16-row ones within _NARROW_DECODE_MAX_SINGLE_WAVE_KEYS), with `num_splits` splits if given.
    32 packed rows per CTA (two MMA row tiles reading each K/V tile once) where more than 16 rows share a K/V head,
    the kernel's head dim is at most 128 and the call is not split, else 16: 32-row CTAs lost 4-10% to 16-row ones on
    split calls (results/NOTES.md, "Two row tiles in a decode CTA")."""
    packed_rows = heads_q // heads_kv * seqlen_q
    kernel_head_dim = _registry.decode_kernel(head_dim, torch.float16).head_dim
    rows_options = (32, 16) if packed_rows > 16 and kernel_head_dim <= 128 else (16,)
    multiprocessors = _decode_plan.multiprocessors(device)
    model = dict(sequences=batch * heads_kv, keys=capacity, key_bytes=2 * head_dim * element_size,
                 bandwidth=_decode_plan.memory_bandwidth(device))
    best, best_seconds = None, float("inf")
    for rows in rows_options:
        if rows > 16 and num_splits not in (None, 1):
            continue
        programs = batch * heads_kv * -(-packed_rows // rows)
        for cta in decode_ctas(kernel_head_dim):
            if rows > 16 or num_splits is not None:
                splits = 1 if rows > 16 else num_splits
                seconds = _decode_plan.predicted_seconds(splits=splits, costs=cta.costs, **model)
            else:
                splits, seconds = _decode_plan.choose_num_splits(
                    programs=programs, multiprocessors=multiprocessors, programs_per_sm=_DECODE_PROGRAMS_PER_SM,
                    costs=cta.costs, **model)
            if (cta is _NARROW_DECODE_CTA and rows == 16 and programs * splits <= multiprocessors
                    and -(-capacity // splits) > _NARROW_DECODE_MAX_SINGLE_WAVE_KEYS):
                continue
            if seconds < best_seconds:  # the first of equals: 32 rows (one K/V read a group), then narrow
                best, best_seconds = DecodeLaunch(splits, rows, cta.warps), seconds
    return best


def load_kernel(query, causal: bool = False, **options) -> None:
    """Build (if the cache lacks it) and load the kernel that `attention(query, ..., causal=causal, **options)` runs.
    Calls through the API do this themselves."""
    _forward_kernel(query, causal, _registry.launch_options(**options))


def _load_while_tracing(query, kernel: int) -> None:
    """torch.compile traces an op through its fake implementation and never runs the eager path's load, so the kernel
    a compiled graph will launch (its handle, an argument of the op) is loaded here, at trace time. Best effort:
    without a GPU (FakeTensors on a CPU machine) or a toolchain, the compiled call itself reports what is missing."""
    if query.device.type != "cuda" or not torch.cuda.is_available() or not 0 <= kernel < len(KERNELS):
        return
    try:
        _load(query, KERNELS[kernel])
    except (RuntimeError, ValueError):
        pass


def auto_eligible(query, causal: bool = False, key=None) -> bool:
    """Whether `auto` should take this backend for `query`: only once the kernel the call needs is loaded or cached
    for this GPU (`auto` never triggers a build), and on Hopper only for head dims the SM90 family covers, where it
    measured faster than the Triton kernel (results/NOTES.md); there the SM80 family, for the rest, is not. With
    `key`, a decode-shaped call asks for the decode kernel instead."""
    if unavailable_reason(query) is not None:
        return False
    if key is not None and _decode_plan.decode_shaped(query.shape[2], query.shape[1] // key.shape[1]):
        return _decode_auto_eligible(query, key.shape[1])
    major_minor = capability(query)
    if major_minor == (9, 0) and not _registry.sm90_covers(query.shape[-1]):
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
    """The kernels take the row max of raw scores and scale it (max(c*s) = c*max(s)), which needs a positive scale
    whose float32 value is normal (a subnormal one is flushed to 0, and -inf * 0 is NaN in masked tiles). Any other
    finite scale is folded into a copy of the query, by the package's scale rule (softmax_scale_sign): c < 0 ->
    (-q, -c); sign 0 -> (0 * q, 1), a uniform softmax that keeps NaN/Inf in q visible. Rare values, so the copy is
    acceptable."""
    sign = softmax_scale_sign(softmax_scale)
    if sign > 0:
        return query, softmax_scale
    if sign < 0:
        return -query, -softmax_scale
    return query * 0.0, 1.0


# The kernels this process has loaded, by what selects them. A call whose key is here skips the capability check
# and the loader (path, lock and cache lookups: about 40% of the host time of a call, measured on the H100), which
# at short sequence lengths is what the GPU waits for.
_ready_kernels: dict = {}


def _load(query, kernel: Kernel) -> Kernel:
    _require_sm80(query)
    _loader.load(query.device, kernels=(kernel.stem,))
    return kernel


def _forward_kernel(query, causal: bool, options: _registry.LaunchOptions) -> Kernel:
    """The (loaded) kernel that runs `attention` on `query` with these options."""
    key = (query.device, query.dtype, query.shape[-1], bool(causal), options.kernel_family)
    kernel = _ready_kernels.get(key)
    if kernel is None:
        kernel = _ready_kernels[key] = _load(query, _registry.forward_kernel(
            capability(query), query.shape[-1], query.dtype, causal, options.kernel_family))
    return kernel


def _require_sm80(query) -> None:
    major, minor = capability(query)
    if major < 8:
        raise ValueError(f"backend 'cuda' needs a GPU with compute capability >= 8.0, got {major}.{minor} "
                         f"on {query.device}; use backend='triton' or 'naive'")


def run_validated(query, key, value, shape, *, causal, return_lse, kernel_family=None, sm90_schedule=None,
                  sm90_cta_pairs=None):
    """`attention` after check_attention_args (which returned `shape`): flash_attention.attention validates once.

    Options (None: the defaults of flash_attention._settings): `kernel_family` "sm80" or "sm90" forces a family;
    `sm90_schedule` ("auto", "static", "dynamic", "per-tile") the SM90 grid and its deal; `sm90_cta_pairs` False holds
    the SM90 family to single CTAs. A decode-shaped call (few packed rows) runs the decode kernel, unless
    `kernel_family` names a forward family."""
    check_cuda_tensor("cuda", query)
    options = _registry.launch_options(kernel_family, sm90_schedule, sm90_cta_pairs)
    if _decode_plan.decode_shaped(shape.seqlen_q, shape.heads_q // shape.heads_kv) and options.kernel_family is None:
        # Few packed rows: key/value is a contiguous cache that every sequence fills (the decode kernel, split-KV).
        # Unlike a cache, they may be copied to make them 16-byte copyable.
        key, value = (t if _copyable_in_16_bytes(t) else t.contiguous() for t in (key, value))
        out, lse = _run_decode(query, key, value, None, None, None, None, causal=causal,
                               softmax_scale=shape.softmax_scale, num_splits=None)
        return (out, lse) if return_lse else out
    if torch.compiler.is_compiling():
        # While tracing, only the fake implementation runs (and loads the kernel: see _load_while_tracing); the
        # compiled graph calls the op.
        kernel = _registry.forward_kernel(capability(query), query.shape[-1], query.dtype, causal,
                                          options.kernel_family)
    else:
        kernel = _forward_kernel(query, causal, options)
    # The op allocates out as empty_like_query does (query's layout) and lse as empty_lse does (float32, (B, Hq, Nq)),
    # launches on torch's current stream under a guard for query's device, and writes both. Allocating inside the
    # op (not passing out/lse in) keeps it functional, which torch.compile traces without auto_functionalize.
    query, softmax_scale = _with_positive_scale(query, shape.softmax_scale)
    out, lse = _call(torch.ops.flash_attention.cuda_fwd, query, key, value, causal, softmax_scale, kernel.handle,
                     int(options.sm90_schedule), options.sm90_cta_pairs)
    return (out, lse) if return_lse else out


attention = attention_entry_point(run_validated, "cuda")


# ------------------------------------------------------------------------------------------------ decode
def _decode_kernel(query) -> Kernel:
    """The (loaded, unless tracing) decode kernel of a KV-cache or decode-shaped call."""
    if torch.compiler.is_compiling():
        return _registry.decode_kernel(query.shape[-1], query.dtype)
    key = ("decode", query.device, query.dtype, query.shape[-1])
    kernel = _ready_kernels.get(key)
    if kernel is None:
        kernel = _ready_kernels[key] = _load(query, _registry.decode_kernel(query.shape[-1], query.dtype))
    return kernel


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
    """`auto` takes the decode kernel where its packed rows fit one 16-row tile. With more, the Triton kernel (one
    32-row tile, split or not) is as fast or faster: at 64/8 heads with 4 query rows on an H100, `cuda` / `triton`
    time 1.02 at batch 1 and 16 with 4k keys, 1.00 at batch 16 with 32k (results/NOTES.md, "Two row tiles in a
    decode CTA"). And only once it is built (`auto` never builds)."""
    if query.shape[1] // heads_kv * query.shape[2] > 16:
        return False
    return _built_for_auto(query, _registry.decode_kernel(query.shape[-1], query.dtype).stem)


def kvcache_auto_eligible(query, key_cache, value_cache) -> bool:
    """Whether `auto` should take this backend for a KV-cache call (see _decode_auto_eligible)."""
    if unavailable_reason(query) is not None or kvcache_unsupported_reason(query, key_cache, value_cache) is not None:
        return False
    return _decode_auto_eligible(query, key_cache.shape[1])


def _call(op, *args):
    """An op through its registered custom op when compiling or differentiating, else straight to the CUDA kernel,
    past the Python autograd wrapper (see flash_attention._custom_op)."""
    if use_registered_op(*(arg for arg in args if isinstance(arg, torch.Tensor))):
        return op(*args)
    return op.default.redispatch(_CUDA_KERNEL_ONLY, *args)


def _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, key, value, *, causal, softmax_scale,
                num_splits):
    """Append key/value (if given), then the decode kernel, on validated, 16-byte copyable caches: (out, lse)."""
    kernel = _decode_kernel(query)
    launch = decode_launch(query, key_cache, block_table, num_splits)
    seqlen_new = 0
    if key is not None:
        seqlen_new = key.shape[2]
        _call(torch.ops.flash_attention.cuda_kvcache_append, key_cache, value_cache, key, value, cache_seqlens,
              block_table, kernel.handle)
    query, softmax_scale = _with_positive_scale(query, softmax_scale)
    return _call(torch.ops.flash_attention.cuda_decode, query, key_cache, value_cache, cache_seqlens, block_table,
                 seqlen_new, causal, softmax_scale, launch.num_splits, launch.rows, launch.warps, kernel.handle)


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
def varlen_unsupported_reason(query) -> str | None:
    """Why this backend cannot run a (validated) varlen call of `query`, or None (the registry's rule: the Hopper
    family's varlen kernels)."""
    return _registry.varlen_unsupported_reason(capability(query), query.shape[-1])


def varlen_auto_eligible(query, causal: bool = False) -> bool:
    """Whether `auto` should take this backend for a varlen call: where its varlen kernel runs, once built."""
    if unavailable_reason(query) is not None or varlen_unsupported_reason(query) is not None:
        return False
    return _built_for_auto(query, _registry.varlen_kernel(query.shape[-1], query.dtype, causal).stem)


def _varlen_kernel(query, causal: bool) -> Kernel:
    """The (loaded, unless tracing) SM90 library that holds the varlen kernel of a packed call."""
    if torch.compiler.is_compiling():
        return _registry.varlen_kernel(query.shape[-1], query.dtype, causal)
    key = ("varlen", query.device, query.dtype, query.shape[-1], bool(causal))
    kernel = _ready_kernels.get(key)
    if kernel is None:
        kernel = _ready_kernels[key] = _load(query, _registry.varlen_kernel(query.shape[-1], query.dtype, causal))
    return kernel


def run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, *, causal, return_lse):
    """`attention_varlen` after check_varlen_args (which returned `shape`)."""
    check_cuda_tensor("cuda", query)
    reason = varlen_unsupported_reason(query)
    if reason is not None:
        raise ValueError(f"backend 'cuda' cannot run this input: {reason}; use backend='triton'")
    kernel = _varlen_kernel(query, causal)
    query, softmax_scale = _with_positive_scale(query, shape.softmax_scale)
    out, lse = _call(torch.ops.flash_attention.cuda_varlen_fwd, query, key, value, cu_seqlens_q, cu_seqlens_k,
                     shape.max_seqlen_q, shape.max_seqlen_k, causal, softmax_scale, kernel.handle)
    return (out, lse) if return_lse else out


attention_varlen = varlen_entry_point(run_varlen_validated, "cuda")
