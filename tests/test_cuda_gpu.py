"""CUDA backend on a GPU: correctness against float64 attention on the cases that stress the kernel's tiling
(padded head dims, partial tiles, causal diagonals, GQA, strided views, > 65,535 batch x heads). Skips without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

import flash_attention.cuda as fa_cuda
from flash_attention._validation import empty_like_query
from flash_attention.cuda import _registry

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        fa_cuda.unavailable_reason() is not None, reason=str(fa_cuda.unavailable_reason())
    ),
]


# On a Hopper GPU (9.0) the backend has two kernel families: the SM90 one (wgmma + TMA) for head dims that pad to
# 64 / 128 / 256, and the SM80 one for every head dim. Every test here runs with each family forced, so both are
# checked on the GPU that has both.
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(autouse=True, params=["sm90", "sm80"] if HOPPER else ["default"])
def kernel_family(request, monkeypatch):
    """The family every call of a test runs: the default options' (sm90: the registry's choice, which is the SM90
    family where it covers the head dim), or the SM80 family forced."""
    if request.param == "sm80":
        monkeypatch.setattr(_registry, "DEFAULT_OPTIONS", _registry.LaunchOptions(kernel_family="sm80"))
    return request.param


def launched_kernels(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [event.name for event in prof.events() if "flash_fwd" in event.name]


@pytest.mark.parametrize("head_dim", range(8, 257, 8))
def test_kernel_family_is_the_one_expected(head_dim, kernel_family):
    """The family asked for is the one that runs, for every head dim (so the tests here test what they claim, and
    the registry's sm90_covers, which `auto` relies on, says what runs)."""
    q = rand(1, 2, 300, head_dim)
    names = launched_kernels(lambda: fa_cuda.attention(q, q, q, causal=True))
    assert len(names) == 1, names
    sm90 = HOPPER and kernel_family == "sm90" and _registry.sm90_covers(head_dim)
    assert ("flash_fwd_sm90_kernel" if sm90 else "flash_fwd_sm80_kernel") in names[0], names[0]


def test_default_kernel_family_on_hopper(monkeypatch):
    if not HOPPER:
        pytest.skip("needs a compute capability 9.0 GPU")
    monkeypatch.setattr(_registry, "DEFAULT_OPTIONS", _registry.LaunchOptions())
    q = rand(1, 2, 300, 128)
    names = launched_kernels(lambda: fa_cuda.attention(q, q, q))
    assert len(names) == 1 and "flash_fwd_sm90_kernel" in names[0], names


def reference(q, k, v, causal, scale=None, dtype=torch.float64):
    """Attention computed in `dtype` (float64: the reference; q.dtype: what PyTorch itself would get)."""
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = heads_q // heads_kv
    k = k.to(dtype).repeat_interleave(group, dim=1)
    v = v.to(dtype).repeat_interleave(group, dim=1)
    scores = torch.matmul(q.to(dtype), k.transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(seqlen_q, device=q.device)[:, None]
        cols = torch.arange(seqlen_k, device=q.device)[None, :]
        scores = scores.masked_fill(cols > rows + seqlen_k - seqlen_q, float("-inf"))
    lse = torch.logsumexp(scores.float() if dtype != torch.float64 else scores, dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows that see no key: 0
    return torch.matmul(probs, v), lse


def poison_allocator(*like):
    # The op allocates its outputs; fill same-size blocks with NaN and free them so the caching allocator hands
    # them back: any element the kernel fails to write then shows as NaN.
    blocks = [torch.full_like(t, float("nan")) for t in like]
    del blocks


def check(q, k, v, causal=False, scale=None, **options):
    out_ref, lse_ref = reference(q, k, v, causal, scale)
    out_same, _ = reference(q, k, v, causal, scale, dtype=q.dtype)
    poison_allocator(q, q[..., 0].float())
    out, lse = fa_cuda.attention(q, k, v, causal=causal, softmax_scale=scale, return_lse=True, **options)
    torch.cuda.synchronize()
    # query's layout where query is dense (e.g. BSHD views), else contiguous: exactly empty_like_query's choice.
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride() == empty_like_query(q).stride()
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert not out.isnan().any(), "unwritten or NaN output"
    floor = 2e-3 if q.dtype == torch.float16 else 1.6e-2
    tol = max(2 * (out_same.double() - out_ref).abs().max().item(), floor)
    err = (out.double() - out_ref).abs().max().item()
    assert err <= tol, f"max |out - ref| {err:.3g} > {tol:.3g}"
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite.to(lse.device)), "LSE -inf pattern differs"
    assert (lse[~finite] == float("-inf")).all()
    if finite.any():
        lse_err = (lse.double()[finite] - lse_ref[finite]).abs().max().item()
        assert lse_err <= 1e-3 * max(1.0, lse_ref[finite].abs().max().item()), f"LSE error {lse_err:.3g}"


def rand(*shape, dtype=torch.float16):
    return torch.randn(*shape, device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [8, 32, 40, 64, 96, 128, 136, 160, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims(dtype, head_dim, causal):
    torch.manual_seed(head_dim)
    q, k, v = rand(2, 3, 157, head_dim, dtype=dtype), rand(2, 3, 211, head_dim, dtype=dtype), rand(2, 3, 211, head_dim, dtype=dtype)
    check(q, k, v, causal)


@pytest.mark.parametrize("seqlens", [(1, 1), (1, 17), (17, 1), (17, 113), (113, 17), (128, 128), (1000, 1000),
                                     (1, 1000), (1000, 1), (256, 64), (64, 256), (1000, 1023)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sequence_lengths(seqlens, causal, head_dim):
    torch.manual_seed(sum(seqlens))
    nq, nk = seqlens
    check(rand(2, 2, nq, head_dim), rand(2, 2, nk, head_dim), rand(2, 2, nk, head_dim), causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seqlens, causal", [((512, 512), True), ((200, 1000), True), ((320, 1088), True),
                                             ((2048, 2048), True), ((256, 300), False), ((256, 320), False),
                                             ((256, 321), False)])
def test_left_half_first_key_tile(seqlens, causal, head_dim, dtype):
    """The SM90 family computes S over only the left 64 keys of a warpgroup's first key tile where its rows see
    none of the right half: the upper 64 rows of a 128-row tile on an aligned causal diagonal, shifted diagonals
    (Nq < Nk) that end in either half, the 192-row tiles of head dim 64 (whose warpgroups' diagonals fall in either
    half of the first key tile, or before it), and a last key tile of 44 or exactly 64 keys; 65 keys (256, 321)
    takes the full width. (In the SM80 family these are ordinary shapes.)"""
    torch.manual_seed(sum(seqlens) + head_dim)
    nq, nk = seqlens
    q = rand(2, 2, nq, head_dim, dtype=dtype)
    k, v = rand(2, 2, nk, head_dim, dtype=dtype), rand(2, 2, nk, head_dim, dtype=dtype)
    check(q, k, v, causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_persistent_grid_runs_many_tiles_per_cta(head_dim, causal):
    """More query tiles than SMs, so each CTA of the SM90 family's persistent grid runs several one after another,
    dealt statically or drawn from the counter (causal with Nq > Nk adds tiles whose rows see no key, which the
    producer skips); the same call with one CTA per tile computes every tile the same way, so every deal (auto picks
    one of the two) must give the same bits."""
    torch.manual_seed(head_dim + causal)
    q, k, v = rand(3, 8, 1500, head_dim), rand(3, 4, 1100, head_dim), rand(3, 4, 1100, head_dim)
    out_per_tile, lse_per_tile = fa_cuda.attention(q, k, v, causal=causal, return_lse=True, sm90_schedule="per-tile")
    for scheduler in ("static", "dynamic", "auto"):
        check(q, k, v, causal, sm90_schedule=scheduler)
        for _ in range(3):  # the dynamic deal differs from run to run; the bits must not
            out, lse = fa_cuda.attention(q, k, v, causal=causal, return_lse=True, sm90_schedule=scheduler)
            assert torch.equal(out, out_per_tile) and torch.equal(lse, lse_per_tile), scheduler


def test_tile_counter_is_left_zero_for_the_next_call(kernel_family):
    """The SM90 family's dynamic deal draws from one counter per stream, which each kernel's last CTA resets (no
    zeroing launch per call). Calls of different tile counts back to back, interleaved on two streams with no
    synchronisation between them, must each give the per-tile grid's bits: a counter left non-zero, or shared by
    two kernels running at once, skips tiles, whose poisoned blocks then show. The shapes take the dynamic deal by
    default: causal, or no mask with a partial 192-row tile per head (head dim 64, 1000 rows); causal at head dim 128
    with 16384 rows runs pairs of CTAs, whose first CTAs alone draw (and count themselves finished)."""
    if kernel_family != "sm90":
        pytest.skip("the tile counter belongs to the SM90 family")
    torch.manual_seed(0)
    calls = []
    for batch, heads, seqlen, head_dim, causal in [(4, 8, 1500, 128, True), (2, 16, 1000, 64, False),
                                                    (3, 8, 700, 64, True), (4, 8, 2048, 128, True),
                                                    (1, 2, 16384, 128, True)]:
        qkv = [rand(batch, heads, seqlen, head_dim) for _ in range(3)]
        calls.append((qkv, causal))
    expected = [fa_cuda.attention(*qkv, causal=causal, return_lse=True, sm90_schedule="per-tile")
                for qkv, causal in calls]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    results = []  # kept alive, so no output block is reused by a later call
    for _ in range(3):
        for index, (qkv, causal) in enumerate(calls):
            with torch.cuda.stream(streams[index % 2]):
                poison_allocator(qkv[0], qkv[0][..., 0].float())
                results.append((index, fa_cuda.attention(*qkv, causal=causal, return_lse=True)))
    torch.cuda.synchronize()
    for index, (out, lse) in results:
        assert torch.equal(out, expected[index][0]) and torch.equal(lse, expected[index][1]), index


def is_pair_kernel(name: str) -> bool:
    """Whether a launched SM90 kernel's name (demangled, or mangled where the profiler keeps it so) is that of a pair
    of CTAs: Sm90FwdTraits<..., Element, 2>."""
    return any(mark in name for mark in ("half_t, 2>", "bfloat16_t, 2>", "half_tELi2EE", "bfloat16_tELi2EE"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,causal", [((1, 4, 4, 256, 4096), False), ((1, 2, 1, 512, 4100), False),
                                          ((3, 8, 2, 2048, 4160), False), ((1, 4, 4, 256, 4096), True),
                                          ((2, 4, 2, 1024, 8200), True), ((2, 8, 2, 2048, 4096), True)],
                         ids=["one-pair", "mqa", "gqa", "causal-chunk", "causal-chunk-176", "causal-many-pairs"])
def test_cta_pairs_share_kv_tiles(shape, causal, dtype, kernel_family):
    """At head dim 128, where every head has an even number of full 128-row query tiles and rows of at least 4096
    keys, the SM90 family runs pairs of CTAs (a cluster of two) on adjacent query tiles of one head: each loads half
    of every K/V tile and multicasts it into both, and a stage is reloaded once the consumers of both have released
    it. Causal (chunked prefill here: queries at the end of at least twice as many keys), both walk the later tile's
    key tiles (the earlier tile's warpgroups pass the ones they do not see), and the dynamic deal draws pairs of
    tiles, the first CTA handing each draw to the second through distributed shared memory. The pair kernel must be
    the one that runs (every schedule), and give the bits of single CTAs (sm90_cta_pairs=False). Shapes: one pair
    per head, partial last key tiles, MQA and GQA, several tiles per pair, 176-key tiles, more pairs of tiles than
    an H100 has pairs of SMs (many draws)."""
    if kernel_family != "sm90":
        pytest.skip("CTA pairs belong to the SM90 family")
    batch, heads_q, heads_kv, nq, nk = shape
    torch.manual_seed(nq + nk)
    q = rand(batch, heads_q, nq, 128, dtype=dtype)
    k, v = rand(batch, heads_kv, nk, 128, dtype=dtype), rand(batch, heads_kv, nk, 128, dtype=dtype)
    names = launched_kernels(lambda: fa_cuda.attention(q, k, v, causal=causal, sm90_cta_pairs=False))
    assert len(names) == 1 and not is_pair_kernel(names[0]), names
    expected = fa_cuda.attention(q, k, v, causal=causal, return_lse=True, sm90_cta_pairs=False)
    check(q, k, v, causal)
    for scheduler in ("auto", "static", "dynamic", "per-tile"):
        names = launched_kernels(lambda: fa_cuda.attention(q, k, v, causal=causal, sm90_schedule=scheduler))
        assert len(names) == 1 and is_pair_kernel(names[0]), (scheduler, names)
        for _ in range(2):  # the second call draws from the counter the first one's last CTA reset
            poison_allocator(q, q[..., 0].float())
            out, lse = fa_cuda.attention(q, k, v, causal=causal, return_lse=True, sm90_schedule=scheduler)
            assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1]), scheduler


@pytest.mark.parametrize("head_dim,shape", [(128, (1, 10, 5, 2048, 16384)), (128, (2, 3, 3, 2048, 2048)),
                                              (64, (1, 5, 5, 3000, 3000)), (256, (1, 5, 5, 2048, 16384))],
                         ids=["d128-sections-and-rest-pairs", "d128-one-section", "d64-partial-first-tile",
                              "d256-sections-and-rest"])
def test_causal_tiles_in_sections_of_heads(head_dim, shape, kernel_family):
    """Causal calls of at least 16 query tiles per head list their tiles by sections of heads whose K/V fit the L2,
    longest first across each section's heads (tile_scheduler.h, causal_section_heads). Every tile of the list must
    map to one (head, query tile), each once: several sections and a shorter last one (on a 50 MB L2: 8 MiB of K/V
    a head at d128 and 16k keys, four heads a section; 16 MiB at d256, two), a single section, the 192-row tiles of
    head dim 64 with a partial first tile, and pairs of CTAs (chunked prefill: their unit is two adjacent tiles).
    The float64 reference checks the default call (a tile listed twice leaves another unwritten, whose poison
    shows); every other schedule, and single CTAs, must give its bits."""
    if kernel_family != "sm90":
        pytest.skip("the SM90 family's tile order")
    batch, heads_q, heads_kv, nq, nk = shape
    torch.manual_seed(nq + nk + head_dim)
    q = rand(batch, heads_q, nq, head_dim, dtype=torch.bfloat16)
    k, v = (rand(batch, heads_kv, nk, head_dim, dtype=torch.bfloat16) for _ in range(2))
    check(q, k, v, True)
    expected = fa_cuda.attention(q, k, v, causal=True, return_lse=True)
    for options in ({"sm90_schedule": "static"}, {"sm90_schedule": "dynamic"}, {"sm90_schedule": "per-tile"},
                    {"sm90_cta_pairs": False}):
        poison_allocator(q, q[..., 0].float())
        out, lse = fa_cuda.attention(q, k, v, causal=True, return_lse=True, **options)
        assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1]), options


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 2, 300, 8200), (1, 4, 2, 512, 8192), (2, 2, 1, 130, 9000)])
def test_long_rows_at_head_dim_128(shape, causal, kernel_family):
    """Rows of at least 8192 keys at head dim 128 take the SM90 family's 176-key tiles (sm90_tile_config.h): partial
    last key tiles, GQA and MQA, a partial query tile, and (no mask, even full query tiles) the pair kernel; the
    kernel that runs must be the 176-key one, and its output the float64 reference's."""
    batch, heads_q, heads_kv, nq, nk = shape
    torch.manual_seed(nq + nk)
    q = rand(batch, heads_q, nq, 128)
    k, v = rand(batch, heads_kv, nk, 128), rand(batch, heads_kv, nk, 128)
    if kernel_family == "sm90":
        names = launched_kernels(lambda: fa_cuda.attention(q, k, v, causal=causal))
        assert len(names) == 1 and any(tile in names[0] for tile in ("128, 128, 176", "ILi128ELi128ELi176E")), names
    check(q, k, v, causal)


