"""The contract of `attention_with_kvcache` and `merge_attention_states`, for every backend that can run here.

Each sequence is checked against float64 attention over the keys its cache holds after the append (tests/reference.py),
with the tolerance method of DESIGN.md. Runs on CUDA tensors with a GPU, and on CPU tensors otherwise (the Triton
kernel under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

import flash_attention
from conftest import BACKENDS, DEVICE, HAS_GPU, assert_forward_only, requires_gpu
from reference import assert_attention_close

DTYPES = [torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp16", "bf16"]




class Cache:
    """A KV cache of `capacity` keys per sequence, contiguous or in scattered pages, in BHSD or BSHD storage."""

    def __init__(self, batch, heads_kv, capacity, head_dim, dtype, *, page_size=None, layout="bhsd"):
        self.batch, self.capacity, self.page_size = batch, capacity, page_size

        def storage(rows, length):
            if layout == "bshd":
                return torch.randn(rows, length, heads_kv, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
            return torch.randn(rows, heads_kv, length, head_dim, device=DEVICE).to(dtype)

        if page_size is None:
            self.key, self.value = storage(batch, capacity), storage(batch, capacity)
            self.block_table = None
        else:
            blocks = -(-capacity // page_size)
            num_pages = batch * blocks + 3  # spare pages that no sequence uses
            self.key, self.value = storage(num_pages, page_size), storage(num_pages, page_size)
            order = torch.randperm(num_pages)[: batch * blocks]
            self.block_table = order.view(batch, blocks).to(torch.int32).to(DEVICE)

    def logical(self, cache):
        """(B, Hkv, capacity, D) in sequence order."""
        if self.block_table is None:
            return cache
        pages = cache[self.block_table.long()]  # (B, blocks, Hkv, page, D)
        return pages.transpose(1, 2).flatten(2, 3)

    def clone(self):
        twin = object.__new__(Cache)
        twin.__dict__.update(self.__dict__)
        twin.key, twin.value = self.key.clone(), self.value.clone()
        return twin


def check_against_reference(out, lse, query, cache, lengths, *, causal, softmax_scale=None):
    """Each sequence b against float64 attention over its first lengths[b] logical keys."""
    keys, values = cache.logical(cache.key), cache.logical(cache.value)
    for b, length in enumerate(lengths):
        rows = slice(b, b + 1)
        if length == 0:
            assert torch.equal(out[rows], torch.zeros_like(out[rows])) and lse[rows].isneginf().all()
            continue
        assert_attention_close(out[rows], lse[rows], query[rows], keys[rows, :, :length], values[rows, :, :length],
                               causal=causal, softmax_scale=softmax_scale)


def make_query(batch, heads_q, seqlen_q, head_dim, dtype, layout="bhsd"):
    if layout == "bshd":
        return torch.randn(batch, seqlen_q, heads_q, head_dim, device=DEVICE).to(dtype).transpose(1, 2)
    return torch.randn(batch, heads_q, seqlen_q, head_dim, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("page_size", [None, 16, 64], ids=["contiguous", "page16", "page64"])
@pytest.mark.parametrize("heads_q,heads_kv,seqlen_q", [(4, 1, 1), (8, 2, 3), (2, 2, 5), (16, 2, 5)],
                         ids=["mqa1", "gqa3", "mha5", "gqa8x5"])
def test_matches_reference(backend, dtype, causal, page_size, heads_q, heads_kv, seqlen_q):
    """Per-sequence lengths 0, 1, short and full, with 2 appended tokens; the cache is checked after the append.
    gqa8x5 packs 40 rows per K/V head: a full and a partial block of the CUDA kernel's 32-row CTAs."""
    capacity, head_dim, new = 150, 64, 2
    cache = Cache(4, heads_kv, capacity, head_dim, dtype, page_size=page_size)
    lengths_before = [0, 1, 61, capacity - new]
    seqlens = torch.tensor(lengths_before, dtype=torch.int32, device=DEVICE)
    query = make_query(4, heads_q, seqlen_q, head_dim, dtype)
    key_new, value_new = (torch.randn(4, heads_kv, new, head_dim, device=DEVICE).to(dtype) for _ in range(2))
    expected = cache.clone()
    for b, length in enumerate(lengths_before):
        for t in range(new):
            position = length + t
            if page_size is None:
                expected.key[b, :, position], expected.value[b, :, position] = key_new[b, :, t], value_new[b, :, t]
            else:
                page = expected.block_table[b, position // page_size].long()
                expected.key[page, :, position % page_size] = key_new[b, :, t]
                expected.value[page, :, position % page_size] = value_new[b, :, t]

    out, lse = flash_attention.attention_with_kvcache(
        query, cache.key, cache.value, cache_seqlens=seqlens, block_table=cache.block_table, key=key_new,
        value=value_new, causal=causal, return_lse=True, backend=backend)
    assert torch.equal(cache.key, expected.key) and torch.equal(cache.value, expected.value), \
        "the append must write exactly the new tokens at cache_seqlens[b] + t"
    check_against_reference(out, lse, query, cache, [n + new for n in lengths_before], causal=causal)


@pytest.mark.parametrize("num_splits", [None, 1, 3])
@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "page16"])
def test_a_decoding_loop(backend, num_splits, page_size):
    """Steps of one token appended and attended, as a model decodes: the same shapes every step (the Triton backend
    launches steps after the first through its launch plans) on new data and advancing lengths."""
    cache = Cache(2, 2, 96, 64, torch.bfloat16, page_size=page_size)
    lengths = [40, 7]
    for _ in range(4):
        seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
        query = make_query(2, 8, 1, 64, torch.bfloat16)
        key_new, value_new = (torch.randn(2, 2, 1, 64, device=DEVICE).to(torch.bfloat16) for _ in range(2))
        out, lse = flash_attention.attention_with_kvcache(
            query, cache.key, cache.value, cache_seqlens=seqlens, block_table=cache.block_table, key=key_new,
            value=value_new, causal=True, return_lse=True, num_splits=num_splits, backend=backend)
        lengths = [n + 1 for n in lengths]
        check_against_reference(out, lse, query, cache, lengths, causal=True)


