"""Bad input gets TypeError (type, dtype) or ValueError (shape, device, value) naming the argument, from the public
API and from each backend module alike, before any kernel runs."""

from __future__ import annotations

import importlib

import pytest
import torch

import flash_attention
from conftest import DEVICE, HAS_GPU


def good():
    make = lambda heads, n: torch.randn(2, heads, n, 64, device=DEVICE, dtype=torch.float16)  # noqa: E731
    return dict(query=make(4, 16), key=make(2, 24), value=make(2, 24))


def replace(**changes):
    def build():
        args = good()
        for name, change in changes.items():
            args[name] = change(args[name]) if callable(change) else change
        return args

    return build


CASES = [
    ("query not a tensor", replace(query=lambda q: q.tolist()), TypeError, r"query must be a torch\.Tensor, got list"),
    ("key is None", replace(key=None), TypeError, r"key must be a torch\.Tensor, got NoneType"),
    ("float32 query", replace(query=lambda q: q.float()), TypeError, r"query must have dtype .*got torch\.float32"),
    ("int value", replace(value=lambda v: v.to(torch.int32)), TypeError, r"value must have dtype .*torch\.int32"),
    ("mixed dtypes", replace(key=lambda k: k.bfloat16(), value=lambda v: v.bfloat16()), TypeError,
     r"key has dtype torch\.bfloat16 but query has torch\.float16"),
    ("3-D query", replace(query=lambda q: q[0]), ValueError, r"query must be 4-D .*got 3-D"),
    ("5-D key", replace(key=lambda k: k[None]), ValueError, r"key must be 4-D"),
    ("strided head_dim", replace(query=lambda q: torch.randn(2, 4, 16, 128, device=DEVICE).half()[..., ::2]),
     ValueError, r"query must have unit stride in its last"),
    ("key/value shape mismatch", replace(value=lambda v: v[:, :, :20]), ValueError,
     r"key and value must have the same shape"),
    ("batch mismatch", replace(key=lambda k: k[:1], value=lambda v: v[:1]), ValueError,
     r"key has batch size 1 but query has 2"),
    ("head_dim mismatch", replace(key=lambda k: k[..., :32], value=lambda v: v[..., :32]), ValueError,
     r"key has head_dim 32 but query has 64"),
    ("heads not divisible", replace(key=lambda k: k[:, :1].expand(2, 3, 24, 64).contiguous(),
                                    value=lambda v: v[:, :1].expand(2, 3, 24, 64).contiguous()), ValueError,
     r"query heads \(4\) must be a multiple of key/value heads \(3\)"),
    ("empty query", replace(query=lambda q: q[:, :, :0]), ValueError, r"query seqlen must be >= 1, got 0"),
    ("empty keys", replace(key=lambda k: k[:, :, :0], value=lambda v: v[:, :, :0]), ValueError,
     r"key seqlen must be >= 1, got 0"),
    ("head_dim not multiple of 8", replace(query=lambda q: q[..., :60].contiguous(),
                                           key=lambda k: k[..., :60].contiguous(),
                                           value=lambda v: v[..., :60].contiguous()), ValueError,
     r"head_dim must be a multiple of 8 and at most 256, got 60"),
    ("head_dim too large", replace(query=lambda q: torch.randn(2, 4, 16, 264, device=DEVICE).half(),
                                   key=lambda k: torch.randn(2, 2, 24, 264, device=DEVICE).half(),
                                   value=lambda v: torch.randn(2, 2, 24, 264, device=DEVICE).half()), ValueError,
     r"head_dim must be .* got 264"),
    ("causal not bool", lambda: {**good(), "causal": 1}, TypeError, r"causal must be a bool, got int"),
    ("return_lse not bool", lambda: {**good(), "return_lse": "yes"}, TypeError, r"return_lse must be a bool, got str"),
    ("scale is a string", lambda: {**good(), "softmax_scale": "0.1"}, TypeError,
     r"softmax_scale must be a real number or None, got str"),
    ("scale is a bool", lambda: {**good(), "softmax_scale": True}, TypeError, r"softmax_scale must be a real number"),
    ("scale is nan", lambda: {**good(), "softmax_scale": float("nan")}, ValueError,
     r"softmax_scale must be finite, got nan"),
    ("scale is inf", lambda: {**good(), "softmax_scale": float("inf")}, ValueError, r"softmax_scale must be finite"),
]
if HAS_GPU:
    CASES.append(("mixed devices", replace(key=lambda k: k.cpu()), ValueError, r"key is on cpu but query is on cuda"))


@pytest.mark.parametrize("entry", ["attention", "naive", "triton", "cuda"])
@pytest.mark.parametrize("description,build,error,pattern", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_clearly(entry, description, build, error, pattern):
    if entry == "attention":
        function = flash_attention.attention
    else:
        try:
            function = importlib.import_module(f"flash_attention.{entry}").attention
        except ImportError as missing:
            pytest.skip(f"backend {entry} not importable here: {missing}")
    with pytest.raises(error, match=pattern):
        function(**build())


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cuda', 'triton', 'naive'\), got 'flash'"):
        flash_attention.attention(**good(), backend="flash")
    with pytest.raises(TypeError, match=r"backend must be a str, got int"):
        flash_attention.attention(**good(), backend=3)


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal of CPU tensors by GPU kernels")
def test_gpu_kernels_refuse_cpu_tensors_with_advice(monkeypatch):
    cuda = pytest.importorskip("flash_attention.cuda")
    with pytest.raises(ValueError, match=r"backend 'cuda' .*CUDA tensors.*backend='naive'"):
        cuda.attention(**good())


def test_backend_unavailable_reason_is_a_sentence_or_none():
    for name in flash_attention.BACKENDS:
        reason = flash_attention.backend_unavailable_reason(name, good()["query"])
        assert reason is None or (isinstance(reason, str) and reason)
    assert "naive" in flash_attention.available_backends()