@pytest.mark.parametrize("seqlens", [(2100, 2300), (2300, 2100)])
def test_causal_long_queries_at_head_dim_64(seqlens):
    """Causal calls at head dim 64 take the SM90 family's 192-row tile: partial tiles, diagonals that cross three
    key tiles, and (Nq > Nk) rows that see no key."""
    torch.manual_seed(sum(seqlens))
    nq, nk = seqlens
    check(rand(1, 4, nq, 64), rand(1, 2, nk, 64), rand(1, 2, nk, 64), True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("seqlens", [(1000, 1000), (832, 832), (960, 960), (200, 200), (70, 70), (130, 2000),
                                     (1088, 900)])
def test_causal_tiles_end_at_the_last_query(seqlens, head_dim, dtype):
    """The SM90 family's causal tiles end at the last query, shifted up by whole 64-row blocks, so a partial tile
    is the first (the shortest rows). Its warpgroups past its last row (those rows are the next tile's) compute
    and store nothing; warpgroups whose rows see fewer key tiles than the tile's (the upper ones of a 192-row tile,
    or of a 128-row tile at head dim 256, whose key tiles are 64 wide) take those turns without a GEMM. Shifts of
    0, 64 and 128 rows; Nq < Nk; Nq > Nk (a first tile, then part of the next, whose rows see no key); GQA."""
    torch.manual_seed(sum(seqlens) + head_dim)
    nq, nk = seqlens
    q = rand(2, 4, nq, head_dim, dtype=dtype)
    k, v = rand(2, 2, nk, head_dim, dtype=dtype), rand(2, 2, nk, head_dim, dtype=dtype)
    check(q, k, v, True)


@pytest.mark.parametrize("option, value, error", [("sm90_schedule", "round-robin", ValueError),
                                                  ("sm90_cta_pairs", "on", TypeError),
                                                  ("kernel_family", "sm70", ValueError)])
def test_unknown_option_value_names_the_option(option, value, error):
    q = rand(1, 2, 128, 64)
    with pytest.raises(error, match=option):
        fa_cuda.attention(q, q, q, **{option: value})
    with pytest.raises(ValueError, match="kernel_family='sm90'"):  # a family forced where it cannot run
        fa_cuda.attention(*(rand(1, 2, 128, 96),) * 3, kernel_family="sm90")


def test_the_op_refuses_a_kernel_handle_that_does_not_fit_the_call(kernel_family):
    """A direct op call names its kernel; the binding runs it only on operands it serves (dtype, mask, head dim)."""
    q = rand(1, 2, 128, 128)
    fa_cuda.load_kernel(q)
    handle = _registry.forward_kernel(torch.cuda.get_device_capability(), 128, q.dtype, False,
                                      "sm80" if kernel_family == "sm80" else None).handle
    with pytest.raises(ValueError, match="does not run this call"):
        torch.ops.flash_attention.cuda_fwd(q, q, q, True, 0.1, handle, 0, True)  # a no-mask kernel, a causal call
    with pytest.raises(ValueError, match="does not run this call"):
        torch.ops.flash_attention.cuda_fwd(q.bfloat16(), q.bfloat16(), q.bfloat16(), False, 0.1, handle, 0, True)
    with pytest.raises(ValueError, match="out of range"):
        torch.ops.flash_attention.cuda_fwd(q, q, q, False, 0.1, 100000, 0, True)


@pytest.mark.parametrize("heads", [(8, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_mqa(heads, causal):
    hq, hkv = heads
    check(rand(2, hq, 99, 64), rand(2, hkv, 130, 64), rand(2, hkv, 130, 64), causal)


@pytest.mark.parametrize("causal", [False, True])
def test_bshd_views_write_bshd_output(causal):
    q = rand(2, 77, 4, 64).transpose(1, 2)
    k = rand(2, 90, 2, 64).transpose(1, 2)
    v = rand(2, 90, 2, 64).transpose(1, 2)
    check(q, k, v, causal)


def test_misaligned_view_is_correct():
    base = rand(2, 3, 50, 64 + 8)
    q = base[..., 8:]  # base pointer off by 16 bytes is fine; row stride 72 is a multiple of 8
    odd = rand(2, 3, 50 * 64 + 4)[..., 4:].view(2, 3, 50, 64)  # 8-byte misaligned base: copied once
    check(q, odd, odd, causal=True)


def test_custom_scale_and_large_scores():
    q, k, v = rand(1, 2, 200, 64) * 4, rand(1, 2, 200, 64) * 4, rand(1, 2, 200, 64)
    check(q, k, v, causal=False, scale=0.5)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_a_nan_key_reaches_exactly_the_rows_that_see_it(head_dim, causal):
    """A NaN in one key turns the rows that see it to NaN and no other, and the call finishes: the SM90 step
    releases K's stage by an arrive predicated on a partial sum of exponentials, which a NaN must not switch off
    (a skipped arrive would hang the producer)."""
    torch.manual_seed(head_dim)
    q, k, v = (rand(2, 2, 1000, head_dim) for _ in range(3))
    k[:, :, 700, 0] = float("nan")
    out = fa_cuda.attention(q, k, v, causal=causal)
    torch.cuda.synchronize()
    expected = torch.zeros(1000, dtype=torch.bool, device="cuda")
    expected[700 if causal else 0:] = True
    assert torch.equal(out.isnan().any(dim=-1), expected.expand(2, 2, 1000))
    assert torch.equal(out.isnan().all(dim=-1), expected.expand(2, 2, 1000))


def test_rows_that_see_no_key_give_zero_and_minus_inf():
    q, k, v = rand(1, 2, 300, 64), rand(1, 2, 40, 64), rand(1, 2, 40, 64)
    out, lse = fa_cuda.attention(q, k, v, causal=True, return_lse=True)
    empty = 300 - 40  # rows i < Nq - Nk see nothing
    assert (out[:, :, :empty] == 0).all() and (lse[:, :, :empty] == float("-inf")).all()
    check(q, k, v, causal=True)


def test_many_batch_heads_past_grid_y_limit():
    q = rand(1, 70_000, 3, 32)
    k = rand(1, 70_000, 5, 32)
    check(q, k, k, causal=False)


def test_backward_is_not_implemented():
    q = rand(1, 2, 16, 64).requires_grad_()
    out = fa_cuda.attention(q, q.detach(), q.detach())
    with pytest.raises(NotImplementedError, match="forward-only"):
        out.sum().backward()


def test_torch_compile_traces_the_op():
    q, k, v = rand(2, 4, 100, 64), rand(2, 4, 100, 64), rand(2, 4, 100, 64)
    fn = torch.compile(lambda q, k, v: fa_cuda.attention(q, k, v, causal=True), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(q, k, v), fa_cuda.attention(q, k, v, causal=True))


# A fresh process with the cache already built (by the tests above): nothing is loaded, and the first thing it does
# is compile. The fake implementation loads the kernel while tracing, so the compiled graph's call finds it.
_COMPILE_FIRST = """
import torch, flash_attention.cuda as fa_cuda
q = torch.randn(1, 2, 70, 96, device="cuda", dtype=torch.bfloat16)
fn = torch.compile(lambda q: fa_cuda.attention(q, q, q, causal=True), fullgraph=True, backend="aot_eager")
out = fn(q)
ref = torch.nn.functional.scaled_dot_product_attention(q.float(), q.float(), q.float(), is_causal=True)
torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)
print("compiled call ok")
"""


def test_torch_compile_in_a_fresh_process_loads_the_kernel_while_tracing(kernel_family):
    import os
    import subprocess
    import sys

    fa_cuda.load_kernel(rand(1, 1, 8, 96, dtype=torch.bfloat16), causal=True)  # built here, loaded there
    # The forced family reaches the child through the environment, which flash_attention._settings reads at import.
    family = {"FLASH_ATTENTION_CUDA_KERNEL": "sm80"} if kernel_family == "sm80" else {}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_FIRST], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **family})
    assert proc.returncode == 0 and "compiled call ok" in proc.stdout, proc.stdout + proc.stderr


def test_direct_op_call_after_load_kernel():
    q, k, v = rand(2, 4, 77, 128), rand(2, 2, 90, 128), rand(2, 2, 90, 128)
    fa_cuda.load_kernel(q, causal=True)
    handle = _registry.forward_kernel(torch.cuda.get_device_capability(), 128, q.dtype, True,
                                      _registry.DEFAULT_OPTIONS.kernel_family).handle
    out, lse = torch.ops.flash_attention.cuda_fwd(q, k, v, True, 0.1, handle, 0, True)
    ref_out, ref_lse = fa_cuda.attention(q, k, v, causal=True, softmax_scale=0.1, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_runs_on_current_stream_and_other_device_index():
    q, k, v = rand(1, 2, 64, 64), rand(1, 2, 64, 64), rand(1, 2, 64, 64)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # q, k, v are written on the default stream
    with torch.cuda.stream(stream):
        out = fa_cuda.attention(q, k, v)
    stream.synchronize()
    torch.testing.assert_close(out, fa_cuda.attention(q, k, v))


def test_auto_eligible_once_built():
    q = rand(1, 1, 8, 64)
    fa_cuda.attention(q, q, q)
    assert fa_cuda.auto_eligible(q)
