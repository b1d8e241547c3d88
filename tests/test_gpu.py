"""What only a GPU shows: the autotuned and TMA paths, huge and odd shapes, CUDA graphs, streams, torch.compile.
Every test here skips cleanly without a GPU."""

from __future__ import annotations

import pytest
import torch

import flash_attention
from conftest import KERNEL_BACKENDS, random_qkv, requires_gpu
from reference import assert_attention_close, attention_reference

pytestmark = requires_gpu


def check_slice(out, lse, q, k, v, heads, *, causal=False):
    """Compare only the given query heads (a huge call's reference would not fit)."""
    group = q.shape[1] // k.shape[1]
    kv_heads = slice(heads.start // group, (heads.stop - 1) // group + 1)
    assert_attention_close(out[:, heads], lse[:, heads], q[:, heads], k[:, kv_heads], v[:, kv_heads], causal=causal)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
def test_triton_autotuned_path(monkeypatch, head_dim, causal, tma):
    monkeypatch.setattr(flash_attention.triton, "AUTOTUNE", True)
    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0 if tma else float("inf"))
    # The first call tunes, the second launches the remembered config and keeps its plan, the third runs the plan.
    for _ in range(3):
        q, k, v = random_qkv(2, 4, 2, 1000, 1000, head_dim, torch.float16)
        out, lse = flash_attention.attention(q, k, v, causal=causal, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_triton_launch_plans_repeat_the_launch_on_new_tensors(monkeypatch, layout, tma):
    """After the first call of a configuration the Triton backend launches its kept plan: new tensors (new pointers),
    each call checked against float64; a TMA-unaligned view (an offset query) keys a plan of its own."""
    from flash_attention.triton import _forward_plans

    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0 if tma else float("inf"))
    _forward_plans.clear()
    for _ in range(3):
        q, k, v = random_qkv(2, 4, 2, 200, 300, 64, torch.bfloat16, layout=layout)
        out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=True)
    assert len(_forward_plans) == 1
    for _ in range(2):
        base, k, v = random_qkv(2, 4, 2, 201, 300, 64, torch.bfloat16, layout=layout)
        q = base[:, :, 1:]  # 128 bytes past a row: still 16-byte aligned; [..., 4:] below is not
        out, lse = flash_attention.attention(q, k, v, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v)
        flat = torch.randn(q.numel() + 4, device="cuda").to(torch.bfloat16)
        shifted = flat[4:].view(q.shape)  # 8 bytes past 16-byte alignment: no TMA, another specialization
        out, lse = flash_attention.attention(shifted, k, v, return_lse=True, backend="triton")
        assert_attention_close(out, lse, shifted, k, v)
    assert len(_forward_plans) == 3


def test_triton_changing_lengths_launch_compiled_kernels_directly():
    """A model's lengths change every call (a decode step on a growing cache, prefills of new prompts): each call is
    a new launch plan, and it launches the kernel compiled for its arguments' specialization classes directly (a few
    kernels for forty lengths); every call checked against float64."""
    from flash_attention.triton import _launcher

    _launcher._compiled.clear()
    for seqlen_k in range(300, 340):  # decode-shaped: the decode kernel, one more key each step
        q, k, v = random_qkv(1, 8, 2, 1, seqlen_k, 64, torch.bfloat16)
        out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=True)
    for seqlen in range(200, 220):  # prefill of prompts of new lengths
        q, k, v = random_qkv(1, 4, 2, seqlen, seqlen, 64, torch.bfloat16, layout="bshd")
        out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=True)
    if _launcher.direct_launch_available():
        # Lengths split only by divisibility by 16 (and pointer alignment): 2 decode kernels, 4 prefill ones.
        assert len(_launcher._compiled) <= 8


@pytest.mark.parametrize("batch,heads_q,heads_kv,seqlen_q,seqlen_k,head_dim", [
    (1, 2, 2, 65, 1, 64), (2, 4, 1, 77, 300, 64), (1, 6, 2, 300, 77, 128), (2, 2, 2, 129, 129, 96),
    (1, 4, 4, 65, 1000, 256), (3, 8, 2, 257, 513, 32),
])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_triton_tma_path_on_small_shapes(monkeypatch, batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, causal,
                                         layout):
    """The TMA loads, which calls below TMA_MIN_FLOPS skip, forced on the contract's small cases: odd lengths,
    GQA, Nq > Nk under causal, head dims 32-256, BSHD views (more than 64 packed rows: not the decode path)."""
    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0)
    q, k, v = random_qkv(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, torch.bfloat16, layout=layout)
    out, lse = flash_attention.attention(q, k, v, causal=causal, return_lse=True, backend="triton")
    assert_attention_close(out, lse, q, k, v, causal=causal)


