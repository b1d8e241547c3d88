"""The Triton backend: `flash_attention.triton.attention(query, key, value, *, causal, softmax_scale, return_lse)`.

The kernel is registered as the torch custom op `flash_attention::triton_fwd` (with a fake implementation), so
torch.compile traces through it and CUDA graphs capture it. It is forward-only: the backward of its output raises.
FLASH_ATTENTION_AUTOTUNE=0 skips autotuning and uses one fixed tile per head_dim, FLASH_ATTENTION_TMA=0 loads tiles
with pointers instead of TMA on Hopper: both are read once, at import, into AUTOTUNE and USE_TMA (set those to change
them later; flash_attention._settings reads the environment). After the first call of a configuration, a call launches through a `_launcher.LaunchPlan`.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy
import torch
import triton

from .._custom_op import use_registered_op
from .._device import capability, device_index, l2_cache_bytes
from .._validation import (
    attention_entry_point, empty_like_query, empty_lse, empty_varlen_lse, kvcache_entry_point, softmax_scale_sign,
    varlen_entry_point,
)
from .. import _decode_plan, _settings
from . import _decode
from ._configs import (
    AUTOTUNE_KEY,
    INTERPRETER_CONFIG,
    autotune_configs,
    default_config,
    prune_configs,
    set_descriptor_block_shapes,
)
from ._kernel import attention_fwd_kernel, kernel_scale
from ._launcher import PlanCache, aligned16, current_stream, direct_launch_available, launch

# The Hopper kernel is Gluon, Triton's tile-level language, written against Triton 3.6's API (tested on 3.6 and,
# compiled for sm_90 without a GPU, 3.9); an older Triton runs the portable kernel everywhere.
if tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 6):
    try:
        from . import _hopper_kernel
    except ImportError:
        _hopper_kernel = None
else:
    _hopper_kernel = None  # (bound only here: `from . import` returns an attribute the package already has)

__all__ = [
    "attention", "run_validated", "attention_with_kvcache", "run_kvcache_validated", "attention_varlen",
    "run_varlen_validated", "unavailable_reason", "interpreter_problem",
]

_INTERPRETED = not hasattr(attention_fwd_kernel, "device_caches")  # InterpretedFunction under TRITON_INTERPRET=1
# Research knobs, read from the environment once (flash_attention._settings); set them here to change a process.
AUTOTUNE = _settings.current.triton_autotune
USE_TMA = _settings.current.triton_tma
# "auto": the Gluon kernel (_hopper_kernel.py) where it applies on Hopper (sm90_kernel_applies); "portable": always
# the tl.dot kernel (_kernel.py), to compare the two.
KERNEL = _settings.current.triton_kernel
# Launch plans of the forward kernel, by everything its arguments derive from (see _plan_key).
_forward_plans = PlanCache()
# Chosen configs per (device, autotune key): after the first call the kernel launches with its config directly.
_tuned_configs: dict[tuple, dict] = {}
_tuned_kernel = triton.autotune(
    configs=autotune_configs(), key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": prune_configs}
)(attention_fwd_kernel)


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run this kernel here, or None. Triton <= 3.6 turns a loop bound derived from
    the program id into an int with int() of a one-element array, which NumPy 2 refuses (Triton 3.9 squeezes it)."""
    triton_version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if triton_version < (3, 7) and int(numpy.__version__.split(".")[0]) >= 2:
        return (f"the Triton {triton.__version__} interpreter cannot run this kernel with NumPy {numpy.__version__} "
                f"(it calls int() on a one-element array for a loop bound); use Triton >= 3.7 or NumPy < 2")
    return None


def unavailable_reason(query=None) -> str | None:
    if _INTERPRETED:
        return interpreter_problem()
    if query is not None and query.device.type != "cuda":
        return f"needs CUDA tensors (got {query.device}); on CPU it runs only under TRITON_INTERPRET=1"
    if not torch.cuda.is_available():
        return "no CUDA GPU (set TRITON_INTERPRET=1 to run it on CPU)"
    if capability(query) < (8, 0):
        return f"needs a GPU of compute capability 8.0 or newer, got {torch.cuda.get_device_name(device_index(query))}"
    return None


