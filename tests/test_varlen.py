"""The contract of `attention_varlen`: packed variable-length batches, for every backend that runs them here.

Each sequence is checked against float64 attention on its own rows and keys (tests/reference.py), with the tolerance
method of DESIGN.md; the outputs start NaN-poisoned, so a row a kernel skips fails. Runs on CUDA tensors with a GPU,
and on CPU tensors otherwise (the Triton kernel under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

import flash_attention
from conftest import BACKENDS, DEVICE, HAS_GPU, assert_forward_only, requires_gpu
from reference import assert_attention_close

DTYPES = [torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp16", "bf16"]
# The head dim of most cases: 64 on the GPU (the cuda backend's varlen kernels are the Hopper family's, which serve
# 40-64, 104-128 and 200-256), 32 under the interpreter (fast).
HEAD_DIM = 64 if HAS_GPU else 32


def _runs_varlen(name: str) -> bool:
    if name != "cuda":
        return True
    probe = torch.empty(1, 1, 64, device=DEVICE, dtype=torch.float16)
    return flash_attention.cuda.varlen_unsupported_reason(probe) is None


VARLEN_BACKENDS = [name for name in BACKENDS if _runs_varlen(name)]


@pytest.fixture(params=VARLEN_BACKENDS)
def varlen_backend(request):
    return request.param


def cu_seqlens(lengths) -> torch.Tensor:
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return torch.tensor(offsets, dtype=torch.int32, device=DEVICE)


def packed(total, heads, head_dim, dtype, *, layout="packed"):
    """(total, heads, head_dim) fresh normal values: contiguous, or a slice of a fused QKV projection's output
    (total, 3, heads, head_dim), whose row stride is three times its own size."""
    if layout == "qkv":
        return torch.randn(total, 3, heads, head_dim, device=DEVICE).to(dtype)[:, 1]
    return torch.randn(total, heads, head_dim, device=DEVICE).to(dtype)


def check_sequences(out, lse, query, key, value, lengths_q, lengths_k, *, causal, softmax_scale=None):
    """Each sequence b against float64 attention over its own keys; a sequence without keys gives 0 and LSE -inf."""
    cu_q, cu_k = cu_seqlens(lengths_q).tolist(), cu_seqlens(lengths_k).tolist()
    assert lse.shape == (query.shape[1], query.shape[0]) and lse.dtype == torch.float32
    for b in range(len(lengths_q)):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lengths_q[b] == 0:
            continue
        seq_out, seq_lse = out[rows].transpose(0, 1)[None], lse[:, rows][None]
        if lengths_k[b] == 0:
            assert torch.equal(seq_out, torch.zeros_like(seq_out)) and seq_lse.isneginf().all()
            continue
        assert_attention_close(seq_out, seq_lse, query[rows].transpose(0, 1)[None],
                               key[keys].transpose(0, 1)[None], value[keys].transpose(0, 1)[None], causal=causal,
                               softmax_scale=softmax_scale)


def run_and_check(backend, lengths_q, lengths_k, heads_q, heads_kv, head_dim, dtype, *, causal, layout="packed",
                  softmax_scale=None):
    query = packed(sum(lengths_q), heads_q, head_dim, dtype, layout=layout)
    key = packed(sum(lengths_k), heads_kv, head_dim, dtype, layout=layout)
    value = packed(sum(lengths_k), heads_kv, head_dim, dtype, layout=layout)
    out, lse = flash_attention.attention_varlen(
        query, key, value, cu_seqlens(lengths_q), cu_seqlens(lengths_k), max(lengths_q), max(lengths_k),
        causal=causal, softmax_scale=softmax_scale, return_lse=True, backend=backend)
    assert out.shape == query.shape and out.dtype == dtype
    check_sequences(out, lse, query, key, value, lengths_q, lengths_k, causal=causal, softmax_scale=softmax_scale)
    return out


# Sequence lengths: equal ones, ragged ones around the tile sizes, empty sequences (of queries, of keys), more queries
# than keys (causal rows that see nothing), one long sequence among short ones, many sequences (the Triton kernel
# finds each program's sequence by a binary search over cu_seqlens_q: five levels here).
LENGTHS = {
    "equal": ([64, 64, 64], [64, 64, 64]),
    "ragged": ([1, 17, 33, 90], [1, 17, 33, 90]),
    "chunked": ([16, 3, 40], [70, 9, 40]),
    "empty": ([0, 12, 5, 7], [4, 0, 5, 30]),
    "more_queries": ([40, 9], [7, 9]),
    "skewed": ([150, 2, 3, 1, 5], [150, 2, 3, 1, 5]),
    "no_keys_at_all": ([7, 20], [0, 0]),
    "many": ([3, 0, 40, 1, 0, 33, 7, 64, 0, 2, 31, 5, 0, 0, 9, 70, 1, 12, 0, 4, 32, 6],
             [5, 2, 40, 0, 1, 30, 7, 64, 3, 2, 31, 9, 0, 6, 9, 70, 1, 12, 8, 4, 33, 6]),
    "long_among_many": ([300] + [2, 0, 3] * 14, [290] + [2, 5, 3] * 14),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("heads_q,heads_kv", [(4, 1), (4, 2), (2, 2)], ids=["mqa", "gqa", "mha"])
def test_matches_reference(varlen_backend, dtype, causal, lengths, heads_q, heads_kv):
    run_and_check(varlen_backend, *lengths, heads_q, heads_kv, HEAD_DIM, dtype, causal=causal)


@pytest.mark.parametrize("search", [False, True], ids=["longest-grid", "searched"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", [LENGTHS[name] for name in ("many", "empty", "long_among_many", "ragged")],
                         ids=["many", "empty", "long_among_many", "ragged"])
def test_triton_grid_mappings(monkeypatch, search, causal, lengths):
    """The Triton kernel's two grids for packed batches, whichever the call would pick: the longest sequence's row
    blocks for every sequence, and the packed rows' blocks with each program's sequence found by a binary search
    (22 and 43 sequences: five and six levels). long_among_many picks the search by itself; the others do not."""
    assert flash_attention.triton.searched_varlen_grid(len(lengths[0]), max(lengths[0]), sum(lengths[0])) == (
        lengths is LENGTHS["long_among_many"])
    monkeypatch.setattr(flash_attention.triton, "searched_varlen_grid", lambda *_: search)
    flash_attention.triton._forward_plans.clear()  # a GPU call's plan would repeat the other grid
    run_and_check("triton", *lengths, 4, 2, HEAD_DIM, torch.bfloat16, causal=causal)
    flash_attention.triton._forward_plans.clear()


@requires_gpu
@pytest.mark.parametrize("head_dim,lengths_q,lengths_k", [(128, [2048, 300, 2100], [16384, 300, 2100]),
                                                          (64, [3000, 5], [3000, 5]),
                                                          (128, [16384, 70], [0, 70])],
                         ids=["d128", "d64", "no-keys"])
def test_long_causal_sequences(varlen_backend, head_dim, lengths_q, lengths_k):
    """Causal sequences of at least 16 query tiles a head, which the cuda backend's tile list orders by sections of
    heads (its dense order): with 16k keys two sections of a sequence's 6 heads (4 and 2 on a 50 MB L2), with 2100
    one; the 192-row tiles of head dim 64 with a partial first tile; 128 query tiles a head and no keys (every head
    fits the L2: one section of all of them; its rows give 0 and LSE -inf). Each tile listed once: a lost one leaves
    its rows poisoned."""
    run_and_check(varlen_backend, lengths_q, lengths_k, 6, 3, head_dim, torch.bfloat16, causal=True)


@pytest.mark.parametrize("head_dim", [8, 48, 64, 72, 112, 128, 208, 256])
def test_head_dims(varlen_backend, head_dim):
    if not HAS_GPU and head_dim > 64:
        pytest.skip("large head dims only on the GPU (the interpreter is slow)")
    if varlen_backend == "cuda" and not flash_attention.cuda._registry.sm90_covers(head_dim):
        pytest.skip("the cuda backend's varlen kernels serve head dims 40-64, 104-128 and 200-256")
    run_and_check(varlen_backend, [33, 100, 1], [50, 100, 7], 4, 2, head_dim, torch.float16, causal=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_slices_of_a_fused_qkv_projection(varlen_backend, causal):
    """query/key/value as views into a (total, 3, heads, head_dim) projection output: no copy is needed, and the
    output is dense (total, heads, head_dim)."""
    out = run_and_check(varlen_backend, [20, 45, 3], [20, 45, 3], 4, 4, 64, torch.bfloat16, causal=causal,
                        layout="qkv")
    assert out.is_contiguous()


@pytest.mark.parametrize("softmax_scale", [0.05, -0.3, 0.0])
def test_softmax_scale(varlen_backend, softmax_scale):
    run_and_check(varlen_backend, [9, 30], [9, 30], 2, 1, HEAD_DIM, torch.float16, causal=False,
                  softmax_scale=softmax_scale)


def test_equals_attention_on_a_dense_batch(varlen_backend):
    """A batch of equal lengths packed is the dense batch: the same output as attention() on (B, H, N, D)."""
    batch, heads, seqlen, head_dim = 3, 4, 37, HEAD_DIM
    query, key, value = (torch.randn(batch, seqlen, heads, head_dim, device=DEVICE).half() for _ in range(3))
    lengths = cu_seqlens([seqlen] * batch)
    out = flash_attention.attention_varlen(query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1), lengths,
                                           lengths, seqlen, seqlen, causal=True, backend=varlen_backend)
    dense = flash_attention.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                      causal=True, backend=varlen_backend)
    torch.testing.assert_close(out, dense.transpose(1, 2).flatten(0, 1), atol=2e-3, rtol=0)


def test_max_seqlen_larger_than_needed(varlen_backend):
    """max_seqlen is an upper bound: a looser one computes the same."""
    lengths = [30, 5]
    query, key, value = (packed(35, 2, HEAD_DIM, torch.float16) for _ in range(3))
    cu = cu_seqlens(lengths)
    tight = flash_attention.attention_varlen(query, key, value, cu, cu, 30, 30, causal=True, backend=varlen_backend)
    loose = flash_attention.attention_varlen(query, key, value, cu, cu, 200, 999, causal=True,
                                             backend=varlen_backend)
    assert torch.equal(tight, loose)


def test_forward_only_backward_raises(varlen_backend):
    query, key, value = (packed(12, 2, HEAD_DIM, torch.float16) for _ in range(3))
    query.requires_grad_(True)
    cu = cu_seqlens([5, 7])
    out = flash_attention.attention_varlen(query, key, value, cu, cu, 7, 7, backend=varlen_backend)
    assert_forward_only(out, query, varlen_backend)


def test_backend_modules_take_the_call_directly(varlen_backend):
    module = getattr(flash_attention, varlen_backend)
    query, key, value = (packed(12, 2, HEAD_DIM, torch.float16) for _ in range(3))
    cu = cu_seqlens([5, 7])
    out, lse = module.attention_varlen(query, key, value, cu, cu, 7, 7, return_lse=True)
    check_sequences(out, lse, query, key, value, [5, 7], [5, 7], causal=False)
    with pytest.raises(TypeError, match=r"cu_seqlens_q must have dtype torch\.int32"):
        module.attention_varlen(query, key, value, cu.long(), cu, 7, 7)


def test_cuda_backend_says_where_it_cannot_run():
    """On CPU tensors, on GPUs other than Hopper, and for head dims its Hopper family does not serve, backend='cuda'
    says why (and auto takes another backend)."""
    query, key, value = (packed(12, 2, 32, torch.float16) for _ in range(3))
    cu = cu_seqlens([5, 7])
    message = (r"backend 'cuda' cannot run this input: .*(needs CUDA tensors|compute capability 9\.0|head dims 40-64)"
               if "cuda" in BACKENDS or not HAS_GPU else r"backend 'cuda' cannot run this input")
    with pytest.raises(ValueError, match=message):
        flash_attention.attention_varlen(query, key, value, cu, cu, 7, 7, backend="cuda")
    out, lse = flash_attention.attention_varlen(query, key, value, cu, cu, 7, 7, return_lse=True)
    check_sequences(out, lse, query, key, value, [5, 7], [5, 7], causal=False)


# ------------------------------------------------------------------------------------------------ bad input
def good_call():
    query, key, value = (packed(12, 4, 32, torch.float16) for _ in range(3))
    key, value = key[:, :2], value[:, :2]
    cu = cu_seqlens([5, 7])
    return dict(query=query, key=key, value=value, cu_seqlens_q=cu, cu_seqlens_k=cu.clone(), max_seqlen_q=7,
                max_seqlen_k=7)


ERROR_CASES = [
    ("query_4d", lambda a: {"query": a["query"][None]}, ValueError, r"query must be 3-D \(total_tokens, heads"),
    ("float32", lambda a: {"key": a["key"].float()}, TypeError, r"key must have dtype torch\.float16 or"),
    ("dtype_mismatch", lambda a: {"value": a["value"].bfloat16()}, TypeError, r"value has dtype torch\.bfloat16"),
    ("kv_shapes", lambda a: {"value": a["value"][:10]}, ValueError, r"key and value must have the same shape"),
    ("head_dim", lambda a: {"key": a["key"][..., :16], "value": a["value"][..., :16]}, ValueError,
     r"key has head_dim 16 but query has 32"),
    ("heads", lambda a: {"key": a["key"][:, :1].expand(12, 3, 32), "value": a["value"][:, :1].expand(12, 3, 32)},
     ValueError, r"query heads \(4\) must be a multiple of key/value heads \(3\)"),
    ("cu_int64", lambda a: {"cu_seqlens_q": a["cu_seqlens_q"].long()}, TypeError,
     r"cu_seqlens_q must have dtype torch\.int32"),
    ("cu_2d", lambda a: {"cu_seqlens_k": a["cu_seqlens_k"][None]}, ValueError, r"cu_seqlens_k must be 1-D"),
    ("cu_short", lambda a: {"cu_seqlens_q": a["cu_seqlens_q"][:1], "cu_seqlens_k": a["cu_seqlens_k"][:1]},
     ValueError, r"cu_seqlens_q must hold batch \+ 1 >= 2 offsets"),
    ("cu_lengths_differ", lambda a: {"cu_seqlens_k": a["cu_seqlens_k"][:2]}, ValueError,
     r"cu_seqlens_q and cu_seqlens_k must have the same length"),
    ("cu_list", lambda a: {"cu_seqlens_q": [0, 5, 12]}, TypeError, r"cu_seqlens_q must be a torch\.Tensor"),
    ("max_float", lambda a: {"max_seqlen_q": 7.0}, TypeError, r"max_seqlen_q must be a Python int"),
    ("max_bool", lambda a: {"max_seqlen_k": True}, TypeError, r"max_seqlen_k must be a Python int"),
    ("max_negative", lambda a: {"max_seqlen_k": -1}, ValueError, r"max_seqlen_k must be >= 0"),
    ("scale_nan", lambda a: {"softmax_scale": float("nan")}, ValueError, r"softmax_scale must be finite"),
    ("causal_int", lambda a: {"causal": 1}, TypeError, r"causal must be a bool"),
]


@pytest.mark.parametrize("changes,error,message", [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_bad_input_is_refused_clearly(backend, changes, error, message):
    args = good_call()
    args.update(changes(args))
    with pytest.raises(error, match=message):
        flash_attention.attention_varlen(**args, backend=backend)


@pytest.mark.skipif(HAS_GPU, reason="values are checked only on CPU tensors (on the GPU that would synchronise)")
@pytest.mark.parametrize("cu_q,max_q,message", [
    ([1, 5, 12], 7, r"cu_seqlens_q must start at 0, got 1"),
    ([0, 8, 5], 8, r"cu_seqlens_q must be non-decreasing"),
    ([0, 5, 13], 8, r"cu_seqlens_q ends at 13, past the 12 packed rows"),
    ([0, 5, 12], 6, r"max_seqlen_q \(6\) is smaller than the longest sequence of cu_seqlens_q \(7\)"),
])
def test_cpu_values_are_checked(cu_q, max_q, message):
    args = good_call()
    args.update(cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32), max_seqlen_q=max_q)
    with pytest.raises(ValueError, match=message):
        flash_attention.attention_varlen(**args)


# ------------------------------------------------------------------------------------------------ GPU only
@requires_gpu
def test_out_of_range_offsets_stay_inside_the_tensors(varlen_backend):
    """cu_seqlens that break the caller's guarantee (decreasing, past the totals, negative): the call finishes and
    writes nothing outside the output (the sanitizer run checks the accesses). The valid first sequence, whose rows no
    broken one overlaps, is still right."""
    if varlen_backend == "naive":
        pytest.skip("the reference path masks with the given offsets; the kernels are what this checks")
    storage = torch.randn(3 * 64, 2, 64, device=DEVICE).half()
    guard = storage.clone()
    query, key, value = storage[64:128], storage[:64], storage[128:]
    cu_q = torch.tensor([0, 20, 1 << 30, 30, 64], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 20, -(1 << 30), 1 << 20, 3], dtype=torch.int32, device=DEVICE)
    out, lse = flash_attention.attention_varlen(query, key, value, cu_q, cu_k, 64, 64, causal=True, return_lse=True,
                                                backend=varlen_backend)
    torch.cuda.synchronize()
    assert torch.equal(storage, guard), "the inputs must not be written"
    check_sequences(out[:20], lse[:, :20], query[:20], key[:20], value[:20], [20], [20], causal=True)


@requires_gpu
def test_cuda_graph_replay_with_changed_lengths(varlen_backend):
    if varlen_backend == "naive":
        pytest.skip("graphs are for the kernel backends")
    query, key, value = (packed(300, 4, 128, torch.bfloat16) for _ in range(3))
    cu = cu_seqlens([100, 100, 100])
    kwargs = dict(causal=True, return_lse=True, backend=varlen_backend)
    flash_attention.attention_varlen(query, key, value, cu, cu, 300, 300, **kwargs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = flash_attention.attention_varlen(query, key, value, cu, cu, 300, 300, **kwargs)
    for lengths in ([300, 0, 0], [1, 150, 149], [7, 290, 3]):
        cu.copy_(cu_seqlens(lengths))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check_sequences(out, lse, query, key, value, lengths, lengths, causal=True)


@requires_gpu
def test_torch_compile_fullgraph(varlen_backend):
    query, key, value = (packed(96, 4, 64, torch.float16) for _ in range(3))
    cu = cu_seqlens([40, 50, 6])

    def layer(q, k, v, cu_q, cu_k):
        return flash_attention.attention_varlen(q, k, v, cu_q, cu_k, 50, 50, causal=True, backend=varlen_backend) * 2

    expected = layer(query, key, value, cu, cu)
    compiled = torch.compile(layer, fullgraph=True)(query, key, value, cu, cu)
    if varlen_backend == "naive":  # Inductor fuses the naive math (fp16 rounding differs): fp16's tolerance
        torch.testing.assert_close(compiled, expected, atol=2e-3, rtol=2e-3)
    else:  # the compiled graph calls the same kernel
        torch.testing.assert_close(compiled, expected, atol=0, rtol=0)


@requires_gpu
def test_auto_takes_a_kernel_on_the_gpu():
    query, key, value = (packed(64, 2, 64, torch.float16) for _ in range(3))
    cu = cu_seqlens([64])
    out, lse = flash_attention.attention_varlen(query, key, value, cu, cu, 64, 64, return_lse=True)
    check_sequences(out, lse, query, key, value, [64], [64], causal=False)