def _hopper():
    return torch.cuda.get_device_capability()[0] == 9


@pytest.mark.parametrize("batch,heads_q,heads_kv,seqlen_q,seqlen_k,head_dim", [
    (4, 16, 4, 1000, 1000, 128), (2, 8, 2, 300, 2049, 64), (1, 6, 1, 2100, 700, 128), (3, 4, 2, 129, 4097, 64),
    (2, 16, 4, 2100, 2100, 128), (8, 16, 4, 1000, 300, 64),
])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_triton_hopper_kernel(monkeypatch, batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, causal, dtype,
                              layout):
    """The Gluon kernel (Hopper): partial query and key tiles, GQA and MQA, Nq > Nk under causal (rows that see no
    key: output 0, LSE -inf; with more tiles than SMs, such tiles follow full ones in a CTA's list) and Nq < Nk,
    BSHD views, more work tiles than SMs (the persistent loop, Q buffers alternating, the K/V ring carried across
    tiles; causal: by sections of heads, drawn dynamically), rings of four and two stages at head dim 64 (rows of
    up to and over SM90_DEEP_RING_KEYS keys); each call the kernel takes (short causal rows too,
    which the dispatch sends to the portable kernel), checked against float64."""
    if not _hopper():
        pytest.skip("the Gluon kernel runs on compute capability 9.x")
    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0)
    monkeypatch.setattr(flash_attention.triton, "SM90_CAUSAL_MIN_KEYS", 0)
    q, k, v = random_qkv(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, layout=layout)
    assert flash_attention.triton.sm90_kernel_applies(q, k, v, torch.empty_like(q), causal, head_dim ** -0.5)
    for _ in range(2):  # the first launch, then its plan
        out, lse = flash_attention.attention(q, k, v, causal=causal, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=causal)


def test_triton_hopper_kernel_scope(monkeypatch):
    """Calls outside the Gluon kernel's scope run the portable kernel: another head dim, a negative scale, causal rows
    of fewer keys than SM90_CAUSAL_MIN_KEYS, float32 is refused anyway; FLASH_ATTENTION_TRITON_KERNEL=portable
    (KERNEL) turns it off."""
    if not _hopper():
        pytest.skip("the Gluon kernel runs on compute capability 9.x")
    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0)
    q, k, v = random_qkv(1, 4, 2, 300, 1100, 128, torch.bfloat16)
    applies = flash_attention.triton.sm90_kernel_applies
    assert applies(q, k, v, torch.empty_like(q), True, 0.1)
    assert not applies(q, k, v, torch.empty_like(q), True, -0.1)
    short = flash_attention.triton.SM90_CAUSAL_MIN_KEYS - 1  # rows of fewer keys than the threshold
    assert not applies(q, k[:, :, :short], v[:, :, :short], torch.empty_like(q), True, 0.1)
    assert applies(q, k[:, :, :short], v[:, :, :short], torch.empty_like(q), False, 0.1)
    q96, k96, v96 = random_qkv(1, 4, 2, 300, 1100, 96, torch.bfloat16)
    assert not applies(q96, k96, v96, torch.empty_like(q96), True, 0.1)
    monkeypatch.setattr(flash_attention.triton, "KERNEL", "portable")
    assert not applies(q, k, v, torch.empty_like(q), True, 0.1)
    out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend="triton")
    assert_attention_close(out, lse, q, k, v, causal=True)