# Four TMA descriptors cost about 10 µs of host time per call (their encoding in Triton's launcher: 40 vs 30 µs per
# call on an H200 with Triton 3.6, results/NOTES.md "Host time"), more than a kernel below about 2^32 FLOPs takes,
# where pointer loads serve as well. Every seed- and paper-grid shape is above it (the smallest, 1.7e10).
TMA_MIN_FLOPS = 2**32


def _tma_pays(flops: int) -> bool:
    return flops >= TMA_MIN_FLOPS


def _tma_capable(*tensors) -> bool:
    """TMA needs Hopper or newer, 16-byte aligned bases and positive strides that are multiples of 16 bytes.
    USE_TMA = False (FLASH_ATTENTION_TMA=0) turns it off, to compare the two load paths."""
    if _INTERPRETED or not USE_TMA or not tensors[0].is_cuda or capability(tensors[0]) < (9, 0):
        return False
    for tensor in tensors:
        if tensor.data_ptr() % 16:
            return False
        if any(stride <= 0 or (stride * tensor.element_size()) % 16 for stride in tensor.stride()[:-1]):
            return False
    return True


def _dot_in_fp32(query) -> bool:
    """The interpreter keeps bf16 as raw uint16 and its tl.dot multiplies those bit patterns (it converts only fp8
    operands), so under it the dot operands are upcast to float32 after rounding to the input dtype."""
    return _INTERPRETED and query.dtype == torch.bfloat16


def _on_device_of(query):
    """Launch on the inputs' GPU, not whichever is current."""
    if not query.is_cuda or query.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(query.device)


def _length_bucket(n: int) -> int:
    return max(16, min(triton.next_power_of_2(n), 1 << 16))


def _plan_key(query, key, value, causal: bool, softmax_scale: float) -> tuple:
    """Everything the forward kernel's arguments and compiled variant derive from, besides the data pointers: the
    output and LSE are allocated from query's shape and layout, so query's properties fix theirs."""
    return (query.device.index, query.dtype, query.shape, query.stride(), key.shape, key.stride(), value.stride(),
            aligned16(query, key, value), causal, softmax_scale, AUTOTUNE, USE_TMA, TMA_MIN_FLOPS, KERNEL)


