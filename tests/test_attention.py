"""The contract of `attention`, checked for every backend that can run here against float64.

Runs on CUDA tensors with a GPU, and on CPU tensors otherwise (the Triton kernel under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

import flash_attention
from conftest import DEVICE, assert_forward_only, random_qkv
from reference import assert_attention_close

DTYPES = [torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp16", "bf16"]


def run(backend, q, k, v, **kwargs):
    return flash_attention.attention(q, k, v, backend=backend, return_lse=True, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("head_dim", [32, 40, 64, 96, 128, 256])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(113, 113), (37, 150), (150, 37), (1, 77)])
def test_matches_reference(backend, dtype, head_dim, causal, seqlen_q, seqlen_k):
    q, k, v = random_qkv(1, 2, 2, seqlen_q, seqlen_k, head_dim, dtype)
    out, lse = run(backend, q, k, v, causal=causal)
    assert_attention_close(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads_q,heads_kv", [(6, 2), (4, 1)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grouped_query_attention(backend, dtype, heads_q, heads_kv, causal):
    q, k, v = random_qkv(2, heads_q, heads_kv, 65, 90, 64, dtype)
    out, lse = run(backend, q, k, v, causal=causal)
    assert_attention_close(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_bshd_views_are_read_in_place_and_kept_in_output(backend, dtype, causal):
    q, k, v = random_qkv(2, 4, 2, 70, 70, 64, dtype, layout="bshd")
    assert not q.is_contiguous()
    out, lse = run(backend, q, k, v, causal=causal)
    assert out.stride() == q.stride(), "output must keep query's (B, N, H, D) memory layout"
    assert_attention_close(out, lse, q, k, v, causal=causal)


def test_arbitrary_strides(backend):
    """Slices of bigger buffers and a batch-broadcast (stride 0) key/value: any strides with unit last stride."""
    dtype = torch.float16
    big = torch.randn(2, 3, 80, 96, device=DEVICE).to(dtype)
    q = big[:, :, 5:69, 16:80]  # row stride 96, offset base
    kv = torch.randn(1, 3, 50, 64, device=DEVICE).to(dtype)
    k = kv.expand(2, -1, -1, -1)
    v = torch.randn(2, 50, 3, 64, device=DEVICE).to(dtype).permute(0, 2, 1, 3)
    out, lse = run(backend, q, k, v)
    assert_attention_close(out, lse, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (1, 200), (200, 1)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_single_tokens(backend, dtype, seqlen_q, seqlen_k, causal):
    q, k, v = random_qkv(1, 2, 1, seqlen_q, seqlen_k, 32, dtype)
    out, lse = run(backend, q, k, v, causal=causal)
    assert_attention_close(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rows_that_see_no_key_give_zero_and_minus_inf(backend, dtype):
    """Causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k query rows see no key at all."""
    q, k, v = random_qkv(1, 2, 2, 100, 30, 64, dtype)
    out, lse = run(backend, q, k, v, causal=True)
    blind = 100 - 30
    assert torch.equal(out[:, :, :blind], torch.zeros_like(out[:, :, :blind]))
    assert lse[:, :, :blind].isneginf().all() and lse[:, :, blind:].isfinite().all()
    assert_attention_close(out, lse, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_logits(backend, dtype):
    """Scores in the hundreds: the online softmax must subtract the running max, never overflow."""
    q, k, v = random_qkv(1, 2, 2, 90, 90, 64, dtype, scale=6.0)
    out, lse = run(backend, q, k, v, softmax_scale=1.0)
    assert lse.abs().max() > 100
    assert_attention_close(out, lse, q, k, v, softmax_scale=1.0)


@pytest.mark.parametrize("softmax_scale", [0.5, 1e-3, 0.0, -0.3])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_softmax_scale(backend, softmax_scale, causal):
    q, k, v = random_qkv(1, 2, 2, 64, 80, 64, torch.float16)
    out, lse = run(backend, q, k, v, causal=causal, softmax_scale=softmax_scale)
    assert_attention_close(out, lse, q, k, v, causal=causal, softmax_scale=softmax_scale)


def test_default_scale_is_inverse_sqrt_head_dim(backend):
    q, k, v = random_qkv(1, 2, 2, 40, 40, 64, torch.float16)
    default = flash_attention.attention(q, k, v, backend=backend)
    explicit = flash_attention.attention(q, k, v, backend=backend, softmax_scale=0.125)
    assert torch.equal(default, explicit)


def test_return_lse_false_returns_tensor(backend):
    q, k, v = random_qkv(1, 2, 2, 40, 40, 64, torch.bfloat16)
    out = flash_attention.attention(q, k, v, backend=backend)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape


def test_auto_runs_a_backend_that_fits():
    q, k, v = random_qkv(1, 2, 2, 40, 40, 64, torch.float16)
    out, lse = flash_attention.attention(q, k, v, return_lse=True)
    assert_attention_close(out, lse, q, k, v)


def test_forward_only_backward_raises(backend):
    q, k, v = random_qkv(1, 2, 2, 40, 40, 64, torch.float16)
    q.requires_grad_(True)
    out = flash_attention.attention(q, k, v, backend=backend)
    assert_forward_only(out, q, backend)


def test_no_grad_and_inference_mode(kernel_backend):
    q, k, v = random_qkv(1, 2, 2, 40, 40, 64, torch.float16)
    q.requires_grad_(True)
    with torch.no_grad():
        out = flash_attention.attention(q, k, v, backend=kernel_backend)
    assert not out.requires_grad
    with torch.inference_mode():
        out = flash_attention.attention(q.detach(), k, v, backend=kernel_backend)
    assert out.is_inference()