def test_triton_hopper_dynamic_deal_on_streams_and_graphs(monkeypatch):
    """The Gluon kernel's dynamic deal (causal, persistent grid) draws tiles from a per-stream counter that each
    kernel leaves zero: calls back to back, a call on another stream and replays of a captured CUDA graph (which
    holds a counter of its own) each compute every tile (outputs NaN-checked and compared with float64)."""
    if not _hopper():
        pytest.skip("the Gluon kernel runs on compute capability 9.x")
    monkeypatch.setattr(flash_attention.triton, "SM90_CAUSAL_MIN_KEYS", 0)
    q, k, v = random_qkv(4, 16, 4, 1000, 1000, 128, torch.bfloat16)  # 512 tiles: more than SMs, rows of 1000 keys
    lse = torch.empty(q.shape[:3], device="cuda", dtype=torch.float32)
    _, options, ctas = flash_attention.triton.sm90_launch_arguments(
        q, k, v, torch.empty_like(q), lse, causal=True, softmax_scale=0.1, stream=0)
    assert options["DYNAMIC"] and ctas < 512

    def check():
        out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend="triton")
        assert_attention_close(out, lse, q, k, v, causal=True)
        return out

    for _ in range(3):
        expected = check()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        check()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = flash_attention.attention(q, k, v, causal=True, backend="triton")
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, expected)
    fresh = random_qkv(4, 16, 4, 1000, 1000, 128, torch.bfloat16)
    for static, new in zip((q, k, v), fresh):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, check())


def test_triton_falls_back_from_tma_on_unaligned_strides(monkeypatch):
    """A row stride of 72 elements (144 bytes) is TMA-legal; 68 is not (not a multiple of 16 bytes)."""
    monkeypatch.setattr(flash_attention.triton, "TMA_MIN_FLOPS", 0)
    base = torch.randn(1, 2, 300, 68, device="cuda", dtype=torch.float16)
    q = base[..., :64]
    k, v = (torch.randn_like(q) for _ in range(2))
    out, lse = flash_attention.attention(q, k, v, return_lse=True, backend="triton")
    assert_attention_close(out, lse, q, k, v)


@pytest.mark.parametrize("head_dim", [8, 248])
def test_odd_head_dims(kernel_backend, head_dim):
    q, k, v = random_qkv(1, 2, 1, 150, 130, head_dim, torch.bfloat16)
    out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend=kernel_backend)
    assert_attention_close(out, lse, q, k, v, causal=True)


@pytest.mark.slow
def test_more_than_2_31_elements(kernel_backend):
    """q and out hold more than 2^31 elements (2.18e9): offsets past int32 must be 64-bit."""
    heads, seqlen_q, head_dim = 1040, 16384, 128
    assert heads * seqlen_q * head_dim > 2**31
    q = torch.randn(1, heads, seqlen_q, head_dim, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(1, heads, 64, head_dim, device="cuda", dtype=torch.float16) for _ in range(2))
    out, lse = flash_attention.attention(q, k, v, return_lse=True, backend=kernel_backend)
    check_slice(out, lse, q, k, v, slice(heads - 2, heads))
    check_slice(out, lse, q, k, v, slice(0, 1))


def test_more_than_65535_batch_heads(kernel_backend):
    q, k, v = random_qkv(1100, 64, 8, 16, 24, 32, torch.float16)
    out, lse = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend=kernel_backend)
    check_slice(out[-2:], lse[-2:], q[-2:], k[-2:], v[-2:], slice(56, 64), causal=True)
    check_slice(out[:1], lse[:1], q[:1], k[:1], v[:1], slice(0, 8), causal=True)


