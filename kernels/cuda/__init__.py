"""The CUDA C++ (CuTe) backend, JIT-built on first use: FlashAttention-2's forward for SM80+ (mma.sync + cp.async),
and on compute capability 9.0 a Hopper family (TMA, warpgroup MMAs, warp specialization, a persistent grid).

    out = flash_attention.cuda.attention(q, k, v, causal=True)

The first call in a fresh cache builds the extension for the GPU in hand (a minute or two; see ``_loader``); build
ahead with ``python -m flash_attention.cuda.build``. ``backend="auto"`` picks this backend only once that build
exists (:func:`auto_eligible`), so automatic selection never starts a surprise build.

The kernel is the op ``torch.ops.flash_attention.cuda_fwd(q, k, v, causal, softmax_scale) -> (out, lse)``: its schema,
fake implementation (for torch.compile / FakeTensor) and autograd rule live here, its CUDA implementation in
``csrc/binding.cpp``. Forward only: backward raises NotImplementedError.
"""

from __future__ import annotations


import torch

from .._custom_op import use_registered_op
from .._device import capability, device_index
from .._validation import check_attention_args, check_cuda_tensor, empty_like_query
from . import _loader

__all__ = ["attention", "run_validated", "unavailable_reason", "auto_eligible", "sm90_family_covers"]

_OP_NAME = "flash_attention::cuda_fwd"
_CUDA_KERNEL_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
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


def sm90_family_covers(head_dim: int) -> bool:
    """Whether, on compute capability 9.0, a call of this head_dim runs the Hopper (SM90) kernel family."""
    return next((d for d in _PADDED_HEAD_DIMS if d >= head_dim), None) in _SM90_HEAD_DIMS


def auto_eligible(query) -> bool:
    """Whether `auto` should take this backend for `query`: only once the extension is loaded or cached for this GPU
    (`auto` never triggers a build), and on Hopper only for head dims the SM90 family covers, where it measured
    faster than the Triton kernel (results/NOTES.md); there the SM80 family, for the rest, is not."""
    if unavailable_reason(query) is not None:
        return False
    major, minor = capability(query)
    if (major, minor) == (9, 0) and not sm90_family_covers(query.shape[-1]):
        return False
    return _loader.is_built(f"{major}{minor}")


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


def attention(query, key, value, *, causal=False, softmax_scale=None, return_lse=False):
    """FlashAttention-2 forward on the GPU; same contract as ``flash_attention.attention``."""
    shape = check_attention_args(
        query, key, value, causal=causal, softmax_scale=softmax_scale, return_lse=return_lse
    )
    return run_validated(query, key, value, shape, causal=causal, return_lse=return_lse)


def run_validated(query, key, value, shape, *, causal, return_lse):
    """`attention` after check_attention_args (which returned `shape`): flash_attention.attention validates once."""
    check_cuda_tensor("cuda", query)
    if not torch.compiler.is_compiling():
        # Under torch.compile only the fake implementation runs while tracing; the compiled graph calls the op, so
        # the library must be loaded by then (any eager call, or `python -m flash_attention.cuda.build` + a call).
        major, minor = capability(query)
        if major < 8:
            raise ValueError(
                f"backend 'cuda' needs a GPU with compute capability >= 8.0, got {major}.{minor} on "
                f"{query.device}; use backend='triton' or 'naive'"
            )
        _loader.load(query.device)
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