@pytest.mark.parametrize("num_splits", [1, 3, 7])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("page_size", [16, 24])
def test_split_kv_matches_reference(backend, num_splits, causal, page_size):
    """Forced splits, more than some sequences have key tiles (empty splits must merge as nothing). Pages of 24 keys
    hold no whole number of key tiles, so a tile's keys take their pages one by one. 20 packed rows per K/V head:
    one 32-row CTA unsplit, a full and a partial 16-row CTA split (the CUDA kernel)."""
    cache = Cache(3, 2, 200, 64, torch.bfloat16, page_size=page_size)
    lengths = [200, 33, 5]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    query = make_query(3, 20, 2, 64, torch.bfloat16)
    out, lse = flash_attention.attention_with_kvcache(
        query, cache.key, cache.value, cache_seqlens=seqlens, block_table=cache.block_table, causal=causal,
        return_lse=True, num_splits=num_splits, backend=backend)
    check_against_reference(out, lse, query, cache, lengths, causal=causal)


@requires_gpu
@pytest.mark.parametrize("width", ["narrow", "wide"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("page_size", [None, 16, 24], ids=["contiguous", "page16", "page24"])
def test_cuda_decode_cta_widths(monkeypatch, width, head_dim, num_splits, page_size):
    """Each CTA width of the CUDA decode kernel (four warps two to an SM, eight one to an SM), whichever the split
    model would pick: 40 packed rows per K/V head (a full and a partial 32-row CTA unsplit, 16-row CTAs split),
    lengths that leave warps without a tile, causal."""
    if "cuda" not in BACKENDS:
        pytest.skip("the cuda backend cannot run here")
    import flash_attention.cuda as cuda_backend

    chosen = {"narrow": cuda_backend._NARROW_DECODE_CTA, "wide": cuda_backend._WIDE_DECODE_CTA}[width]
    monkeypatch.setattr(cuda_backend, "decode_ctas", lambda kernel_head_dim: (chosen,))
    cuda_backend._planned_decode_launch.cache_clear()  # plans are cached per shape: none made with the real widths
    try:
        cache = Cache(3, 2, 300, head_dim, torch.bfloat16, page_size=page_size)
        lengths = [300, 45, 3]
        seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
        query = make_query(3, 16, 5, head_dim, torch.bfloat16)
        launch = cuda_backend.decode_launch(query, cache.key, cache.block_table, num_splits)
        assert (launch.warps, launch.rows) == (chosen.warps, 32 if num_splits == 1 else 16)
        out, lse = flash_attention.attention_with_kvcache(
            query, cache.key, cache.value, cache_seqlens=seqlens, block_table=cache.block_table, causal=True,
            return_lse=True, num_splits=num_splits, backend="cuda")
    finally:
        cuda_backend._planned_decode_launch.cache_clear()  # and none made with this test's
    check_against_reference(out, lse, query, cache, lengths, causal=True)


@pytest.mark.parametrize("max_split_pages", [64, 0], ids=["indices-per-split", "indices-per-tile"])
@pytest.mark.parametrize("page_size", [16, 24, 64])
def test_triton_paged_index_loads(monkeypatch, max_split_pages, page_size):
    """The Triton decode kernel's two ways to a key's page: the split's page indices loaded before its first tile
    (the default where they fit MAX_SPLIT_PAGES) and each tile's own; splits that start inside a page (24) and tiles
    that span pages (16 and 24 under the interpreter's 16-key tiles and the GPU's 128-key ones)."""
    from flash_attention.triton import _decode

    monkeypatch.setattr(_decode, "MAX_SPLIT_PAGES", max_split_pages)
    _decode._plans.clear()  # a GPU call's plan would keep the other load
    cache = Cache(3, 2, 384, 64, torch.bfloat16, page_size=page_size)
    lengths = [384, 250, 7]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    query = make_query(3, 4, 2, 64, torch.bfloat16)
    for num_splits in (1, 3):
        out, lse = flash_attention.attention_with_kvcache(
            query, cache.key, cache.value, cache_seqlens=seqlens, block_table=cache.block_table, causal=True,
            return_lse=True, num_splits=num_splits, backend="triton")
        check_against_reference(out, lse, query, cache, lengths, causal=True)
    _decode._plans.clear()


@pytest.mark.parametrize("head_dim", [72, 128, 256])
@pytest.mark.parametrize("num_splits", [65, 128])
def test_many_splits_merge(backend, head_dim, num_splits):
    """More splits than the CUDA combine's lanes hold in flight (16 partials) or weigh from one register (32), up to
    the limit; head_dim 72 leaves lanes of a row's warp without a column, and 6 rows leave a block's last warps
    without a row."""
    cache = Cache(2, 1, 1040, head_dim, torch.float16)
    lengths = [1040, 300]  # the second sequence leaves most splits empty
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    query = make_query(2, 3, 1, head_dim, torch.float16)
    out, lse = flash_attention.attention_with_kvcache(
        query, cache.key, cache.value, cache_seqlens=seqlens, return_lse=True, num_splits=num_splits,
        backend=backend)
    check_against_reference(out, lse, query, cache, lengths, causal=False)


def test_causal_rows_before_the_cache_see_nothing(backend):
    """Nq > L_b under causal: the first Nq - L_b rows see no key (output 0, LSE -inf); the rest see a prefix."""
    cache = Cache(2, 1, 40, 32, torch.float16)
    lengths = [3, 40]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    query = make_query(2, 2, 6, 32, torch.float16)
    out, lse = flash_attention.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens,
                                                      causal=True, return_lse=True, backend=backend)
    assert torch.equal(out[0, :, :3], torch.zeros_like(out[0, :, :3])) and lse[0, :, :3].isneginf().all()
    check_against_reference(out, lse, query, cache, lengths, causal=True)


@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "page16"])
def test_bshd_views_of_query_and_cache(backend, page_size):
    """FlashAttention's and vLLM's (..., seqlen, heads, D) caches and a (B, N, H, D) query pass as views."""
    cache = Cache(2, 2, 64, 64, torch.float16, page_size=page_size, layout="bshd")
    assert not cache.key.is_contiguous()
    lengths = [64, 20]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    query = make_query(2, 4, 3, 64, torch.float16, layout="bshd")
    out, lse = flash_attention.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens,
                                                      block_table=cache.block_table, return_lse=True,
                                                      backend=backend)
    assert out.stride() == query.stride(), "the output keeps query's layout"
    check_against_reference(out, lse, query, cache, lengths, causal=False)