# ------------------------------------------------------------------------------------------------ the Hopper kernel
# Its tile: BLOCK_N keys a K/V stage, in a ring of sm90_stages() stages (shared memory: two Q buffers of 128 query
# rows, and a K and a V tile of BLOCK_N keys per stage).
SM90_BLOCK_N = 128
# Two stages (all that fits beside two Q buffers at head dim 128); four at head dim 64 for rows of at most this many
# keys (164 KB of shared memory against 99), where a tile walks few key tiles and waits for its first loads.
# Measured (H100, fp16, x cuDNN, CUDA graphs, two stages against four): causal d64 1k 0.88 against 0.91, 2k 0.95
# against 0.97; no mask 512 0.94 against 0.97; from 4k keys four lose 1-2% (causal 4k 1.01 against 0.99, no mask
# 16k 0.99 against 0.98; results/NOTES.md, twenty-second session).
SM90_DEEP_RING_KEYS = 2048
# Registers: 12 warps (two consumer warpgroups, the loader's warp padded to a warpgroup) at 168 each fill the
# register file; warp specialization then moves them to 240 a consumer thread and 24 a loader thread.
SM90_MAX_REGISTERS = 168
# Causal calls with rows of fewer keys than this run the portable kernel, as fast there: the Gluon kernel's 128-row
# tiles walk a key tile or two each, mostly set-up and tail. Measured (H100, fp16, x cuDNN, CUDA graphs, the Gluon
# kernel against the portable one): head dim 128, 128 keys 1.01 both, 256 0.99 against 0.91; head dim 64, 256 keys
# 0.81 against 0.78, 512 0.88 against 0.84 (results/NOTES.md, twenty-third session).
SM90_CAUSAL_MIN_KEYS = 256
# Causal work lists run in sections of heads whose K/V fit a share of the L2 (section_heads): half of it for rows of
# at most this many keys, all of it beyond. A section begins with its heads' longest tiles, which read the K/V from
# DRAM, and ends with their shortest, which find it in the L2; where tiles walk few key tiles, halved sections
# alternate the two more finely (per-tile clocks: the first K wait of the longest tiles halved). Measured (H100, fp16,
# x cuDNN, whole L2 against half): causal d128 256 keys 0.84 against 0.92, 512 0.73 against 0.87, 1k 0.98 both;
# d64 512 0.78 against 0.82, 1k 0.88 against 0.91; at 2k keys the two are within 2% either way (d128 1.10-1.12
# against 1.12-1.14, d64 0.94-0.97 against 0.93-0.95), from 4k the whole L2 is 1-3% faster (d128 16k 1.15 against
# 1.12; results/NOTES.md, twenty-second session).
SM90_HALF_L2_SECTION_KEYS = 1024
# And a section reads at most one K/V head for this many SMs (a power of two of heads, 64 on 132 SMs), so that the
# first wave of a section runs each head's longest tiles on two CTAs at once, which read its K/V tiles from DRAM in
# different orders (the key tiles run from the diagonal down). The bound binds only on short rows, where the L2 holds
# more heads. Measured (H100, fp16, x cuDNN, CUDA graphs, sections of 128 heads (the L2's rule) against 64 and 32):
# causal d128 256 keys 0.93 against 0.98 and 0.99; d64 512 0.79 against 0.81 and 0.80; d128 512 (64 by either rule)
# 0.90 against 0.86 for 32 (results/NOTES.md, twenty-third session).
SM90_SECTION_CTAS_PER_HEAD = 2


def sm90_kernel_applies(query, key, value, out, causal: bool, softmax_scale: float) -> bool:
    """Whether a dense call runs the Gluon kernel (_hopper_kernel.py): Hopper (wgmma is sm_90a's), fp16/bf16, head
    dim 64 or 128, a positive softmax scale, TMA-compatible layouts, and enough work that four descriptors pay
    (TMA_MIN_FLOPS); not causal with rows of fewer than SM90_CAUSAL_MIN_KEYS keys, where the portable kernel is
    faster. Everything else runs the portable kernel, which covers the whole contract."""
    if _hopper_kernel is None or KERNEL != "auto" or _INTERPRETED or not query.is_cuda:
        return False
    if capability(query)[0] != 9 or query.dtype not in (torch.float16, torch.bfloat16):
        return False
    if query.shape[-1] not in (64, 128) or softmax_scale_sign(softmax_scale) <= 0:
        return False
    if causal and key.shape[2] < SM90_CAUSAL_MIN_KEYS:
        return False
    batch, heads_q, seqlen_q, head_dim = query.shape
    flops = 4 * batch * heads_q * seqlen_q * key.shape[2] * head_dim
    return _tma_pays(flops) and _tma_capable(query, key, value, out)


class _Sm90Plan:
    """A launch plan of the Gluon kernel under the portable kernel's call (query, key, value, out, lse and the two
    cu_seqlens pointers a dense call leaves unused); it adds the stream's tile counter."""

    __slots__ = ("_plan",)

    def __init__(self, plan):
        self._plan = plan

    def __call__(self, stream, query, key, value, out, lse, *_unused):
        self._plan(stream, query, key, value, out, lse, sm90_tile_counter(query, stream))


# The dynamic deal's counters (two int32: the next draw, the CTAs done drawing), by (device, stream).
_tile_counters: dict[tuple[int, int], torch.Tensor] = {}