@pytest.mark.parametrize("seqlen_q", [1, 7, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_128k_keys(kernel_backend, seqlen_q, causal):
    q, k, v = random_qkv(1, 2, 1, seqlen_q, 131072, 64, torch.bfloat16)
    out, lse = flash_attention.attention(q, k, v, causal=causal, return_lse=True, backend=kernel_backend)
    assert_attention_close(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("seqlen_q", [64, 200], ids=["decode-path", "prefill-path"])
def test_nan_and_inf_inputs_propagate_like_the_reference(kernel_backend, seqlen_q):
    """A NaN key reaches every row that sees it, an infinite value every row that weighs it. Rows that do not see
    the infinite value's key may read NaN or not: the float64 reference multiplies its masked zero weight by inf
    (NaN), a kernel that skips that key's tile does not (the decode kernels stop at each row block's last key)."""
    q, k, v = random_qkv(1, 2, 2, seqlen_q, seqlen_q, 64, torch.float16)
    k[0, 0, 10, 3] = float("nan")
    v[0, 1, 20, 5] = float("inf")
    out, _ = flash_attention.attention(q, k, v, causal=True, return_lse=True, backend=kernel_backend)
    ref, _ = attention_reference(q, k, v, causal=True)
    sees = torch.arange(seqlen_q, device=q.device) >= 20  # rows that see key 20 (bottom-right causal, Nq == Nk)
    must_be_nan = ref.isnan().clone()
    must_be_nan[0, 1, :, 5] &= sees
    assert (out.isnan() >= must_be_nan).all(), "NaN must reach every row the reference gives NaN through a seen key"
    assert not (out.isnan() & ~ref.isnan()).any(), "no NaN where the reference has none"
    finite = ref.isfinite()
    assert torch.allclose(out.double()[finite], ref[finite], atol=2e-2)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_a_nan_key_at_any_column_makes_every_row_nan(kernel_backend, head_dim):
    """A NaN score must not vanish in the softmax, whichever column of a key tile (and so which thread, register
    and exp2 path) it falls in: head h has one NaN key at position 40 + h, 16 heads cover every position mod 16."""
    q, k, v = random_qkv(1, 17, 17, 96, 300, head_dim, torch.float16)
    for head in range(16):
        k[0, head, 40 + head, head % head_dim] = float("nan")
    out, lse = flash_attention.attention(q, k, v, return_lse=True, backend=kernel_backend)
    assert out[0, :16].isnan().all(), "every row of a head with a NaN key is NaN"
    clean = slice(16, 17)
    assert_attention_close(out[:, clean], lse[:, clean], q[:, clean], k[:, clean], v[:, clean])


def test_cuda_graph_capture_and_replay(kernel_backend):
    q, k, v = random_qkv(2, 4, 2, 256, 256, 64, torch.float16)
    expected = flash_attention.attention(q, k, v, causal=True, backend=kernel_backend)  # compiles/tunes outside
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        flash_attention.attention(q, k, v, causal=True, backend=kernel_backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = flash_attention.attention(q, k, v, causal=True, backend=kernel_backend)
    fresh = random_qkv(2, 4, 2, 256, 256, 64, torch.float16)
    for static, new in zip((q, k, v), fresh):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(captured, expected)
    assert torch.equal(captured, flash_attention.attention(q, k, v, causal=True, backend=kernel_backend))


def test_non_default_stream_is_respected(kernel_backend):
    q, k, v = random_qkv(4, 8, 8, 1024, 1024, 128, torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # q, k, v are written on the default stream
    with torch.cuda.stream(stream):
        # Inputs made on this stream: a kernel on the default stream could read them before they are written.
        q2, k2, v2 = (t * 1.5 for t in (q, k, v))
        out = flash_attention.attention(q2, k2, v2, backend=kernel_backend)
        out_copy = out.clone()
    stream.synchronize()
    assert torch.equal(out_copy, flash_attention.attention(q * 1.5, k * 1.5, v * 1.5, backend=kernel_backend))


def test_torch_compile_fullgraph_matches_eager(kernel_backend):
    q, k, v = random_qkv(2, 4, 2, 128, 128, 64, torch.bfloat16)

    def block(q, k, v):
        out = flash_attention.attention(q * 0.5, k, v, causal=True, backend=kernel_backend)
        return out, out.float().sum(-1)

    compiled_out, compiled_sum = torch.compile(block, fullgraph=True)(q, k, v)
    eager_out, eager_sum = block(q, k, v)
    # The kernel is deterministic and q * 0.5 is exact: the attention output must match bit for bit. The sum around
    # it is Inductor's fused reduction against eager's, whose order (and so last bits) may differ.
    assert torch.equal(compiled_out, eager_out)
    torch.testing.assert_close(compiled_sum, eager_sum, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launches_on_the_inputs_device(kernel_backend):
    q, k, v = random_qkv(1, 2, 2, 64, 64, 64, torch.float16)
    q, k, v = (t.to("cuda:1") for t in (q, k, v))
    with torch.cuda.device(0):
        out, lse = flash_attention.attention(q, k, v, return_lse=True, backend=kernel_backend)
    assert out.device == q.device
    assert_attention_close(out, lse, q, k, v)


def test_auto_prefers_a_kernel_on_gpu():
    q, k, v = random_qkv(1, 2, 2, 64, 64, 64, torch.float16)
    assert KERNEL_BACKENDS, "a GPU machine must run at least the Triton kernel"
    out, lse = flash_attention.attention(q, k, v, return_lse=True)
    assert_attention_close(out, lse, q, k, v)
