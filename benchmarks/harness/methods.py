"""What the call kinds share: what a method is, which methods are ours and which are the peers ours are compared
with, the two peers' calls (SDPA held to one backend, FlashAttention-4), and the random inputs."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BASELINE = "baseline"  # the naive backend: neither ours nor a peer, the N^2-memory reference point
# cuda_sm80 / cuda_sm90: the cuda backend held to one kernel family, to compare the two on a Hopper GPU in one run
# (the SM90 family exists only there). Not in any grid's default methods.
OURS = ("triton", "cuda", "cuda_sm80", "cuda_sm90")
PEERS = ("sdpa_flash", "sdpa_cudnn", "fa4")
SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable  # (inputs) -> output, in the layout the call kind's reference slices
    unavailable_reason: Callable  # (inputs) -> None, or a sentence saying why this method cannot run them


def random_tensors(device: torch.device, dtype: str, *sizes: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """Fresh torch.randn tensors (never zeros, which would hide unwritten outputs), the same for every method."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(size, generator=generator, device=device, dtype=DTYPES[dtype]) for size in sizes]


def unavailable_method(name: str, reason: str) -> Method:
    return Method(name, run=None, unavailable_reason=lambda inputs: reason)


def backend_unavailable_reason(backend: str, query: torch.Tensor) -> str | None:
    import flash_attention

    try:
        return flash_attention.backend_unavailable_reason(backend, query)
    except Exception as error:  # a backend still being written must not take the sweep down
        return f"backend {backend!r} could not say whether it runs: {type(error).__name__}: {error}"


def needs_cuda(who: str, query: torch.Tensor) -> str | None:
    return None if query.device.type == "cuda" else f"{who} needs CUDA tensors"


# ---------------------------------------------------------------------------------------------------------------- SDPA


def sdpa_mask(seqlen_q: int, seqlen_k: int, causal: bool) -> dict:
    """Our causal mask for SDPA, whose is_causal is top-left aligned where ours is bottom-right: the two agree when
    Nq == Nk; one query row sees every key; otherwise torch's causal_lower_right bias, which SDPA's flash backend runs
    natively (others may materialise it, or say they cannot run it)."""
    if not causal or seqlen_q == 1:
        return {}
    if seqlen_q == seqlen_k:
        return {"is_causal": True}
    from torch.nn.attention.bias import causal_lower_right

    return {"attn_mask": causal_lower_right(seqlen_q, seqlen_k)}


def sdpa(name: str, query, key, value, causal: bool) -> torch.Tensor:
    """SDPA held to the backend that method `name` stands for, on (B, H, N, D) tensors (GQA: fewer key heads)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name])):
        return F.scaled_dot_product_attention(query, key, value, enable_gqa=query.shape[1] != key.shape[1],
                                              **sdpa_mask(query.shape[2], key.shape[2], causal))


def sdpa_unavailable_reason(name: str, query: torch.Tensor) -> str | None:
    if name == "sdpa_cudnn":
        if query.device.type != "cuda":
            return "SDPA's cuDNN backend needs CUDA tensors"
        if not torch.backends.cudnn.is_available():
            return "cuDNN is not available in this torch build"
    return None  # on CPU, SDPBackend.FLASH_ATTENTION is PyTorch's fused CPU kernel


# ----------------------------------------------------------------------------------------------------------------- FA4


@functools.cache
def fa4_function(function_name: str):
    """(FlashAttention-4's function, None), or (None, why it cannot be had)."""
    try:
        return getattr(importlib.import_module("flash_attn.cute"), function_name), None
    except Exception as error:  # ImportError, or a CuTe DSL that fails at import on this machine
        return None, f"flash_attn.cute (FlashAttention-4) is not installed or does not import: {error}"


def fa4_importable() -> bool:
    return fa4_function("flash_attn_func")[1] is None


def fa4_dense(query, key, value, causal: bool) -> torch.Tensor:
    """FA4 on (B, H, N, D) tensors: it takes (B, N, H, D), and the transposed views share storage with ours, no copy.
    Its causal mask is bottom-right aligned and it takes GQA, as ours."""
    function, _ = fa4_function("flash_attn_func")
    result = function(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=causal)
    return (result[0] if isinstance(result, tuple) else result).transpose(1, 2)