def sm90_tile_counter(query, stream: int) -> torch.Tensor:
    """The counter the Gluon kernel's dynamic deal draws tiles from, for a call on `stream`. Every kernel that draws
    leaves it zero (its last CTA resets it), so one per (device, stream), zeroed once, serves every call in stream
    order without a zeroing launch; other streams have their own, so concurrent calls never share one. Under CUDA
    graph capture each call gets a fresh zeroed one from the graph's pool: a replay may run on any stream. (The cuda
    backend keeps its counter the same way, binding.cpp.)"""
    if not query.is_cuda:  # compile checks: only the argument's type counts
        return torch.zeros(2, dtype=torch.int32)
    if torch.cuda.is_current_stream_capturing():
        return torch.zeros(2, dtype=torch.int32, device=query.device)
    counter = _tile_counters.get((query.device.index, stream))
    if counter is None:
        counter = torch.zeros(2, dtype=torch.int32, device=query.device)  # zeroed on this stream, ahead of kernels
        _tile_counters[(query.device.index, stream)] = counter
    return counter


def section_heads(l2_bytes: int, seqlen_k: int, head_dim: int, element_size: int, heads: int, group: int) -> int:
    """Causal work lists run longest first within sections of this many query heads: the whole groups (`group` query
    heads a K/V head) of the largest power of two of K/V heads whose K and V fit the L2 together (FlashAttention-3's
    rule, counted in the K/V heads a section reads), at least 1 and at most the list's `heads`. The cuda backend's
    `section_heads` (tile_scheduler.h) is the same rule; tests/test_cuda_layouts.py holds the two in step."""
    kv_head_bytes = 2 * seqlen_k * head_dim * element_size
    return max(1, min(_power_of_two_at_most(l2_bytes // max(kv_head_bytes, 1)) * group, heads))


def _power_of_two_at_most(n: int) -> int:
    """The largest power of two <= n, and 1 for n < 1."""
    return 1 << (max(n, 1).bit_length() - 1)


def sm90_stages(head_dim: int, seqlen_k: int) -> int:
    """K/V stages of the Gluon kernel's ring for a call (SM90_DEEP_RING_KEYS)."""
    return 4 if head_dim == 64 and seqlen_k <= SM90_DEEP_RING_KEYS else 2


def sm90_section_heads(query, seqlen_k: int, heads: int, group: int) -> int:
    """section_heads for a call on query's GPU, over half its L2 for rows of at most SM90_HALF_L2_SECTION_KEYS keys,
    and of at most one K/V head for SM90_SECTION_CTAS_PER_HEAD of its SMs (1 on the CPU, where only compile checks
    build arguments)."""
    if not query.is_cuda:
        return 1
    l2_bytes = l2_cache_bytes(device_index(query))
    if seqlen_k <= SM90_HALF_L2_SECTION_KEYS:
        l2_bytes //= 2
    fit = section_heads(l2_bytes, seqlen_k, query.shape[-1], query.element_size(), heads, group)
    sms = _decode_plan.multiprocessors(device_index(query))
    return min(fit, _power_of_two_at_most(sms // SM90_SECTION_CTAS_PER_HEAD) * group)


def sm90_grid(num_tiles: int, query) -> int:
    """CTAs of the Gluon kernel's persistent grid: one per SM (each pays its set-up once and loads its next tile's Q
    and K/V under its current tile), at most one per work tile. Causal calls draw their tiles dynamically; that beat
    one CTA per tile at every causal length of the paper and model grids on an H100 (bf16, 2k-16k tokens: 1.00-1.14x
    cuDNN against 0.92-1.13x; results/NOTES.md, tenth session)."""
    return min(num_tiles, _decode_plan.multiprocessors(device_index(query)))


def sm90_launch_arguments(query, key, value, out, lse, *, causal: bool, softmax_scale: float, stream: int,
                          ctas: Optional[int] = None) -> tuple[tuple, dict, int]:
    """The Gluon kernel's arguments, options and grid for a call on `stream` (4-D (B, H, N, D) views): 4-D TMA
    descriptors over any strides, the LSE, the tile counter, the lengths and the tile count. `ctas`: the grid, if
    not sm90_grid's (compile checks on the CPU). Causal tiles, of unequal lengths, are dealt dynamically (each CTA,
    once it has loaded a tile, draws the next unstarted one); equal ones round-robin."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    batch, heads_q, seqlen_q, head_dim = query.shape
    element = gl.float16 if query.dtype == torch.float16 else gl.bfloat16

    def descriptor(tensor, rows):
        block = [1, 1, rows, head_dim]
        return TensorDescriptor(tensor, list(tensor.shape), list(tensor.stride()), block,
                                gl.NVMMASharedLayout.get_default_for(block, element))

    rows = int(_hopper_kernel.CONSUMER_ROWS)
    qk_scale, _ = kernel_scale(softmax_scale)
    num_tiles = batch * heads_q * triton.cdiv(seqlen_q, int(_hopper_kernel.BLOCK_M))
    section_heads = sm90_section_heads(query, key.shape[2], batch * heads_q, heads_q // key.shape[1]) if causal else 0
    if ctas is None:
        ctas = sm90_grid(num_tiles, query)
    args = (descriptor(query, rows), descriptor(key, SM90_BLOCK_N), descriptor(value, SM90_BLOCK_N),
            descriptor(out, rows), lse, sm90_tile_counter(query, stream), seqlen_q, key.shape[2], heads_q,
            heads_q // key.shape[1], num_tiles, section_heads, qk_scale)
    options = dict(HEAD_DIM=head_dim, BLOCK_N=SM90_BLOCK_N, STAGES=sm90_stages(head_dim, key.shape[2]),
                   IS_CAUSAL=causal, DYNAMIC=causal and ctas < num_tiles, num_warps=4, maxnreg=SM90_MAX_REGISTERS)
    return args, options, ctas


def _launch_sm90(plan_key, query, key, value, out, lse, *, causal: bool, softmax_scale: float) -> None:
    with _on_device_of(query):
        args, options, ctas = sm90_launch_arguments(query, key, value, out, lse, causal=causal,
                                                    softmax_scale=softmax_scale,
                                                    stream=current_stream(query.device.index))
        plan = launch(_hopper_kernel.attention_fwd_sm90_kernel, (ctas,), args, options, leading=6)
    if plan is not None:
        _forward_plans.put(plan_key, _Sm90Plan(plan))


def _launch(query, key, value, causal: bool, softmax_scale: float):
    batch, heads_q, seqlen_q, head_dim = query.shape
    heads_kv, seqlen_k = key.shape[1], key.shape[2]
    if _decode_plan.decode_shaped(seqlen_q, heads_q // heads_kv):
        # Few packed rows: K/V is a contiguous cache that every sequence fills (the decode kernel, split-KV).
        return _run_decode(query, key, value, None, None, 0, causal, softmax_scale, None)
    out = empty_like_query(query)
    lse = empty_lse(query)
    plan_key = None if _INTERPRETED else _plan_key(query, key, value, causal, softmax_scale)
    plan = None if plan_key is None else _forward_plans.get(plan_key)
    if plan is not None and direct_launch_available():
        with _on_device_of(query):
            plan(current_stream(query.device.index), query, key, value, out, lse, lse, lse)
        return out, lse
    if sm90_kernel_applies(query, key, value, out, causal, softmax_scale):
        _launch_sm90(plan_key, query, key, value, out, lse, causal=causal, softmax_scale=softmax_scale)
        return out, lse
    flops = 4 * batch * heads_q * seqlen_q * seqlen_k * head_dim
    use_tma = _tma_pays(flops) and _tma_capable(query, key, value, out)
    _first_launch(plan_key, query, key, value, out, lse, None, None, batch=batch, seqlen_q=seqlen_q,
                  seqlen_k=seqlen_k, causal=causal, softmax_scale=softmax_scale, use_tma=use_tma)
    return out, lse


def searched_varlen_grid(batch: int, max_seqlen_q: int, total_q: int) -> bool:
    """Whether a packed batch's programs find their sequences by a search (_kernel._varlen_row_block) rather than
    run the longest sequence's row blocks for every sequence: where that grid would hold more than twice as many
    programs (counted in 128-row blocks). Measured on an H100 (bf16, 32/8 heads, results/NOTES.md): one 8k sequence
    among 64 of 128 tokens 1.1-1.3x faster searched, among 448 1.7-2.2x; batches of near-equal lengths 1.5% slower
    on average (the search's dependent loads before each program's first tile), so they keep the plain grid."""
    blocks = triton.cdiv(max_seqlen_q, 128)
    return batch * blocks > 2 * (triton.cdiv(total_q, 128) + batch)


def _first_launch(plan_key, query, key, value, out, lse, cu_seqlens_q, cu_seqlens_k, *, batch: int, seqlen_q: int,
                  seqlen_k: int, causal: bool, softmax_scale: float, use_tma: bool) -> None:
    """A launch of the forward kernel through Triton's own path (autotuning on a configuration's first call), which
    leaves a launch plan under `plan_key` for the next call. query, key, value and out are 4-D (B, H, N, D) views;
    with cu_seqlens (varlen) they are the packed tensors as one batch (1, H, total, D), and seqlen_q/seqlen_k the
    max_seqlen bounds."""
    varlen = cu_seqlens_q is not None
    heads_q, head_dim = query.shape[1], query.shape[3]
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    qk_scale, positive_scale = kernel_scale(softmax_scale)
    seqlen_q_bucket, seqlen_k_bucket = _length_bucket(seqlen_q), _length_bucket(seqlen_k)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # Placeholder box sizes; each config's pre-hook sets the real ones before launch. A packed batch's output
        # is stored with pointers (a box would cross into the next sequence).
        q_arg, k_arg, v_arg, o_arg = (
            TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, head_dim_pad])
            if not (varlen and t is out) else t
            for t in (query, key, value, out)
        )
    else:
        q_arg, k_arg, v_arg, o_arg = query, key, value, out
    args = (
        q_arg, k_arg, v_arg, o_arg, lse,
        cu_seqlens_q if varlen else lse, cu_seqlens_k if varlen else lse,  # unused pointers when dense
        query.stride(0), query.stride(1), query.stride(2),
        key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads_q, heads_q // key.shape[1], seqlen_q, seqlen_k, head_dim, qk_scale,
        query.shape[2] if varlen else 0, key.shape[2] if varlen else 0, batch if varlen else 0,
        seqlen_q_bucket, seqlen_k_bucket,
    )
    flags = dict(
        IS_CAUSAL=causal, POSITIVE_SCALE=positive_scale, IS_BF16=query.dtype == torch.bfloat16,
        HEAD_DIM_PAD=head_dim_pad, USE_TMA=use_tma, DOT_IN_FP32=_dot_in_fp32(query), IS_VARLEN=varlen,
        SEARCH_SEQUENCE=varlen and searched_varlen_grid(batch, seqlen_q, query.shape[2]),
    )

    def grid(meta):
        if flags["SEARCH_SEQUENCE"]:  # virtual row blocks (_kernel._varlen_row_block) x heads
            return ((triton.cdiv(query.shape[2], meta["BLOCK_M"]) + batch) * heads_q,)
        return (batch * heads_q * triton.cdiv(seqlen_q, meta["BLOCK_M"]),)

    with _on_device_of(query):
        if _INTERPRETED:
            attention_fwd_kernel[grid](*args, **flags, **INTERPRETER_CONFIG)
            return
        if not AUTOTUNE:
            config = default_config(head_dim_pad, seqlen_q)
        else:
            tune_key = (device_index(query), head_dim_pad, causal, flags["IS_BF16"], use_tma, varlen,
                        seqlen_q_bucket, seqlen_k_bucket)  # the autotuner's key, per device
            config = _tuned_configs.get(tune_key)
            if config is None:  # first call of this key: tune (the tuner runs the kernel too) and remember
                _tuned_kernel[grid](*args, **flags)
                _tuned_configs[tune_key] = _tuned_kernel.best_config.all_kwargs()
                return
        # Known config: launch the kernel itself (not the autotuner), and keep the plan that repeats this launch.
        if use_tma:
            set_descriptor_block_shapes({"Q": q_arg, "K": k_arg, "V": v_arg, "Out": o_arg, **flags, **config})
        fixed_grid = grid({**flags, **config})
        plan = launch(attention_fwd_kernel, fixed_grid, args, {**flags, **config}, leading=7)
        _forward_plans.put(plan_key, plan)


@torch.library.custom_op("flash_attention::triton_fwd", mutates_args=())
def _triton_fwd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(query, key, value, causal, softmax_scale)


@_triton_fwd.register_fake
def _triton_fwd_fake(query, key, value, causal, softmax_scale):
    return torch.empty_like(query, memory_format=torch.preserve_format), empty_lse(query)


def _forward_only(ctx, grad_out, grad_lse):
    raise NotImplementedError(
        "flash_attention's triton backend is forward-only: its output has no backward. "
        "Use torch.nn.functional.scaled_dot_product_attention for training."
    )


_triton_fwd.register_autograd(_forward_only)


def run_validated(query, key, value, shape, *, causal, return_lse):
    """`attention` after check_attention_args (which returned `shape`): flash_attention.attention validates once."""
    reason = unavailable_reason(query)
    if reason is not None:
        raise ValueError(f"backend 'triton' cannot run this input: {reason}")
    if use_registered_op(query, key, value):
        out, lse = _triton_fwd(query, key, value, causal, shape.softmax_scale)
    else:
        out, lse = _launch(query, key, value, causal, shape.softmax_scale)
    return (out, lse) if return_lse else out


attention = attention_entry_point(run_validated, "triton")


# ------------------------------------------------------------------------------------------------ the KV-cache call
# The KV-cache call is two ops: an append that writes the caches in place (no outputs, so nothing to differentiate),
# and a functional decode whose backward raises like triton_fwd's.
@torch.library.custom_op("flash_attention::triton_kvcache_append", mutates_args=("key_cache", "value_cache"))
def _triton_kvcache_append(key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor]
                           ) -> None:
    with _on_device_of(key_cache):
        _decode.run_append(key_cache, value_cache, key, value, cache_seqlens, block_table)


@_triton_kvcache_append.register_fake
def _triton_kvcache_append_fake(key_cache, value_cache, key, value, cache_seqlens, block_table):
    return None


@torch.library.custom_op("flash_attention::triton_decode", mutates_args=())
def _triton_decode(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, cache_seqlens: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor], seqlen_new: int, causal: bool, softmax_scale: float, num_splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal, softmax_scale,
                       num_splits or None)


@_triton_decode.register_fake
def _triton_decode_fake(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal,
                        softmax_scale, num_splits):
    return torch.empty_like(query, memory_format=torch.preserve_format), empty_lse(query)


_triton_decode.register_autograd(_forward_only)


def _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal, softmax_scale,
                num_splits):
    with _on_device_of(query):
        return _decode.run_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new,
                                  causal=causal, softmax_scale=softmax_scale, num_splits=num_splits,
                                  interpreted=_INTERPRETED, dot_in_fp32=_dot_in_fp32(query))


def run_kvcache_validated(query, key_cache, value_cache, shape, *, cache_seqlens, block_table, key, value, causal,
                          return_lse):
    """`attention_with_kvcache` after check_kvcache_args (which returned `shape`)."""
    reason = unavailable_reason(query)
    if reason is not None:
        raise ValueError(f"backend 'triton' cannot run this input: {reason}")
    seqlen_new = 0
    if key is not None:
        seqlen_new = key.shape[2]
        if use_registered_op(key_cache, value_cache, key, value):
            _triton_kvcache_append(key_cache, value_cache, key, value, cache_seqlens, block_table)
        else:
            with _on_device_of(key_cache):
                _decode.run_append(key_cache, value_cache, key, value, cache_seqlens, block_table)
    if use_registered_op(query, key_cache, value_cache):
        out, lse = _triton_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal,
                                  shape.softmax_scale, shape.num_splits or 0)
    else:
        out, lse = _run_decode(query, key_cache, value_cache, cache_seqlens, block_table, seqlen_new, causal,
                               shape.softmax_scale, shape.num_splits)
    return (out, lse) if return_lse else out


attention_with_kvcache = kvcache_entry_point(run_kvcache_validated, "triton")


# ------------------------------------------------------------------------------------------------ the varlen call
def _launch_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                   causal: bool, softmax_scale: float):
    """The forward kernel on packed sequences (IS_VARLEN): query (total_q, Hq, D), key/value (total_k, Hkv, D)."""
    total_q, heads_q, head_dim = query.shape
    out = empty_like_query(query)
    lse = empty_varlen_lse(query)
    batch = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or max_seqlen_q == 0:
        return out, lse  # no query row belongs to a sequence
    plan_key = None
    if not _INTERPRETED:
        plan_key = ("varlen", query.device.index, query.dtype, query.shape, query.stride(), key.shape, key.stride(),
                    value.stride(), batch, max_seqlen_q, max_seqlen_k,
                    aligned16(query, key, value, cu_seqlens_q, cu_seqlens_k), causal, softmax_scale, AUTOTUNE,
                    USE_TMA, TMA_MIN_FLOPS)
        plan = _forward_plans.get(plan_key)
        if plan is not None and direct_launch_available():
            with _on_device_of(query):
                plan(current_stream(query.device.index), query, key, value, out, lse, cu_seqlens_q, cu_seqlens_k)
            return out, lse
    # The packed tensors as one batch of total rows: (1, H, total, D) views, no copy.
    q4, k4, v4, o4 = (t.permute(1, 0, 2).unsqueeze(0) for t in (query, key, value, out))
    flops = 4 * heads_q * total_q * min(max_seqlen_k, key.shape[0]) * head_dim  # at most this much work
    use_tma = _tma_pays(flops) and _tma_capable(q4, k4, v4)
    _first_launch(plan_key, q4, k4, v4, o4, lse, cu_seqlens_q, cu_seqlens_k, batch=batch, seqlen_q=max_seqlen_q,
                  seqlen_k=max_seqlen_k, causal=causal, softmax_scale=softmax_scale, use_tma=use_tma)
    return out, lse


@torch.library.custom_op("flash_attention::triton_varlen_fwd", mutates_args=())
def _triton_varlen_fwd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool, softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                          softmax_scale)


@_triton_varlen_fwd.register_fake
def _triton_varlen_fwd_fake(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                            softmax_scale):
    return torch.empty_like(query, memory_format=torch.preserve_format), empty_varlen_lse(query)


_triton_varlen_fwd.register_autograd(_forward_only)


def run_varlen_validated(query, key, value, cu_seqlens_q, cu_seqlens_k, shape, *, causal, return_lse):
    """`attention_varlen` after check_varlen_args (which returned `shape`)."""
    reason = unavailable_reason(query)
    if reason is not None:
        raise ValueError(f"backend 'triton' cannot run this input: {reason}")
    arguments = (query, key, value, cu_seqlens_q, cu_seqlens_k, shape.max_seqlen_q, shape.max_seqlen_k, causal,
                 shape.softmax_scale)
    if use_registered_op(query, key, value):
        out, lse = _triton_varlen_fwd(*arguments)
    else:
        out, lse = _launch_varlen(*arguments)
    return (out, lse) if return_lse else out


attention_varlen = varlen_entry_point(run_varlen_validated, "triton")