def test_whole_cache_without_seqlens_equals_attention(backend):
    """cache_seqlens=None attends to the whole cache: the same as `attention` with the cache as key/value."""
    cache = Cache(2, 2, 90, 64, torch.float16)
    query = make_query(2, 4, 1, 64, torch.float16)
    out, lse = flash_attention.attention_with_kvcache(query, cache.key, cache.value, return_lse=True,
                                                      softmax_scale=0.3, backend=backend)
    assert_attention_close(out, lse, query, cache.key, cache.value, softmax_scale=0.3)


@pytest.mark.parametrize("seqlen_q", [1, 12])
@pytest.mark.parametrize("head_dim", [32, 128, 256])
def test_head_dims(backend, head_dim, seqlen_q):
    """2 and 24 packed rows per K/V head (the CUDA kernel's 16- and, up to head dim 128, 32-row CTAs)."""
    cache = Cache(1, 2, 70, head_dim, torch.bfloat16, page_size=16)
    seqlens = torch.tensor([70], dtype=torch.int32, device=DEVICE)
    query = make_query(1, 4, seqlen_q, head_dim, torch.bfloat16)
    out, lse = flash_attention.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens,
                                                      block_table=cache.block_table, return_lse=True,
                                                      backend=backend)
    check_against_reference(out, lse, query, cache, [70], causal=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("seqlen_q,heads_q,heads_kv", [(1, 8, 2), (4, 8, 1), (16, 4, 4)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_plain_attention_takes_the_decode_path(backend, dtype, seqlen_q, heads_q, heads_kv, causal):
    """`attention` with few packed rows and many keys runs the split-KV decode kernel in the kernel backends."""
    query = make_query(2, heads_q, seqlen_q, 64, dtype)
    key, value = (torch.randn(2, heads_kv, 300, 64, device=DEVICE).to(dtype) for _ in range(2))
    out, lse = flash_attention.attention(query, key, value, causal=causal, return_lse=True, backend=backend)
    assert_attention_close(out, lse, query, key, value, causal=causal)


# ------------------------------------------------------------------------------------------------ merging
def test_split_count_follows_the_cost_of_a_split():
    """The split heuristic: one wave at most, whole key tiles, and a split only where it is predicted to pay: a batch
    of one splits (8 programs would each stream alone at their own rate), while 32 programs that already saturate
    memory between them do not, unless their streams are long enough that a split still shortens the call."""
    from flash_attention._decode_plan import SplitCosts, choose_num_splits

    costs = SplitCosts(program_bytes_per_s=80e9, split_overhead_s=4e-6, min_keys_per_split=128)

    def splits(batch, keys, costs=costs):
        return choose_num_splits(programs=batch * 8, sequences=batch * 8, keys=keys, key_bytes=512,
                                 multiprocessors=132, programs_per_sm=1, bandwidth=2.85e12, costs=costs)[0]

    assert splits(1, 4096) == 16  # 132 // 8, rounded down to one wave
    assert splits(1, 1024) == 8  # 1024 keys hold eight 128-key splits
    assert splits(1, 100) == 1
    assert splits(4, 4096) == 1 and splits(16, 4096) == 1
    assert splits(4, 65536) == 4
    slow = SplitCosts(program_bytes_per_s=45e9, split_overhead_s=5e-6, min_keys_per_split=128)
    assert splits(4, 4096, slow) == 4  # a slower program is worth splitting where a faster one is not
    assert splits(1, 1 << 20) <= 128


def test_cuda_decode_launch_plans(monkeypatch):
    """The CUDA decode kernel's launch plan on an H100's numbers (132 SMs, 2.85 TB/s), 32/8 heads and d128 unless
    given, as measured (results/NOTES.md, "Narrow decode CTAs"): narrow CTAs where they go two to an SM or stream few
    keys each, wide ones where a few CTAs each stream long (batch 4 with 1k keys) or one wave streams long, 32 rows
    only unsplit."""
    import flash_attention.cuda as cuda_backend
    from flash_attention import _decode_plan

    monkeypatch.setattr(cuda_backend, "device_index", lambda tensor: -1)  # a device of its own in the plans' cache
    monkeypatch.setattr(_decode_plan, "multiprocessors", lambda device: 132)
    monkeypatch.setattr(_decode_plan, "memory_bandwidth", lambda device: 2.85e12)

    def plan(batch, keys, heads_q=32, seqlen_q=1, head_dim=128, num_splits=None):
        query = torch.empty(batch, heads_q, seqlen_q, head_dim, dtype=torch.bfloat16, device="meta")
        cache = torch.empty(batch, 8, keys, head_dim, dtype=torch.bfloat16, device="meta")
        launch = cuda_backend.decode_launch(query, cache, None, num_splits)
        return launch.num_splits, launch.rows, launch.warps

    assert plan(1, 1024) == (16, 16, 4)  # 132 // 8 splits of 64 keys
    assert plan(1, 16384) == (16, 16, 4)  # 1k keys a CTA
    assert plan(1, 65536) == (16, 16, 8)  # 4k keys a CTA, one wave: wide
    assert plan(4, 1024) == (1, 16, 8)  # 32 wide CTAs stream faster than narrow or split ones
    assert plan(16, 1024) == (1, 16, 4)  # 128 CTAs of 1k keys
    assert plan(16, 4096) == (1, 16, 8)  # 128 CTAs of 4k keys
    assert plan(64, 4096) == (1, 16, 4)  # 512 CTAs: two an SM
    assert plan(64, 1024, head_dim=64) == (1, 16, 4) and plan(16, 4096, head_dim=64) == (1, 16, 8)
    assert plan(16, 4096, heads_q=64, seqlen_q=4) == (1, 32, 4)  # one wave of 32-row CTAs: narrow still
    assert plan(1, 4096, heads_q=64, seqlen_q=4) == (8, 16, 4)  # 16 programs of 16 rows, split
    assert plan(1, 4096, head_dim=256) == (16, 16, 4)  # head dim 256: one width, four warps
    assert plan(1, 4096, heads_q=64, seqlen_q=4, num_splits=1) == (1, 32, 8)  # 8 CTAs alone: wide
    assert plan(1, 4096, heads_q=64, seqlen_q=4, num_splits=3) == (3, 16, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_attention_states_equals_attention_over_the_union(dtype):
    """Parts in float32 or in the inputs' dtype (a coarser one, bf16, would round the parts past the fp16 bound)."""
    query = make_query(2, 4, 5, 32, torch.float16)
    key, value = (torch.randn(2, 2, 90, 32, device=DEVICE).half() for _ in range(2))
    cuts = [0, 17, 18, 90]
    outs, lses = [], []
    for lo, hi in zip(cuts, cuts[1:]):
        part, part_lse = flash_attention.attention(query, key[:, :, lo:hi], value[:, :, lo:hi], return_lse=True,
                                                   backend="naive")
        outs.append(part.to(dtype))
        lses.append(part_lse)
    merged, merged_lse = flash_attention.merge_attention_states(outs, lses)
    assert merged.dtype == dtype and merged_lse.dtype == torch.float32
    assert_attention_close(merged.half(), merged_lse, query, key, value, multiple=4.0)
    stacked, stacked_lse = flash_attention.merge_attention_states(torch.stack(outs), torch.stack(lses))
    assert torch.equal(stacked, merged) and torch.equal(stacked_lse, merged_lse)


def test_merge_rows_without_keys():
    outs = torch.randn(3, 1, 2, 4, 8, device=DEVICE)
    lses = torch.randn(3, 1, 2, 4, device=DEVICE)
    lses[:, :, :, 0] = float("-inf")  # row 0: no part saw a key
    lses[1, :, :, 1] = float("-inf")  # row 1: part 1 saw none; its (garbage) output must not count
    out, lse = flash_attention.merge_attention_states(outs, lses)
    assert torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :])) and lse[..., 0].isneginf().all()
    two, two_lse = flash_attention.merge_attention_states([outs[0], outs[2]], [lses[0], lses[2]])
    torch.testing.assert_close(out[..., 1, :], two[..., 1, :])
    torch.testing.assert_close(lse[..., 1], two_lse[..., 1])


def test_merge_refuses_mismatched_parts():
    with pytest.raises(ValueError, match=r"lse must have its output's shape"):
        flash_attention.merge_attention_states([torch.randn(2, 3, 4)], [torch.randn(2, 4)])
    with pytest.raises(TypeError, match=r"outs must be a non-empty list"):
        flash_attention.merge_attention_states([], [])
    with pytest.raises(ValueError, match=r"outs\[1\] has shape"):
        flash_attention.merge_attention_states([torch.randn(2, 4), torch.randn(3, 4)], [torch.randn(2)] * 2)


# ------------------------------------------------------------------------------------------------ bad input
def good_call():
    query = torch.randn(2, 4, 1, 64, device=DEVICE).half()
    cache = torch.randn(2, 2, 32, 64, device=DEVICE).half()
    return dict(query=query, key_cache=cache, value_cache=cache.clone(),
                cache_seqlens=torch.tensor([3, 7], dtype=torch.int32, device=DEVICE))


ERROR_CASES = [
    ("int64 seqlens", dict(cache_seqlens=lambda a: a.long()), TypeError, r"cache_seqlens must have dtype torch\.int32"),
    ("seqlens per batch", dict(cache_seqlens=lambda a: a[:1]), ValueError, r"cache_seqlens must have one entry"),
    ("2-D seqlens", dict(cache_seqlens=lambda a: a[None]), ValueError, r"cache_seqlens must be 1-D"),
    ("cache batch", dict(key_cache=lambda c: c[:1], value_cache=lambda c: c[:1]), ValueError,
     r"key_cache has batch size 1 but query has 2"),
    ("cache shapes", dict(value_cache=lambda c: c[:, :, :16]), ValueError,
     r"key_cache and value_cache must have the same shape"),
    ("cache dtype", dict(key_cache=lambda c: c.bfloat16(), value_cache=lambda c: c.bfloat16()), TypeError,
     r"key_cache has dtype torch\.bfloat16 but query has torch\.float16"),
    ("heads", dict(key_cache=lambda c: torch.randn(2, 3, 32, 64, device=DEVICE).half(),
                   value_cache=lambda c: torch.randn(2, 3, 32, 64, device=DEVICE).half()), ValueError,
     r"query heads \(4\) must be a multiple of key/value cache heads \(3\)"),
    ("key without value", dict(key=torch.randn(2, 2, 1, 64, device=DEVICE).half()), ValueError,
     r"key and value must be given together"),
    ("new tokens shape", dict(key=torch.randn(2, 4, 1, 64, device=DEVICE).half(),
                              value=torch.randn(2, 4, 1, 64, device=DEVICE).half()), ValueError,
     r"key must be \(batch=2, heads_kv=2"),
    ("append without seqlens", dict(cache_seqlens=None, key=torch.randn(2, 2, 1, 64, device=DEVICE).half(),
                                    value=torch.randn(2, 2, 1, 64, device=DEVICE).half()), ValueError,
     r"need cache_seqlens"),
    ("block table dtype", dict(block_table=torch.zeros(2, 2, dtype=torch.int64, device=DEVICE)), TypeError,
     r"block_table must have dtype torch\.int32"),
    ("block table rank", dict(block_table=torch.zeros(2, dtype=torch.int32, device=DEVICE)), ValueError,
     r"block_table must be 2-D"),
    ("block table batch", dict(block_table=torch.zeros(3, 2, dtype=torch.int32, device=DEVICE)), ValueError,
     r"block_table must be \(batch=2"),
    ("strided seqlens", dict(cache_seqlens=torch.arange(4, dtype=torch.int32, device=DEVICE)[::2]), ValueError,
     r"cache_seqlens must have unit stride"),
    ("transposed block table", dict(block_table=torch.zeros(3, 2, dtype=torch.int32, device=DEVICE).t()), ValueError,
     r"block_table must have unit stride"),
    ("num_splits", dict(num_splits=0), ValueError, r"num_splits must be between 1 and 128"),
    ("num_splits type", dict(num_splits=2.0), TypeError, r"num_splits must be an int or None"),
    ("causal type", dict(causal=1), TypeError, r"causal must be a bool"),
]


@pytest.mark.parametrize("changes,error,message", [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_bad_input_is_refused_clearly(backend, changes, error, message):
    args = good_call()
    for name, change in changes.items():
        args[name] = change(args[name]) if callable(change) else change
    query = args.pop("query")
    with pytest.raises(error, match=message):
        flash_attention.attention_with_kvcache(query, args.pop("key_cache"), args.pop("value_cache"), **args,
                                               backend=backend)


@pytest.mark.skipif(HAS_GPU, reason="values are checked only on CPU tensors (on the GPU that would synchronise)")
def test_cpu_values_are_checked():
    args = good_call()
    with pytest.raises(ValueError, match=r"cache_seqlens \+ new tokens must lie in \[0, 32\]"):
        flash_attention.attention_with_kvcache(args["query"], args["key_cache"], args["value_cache"],
                                               cache_seqlens=torch.tensor([3, 33], dtype=torch.int32))
    pages = torch.randn(4, 2, 16, 64).half()
    with pytest.raises(ValueError, match=r"block_table entries must index key_cache's 4 blocks"):
        flash_attention.attention_with_kvcache(args["query"], pages, pages,
                                               block_table=torch.tensor([[0, 1], [2, 4]], dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ GPU only
@requires_gpu
@pytest.mark.parametrize("page_size", [None, 16, 256], ids=["contiguous", "page16", "page256"])
def test_out_of_range_values_stay_inside_the_cache(backend, page_size):
    """Lengths past the capacity and page indices past the cache: nothing outside is read or written (the sanitizer
    run checks the accesses; here the call must finish and leave a guard region untouched)."""
    if backend == "naive":
        pytest.skip("the reference path gathers with clamped indices; the kernels are what this checks")
    cache = Cache(2, 2, 256, 64, torch.float16, page_size=page_size)
    guard_key, guard_value = cache.key.clone(), cache.value.clone()
    seqlens = torch.tensor([250, 1 << 30], dtype=torch.int32, device=DEVICE)
    if cache.block_table is not None:
        cache.block_table[1, -1] = 1 << 20
    query = make_query(2, 4, 1, 64, torch.float16)
    new = torch.randn(2, 2, 8, 64, device=DEVICE).half()
    out = flash_attention.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens,
                                                 block_table=cache.block_table, key=new, value=new, backend=backend)
    torch.cuda.synchronize()
    assert not out[0].isnan().any()
    # Sequence 1 writes nowhere (its positions are past the capacity); sequence 0 writes 6 tokens and drops 2.
    for cache_now, guard in ((cache.key, guard_key), (cache.value, guard_value)):
        assert (cache_now != guard).any(dim=-1).sum().item() <= 2 * 6


@requires_gpu
@pytest.mark.parametrize("page_size", [None, 64], ids=["contiguous", "page64"])
def test_cuda_graph_replay_with_changed_lengths(backend, page_size):
    if backend == "naive":
        pytest.skip("graphs are for the kernel backends")
    cache = Cache(2, 2, 512, 128, torch.bfloat16, page_size=page_size)
    query = make_query(2, 8, 1, 128, torch.bfloat16)
    new = torch.randn(2, 2, 1, 128, device=DEVICE).bfloat16()
    seqlens = torch.tensor([10, 300], dtype=torch.int32, device=DEVICE)
    kwargs = dict(cache_seqlens=seqlens, block_table=cache.block_table, key=new, value=new, return_lse=True,
                  causal=True, backend=backend)
    flash_attention.attention_with_kvcache(query, cache.key, cache.value, **kwargs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = flash_attention.attention_with_kvcache(query, cache.key, cache.value, **kwargs)
    for lengths in ([100, 7], [0, 511], [400, 256]):
        seqlens.copy_(torch.tensor(lengths, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference(out, lse, query, cache, [n + 1 for n in lengths], causal=True)


@requires_gpu
def test_torch_compile_fullgraph(backend):
    cache = Cache(2, 2, 256, 64, torch.float16, page_size=16)
    query = make_query(2, 4, 1, 64, torch.float16)
    new = torch.randn(2, 2, 1, 64, device=DEVICE).half()
    seqlens = torch.tensor([5, 200], dtype=torch.int32, device=DEVICE)

    def step(q, key_cache, value_cache, lengths, table, k, v):
        out = flash_attention.attention_with_kvcache(q, key_cache, value_cache, cache_seqlens=lengths,
                                                     block_table=table, key=k, value=v, backend=backend)
        return out * 2

    expected_cache = cache.clone()
    expected = step(query, expected_cache.key, expected_cache.value, seqlens, cache.block_table, new, new)
    compiled = torch.compile(step, fullgraph=True)(query, cache.key, cache.value, seqlens, cache.block_table, new,
                                                   new)
    torch.testing.assert_close(compiled, expected)
    assert torch.equal(cache.key, expected_cache.key), "the compiled call must append in place"


@requires_gpu
def test_cuda_refuses_caches_it_cannot_copy_in_16_bytes_and_auto_moves_on():
    """A cache whose row stride is not a multiple of 8 elements cannot be read by 16-byte copies, and a cache is never
    copied: backend='cuda' says so; auto takes another backend and is right."""
    if "cuda" not in BACKENDS:
        pytest.skip("the cuda backend cannot run here")
    storage = torch.randn(2, 2, 64, 68, device=DEVICE).half()
    key_cache, value_cache = storage[..., :64], storage[..., 4:].clone()[..., :64]
    query = make_query(2, 4, 1, 64, torch.float16)
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run this input: .*16-byte aligned"):
        flash_attention.attention_with_kvcache(query, key_cache, value_cache, backend="cuda")
    out, lse = flash_attention.attention_with_kvcache(query, key_cache, value_cache, return_lse=True)
    assert_attention_close(out, lse, query, key_cache, value_cache)


def test_forward_only_backward_raises(backend):
    """The decode kernels have no backward: an output that needs a gradient is connected to the graph and its
    backward raises, never a silently missing gradient."""
    cache = Cache(1, 2, 40, 32, torch.float16)
    query = make_query(1, 4, 1, 32, torch.float16).requires_grad_(True)
    out = flash_attention.attention_with_kvcache(query, cache.key, cache.value, backend=backend)
    assert_forward_only(out, query, backend)


def test_backend_modules_take_the_call_directly(kernel_backend):
    """flash_attention.<backend>.attention_with_kvcache validates and runs like the public call with that backend."""
    module = getattr(flash_attention, kernel_backend)
    cache = Cache(2, 2, 48, 64, torch.float16, page_size=16)
    query = make_query(2, 4, 1, 64, torch.float16)
    seqlens = torch.tensor([48, 7], dtype=torch.int32, device=DEVICE)
    out, lse = module.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens,
                                             block_table=cache.block_table, return_lse=True)
    check_against_reference(out, lse, query, cache, [48, 7], causal=False)
    with pytest.raises(TypeError, match=r"cache_seqlens must have dtype torch\.int32"):
        module.attention_with_kvcache(query, cache.key, cache.value, cache_seqlens=seqlens.long(),
                                      block_table=cache.block_table)
