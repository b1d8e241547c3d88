"""Every grid as data: which call it times (a call-kind module), its shapes (the axes, which the command line's shape
flags may override field by field), the columns that name a row, the methods it runs by default, the ratio columns
of its rate table, its plot, its defaults, and the tiny grid --smoke runs instead of it."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from . import dense, kvcache, varlen
from .dense import ModelAxes, PrefillAxes
from .kvcache import DecodeAxes
from .report import AgainstCopy, BestPeer, EachPeer, Twin
from .varlen import VarlenAxes


@dataclass(frozen=True)
class Column:
    name: str
    value: Callable  # (shape) -> the cell
    shown: bool = True  # False: in the records only (a section heading says it, or it is the same for every row)


@dataclass(frozen=True)
class PlotAxes:
    x: str  # a column
    panels: tuple[str, ...]  # one panel per value; the last column's values make the panels' columns
    lines: tuple[str, ...] = ()  # columns that split a method's line where they vary in the run


@dataclass(frozen=True)
class Grid:
    name: str  # in the title and the file names
    summary: str  # for --help
    call: ModuleType  # dense, kvcache or varlen
    axes: object  # the call kind's axes: .shapes(dtype), .description; its fields are the shape flags it takes
    columns: tuple[Column, ...]
    methods: tuple[str, ...]  # the default, plus fa4 where flash_attn.cute imports
    plot: PlotAxes
    comparisons: tuple = (EachPeer(),)
    section: Callable | None = None  # (shape) -> the heading of its section, for grids that split their tables
    dtype: str = "bf16"
    time_unit: str = "ms"  # or "µs"
    warmup_ms: float = 25.0
    rep_ms: float = 200.0
    smoke: str | None = None  # the grid --smoke runs instead


def _mask(shape) -> str:
    return "causal" if shape.causal else "none"


def _heads(shape) -> str:
    return f"{shape.heads_q}/{shape.heads_kv}"


PREFILL = dict(
    call=dense,
    # The records keep the columns of the files committed in results/ (heads, causal), plus heads_kv.
    columns=(Column("head_dim", lambda s: s.head_dim), Column("batch_size", lambda s: s.batch),
             Column("num_tokens", lambda s: s.seqlen_q), Column("heads", lambda s: s.heads_q, shown=False),
             Column("heads_kv", lambda s: s.heads_kv, shown=False), Column("causal", lambda s: s.causal, shown=False)),
    methods=("baseline", "triton", "cuda", "sdpa_flash", "sdpa_cudnn"),
    plot=PlotAxes(x="num_tokens", panels=("causal", "head_dim")),
    section=lambda shape: "causal" if shape.causal else "no mask",
    dtype="fp16",
    smoke="smoke",
)
DECODE = dict(
    call=kvcache,
    columns=(Column("B", lambda s: s.batch), Column("Hq/Hkv", _heads), Column("Nq", lambda s: s.seqlen_q),
             Column("keys", lambda s: s.keys), Column("D", lambda s: s.head_dim),
             Column("cache", lambda s: "paged" if s.paged else "contiguous"), Column("mask", _mask)),
    methods=("triton", "cuda", "sdpa_flash", "sdpa_cudnn"),
    plot=PlotAxes(x="keys", panels=("B",), lines=("cache", "Hq/Hkv", "Nq", "D", "mask")),
    comparisons=(AgainstCopy(), BestPeer(), Twin(
        "contiguous", "our call on a contiguous cache of the same shape (1.00: pages cost nothing)",
        find=kvcache.contiguous_twin)),
    time_unit="µs",
    warmup_ms=10.0,
    rep_ms=100.0,
    smoke="smoke-decode",
)
VARLEN = dict(
    call=varlen,
    columns=(Column("mix", lambda s: s.mix), Column("sequences", lambda s: len(s.lengths)),
             Column("tokens", lambda s: s.tokens), Column("Hq/Hkv", _heads), Column("D", lambda s: s.head_dim),
             Column("mask", _mask)),
    methods=("triton", "cuda", "sdpa_flash", "sdpa_cudnn"),
    plot=PlotAxes(x="mix", panels=("mask", "Hq/Hkv", "D")),
    comparisons=(EachPeer(), Twin(
        "dense", "our dense batch of the same tokens (the equal mix the notes name)",
        find=varlen.dense_twin, explain=lambda shape, twin: f"{shape.mix} is read against {twin.mix}")),
    rep_ms=100.0,
    smoke="smoke-varlen",
)
MODEL = dict(
    call=dense,
    columns=(Column("model", lambda s: s.model), Column("Hq/Hkv", _heads), Column("D", lambda s: s.head_dim),
             Column("B", lambda s: s.batch), Column("Nq", lambda s: s.seqlen_q), Column("Nk", lambda s: s.seqlen_k),
             Column("mask", _mask)),
    # No baseline: its Nq x Nk scores do not fit at 64k tokens.
    methods=("triton", "cuda", "sdpa_flash", "sdpa_cudnn"),
    plot=PlotAxes(x="Nk", panels=("model", "mask")),
    smoke="smoke-model",
)

GRIDS = {grid.name: grid for grid in (
    # The original repo's README: emb_dim 512, (batch, tokens) in (32, 512) ... (4, 4096).
    Grid("seed", "the original repo's grid: emb_dim 512, 16k tokens per batch, N 512-4096",
         axes=PrefillAxes(head_dims=(64, 128), tokens=(512, 1024, 2048, 4096), hidden=512), **PREFILL),
    # FlashAttention-2/3 papers: 16k tokens per batch, hidden 2048.
    Grid("paper", "the FlashAttention-2/3 papers' grid: hidden 2048, 16k tokens per batch, N 512-16k",
         axes=PrefillAxes(head_dims=(64, 128), tokens=(512, 1024, 2048, 4096, 8192, 16384), hidden=2048),
         **PREFILL),
    # CI on CPU under TRITON_INTERPRET=1: the whole path on tiny shapes; 48 is not a multiple of any block size.
    Grid("smoke", "tiny seed/paper shapes",
         axes=PrefillAxes(head_dims=(32, 64), tokens=(16, 48), hidden=64, batch=1, heads=((2, 2),)), **PREFILL),
    Grid("decode", "KV-cache decoding (attention_with_kvcache): batch 1-64 x keys 1k-128k, 32/8 heads, d128, "
                   "contiguous and paged caches; µs and TB/s",
         axes=DecodeAxes(batches=(1, 4, 16, 64), keys=(1024, 4096, 16384, 65536, 131072), heads=((32, 8),),
                         query_lens=(1,), head_dims=(128,)), **DECODE),
    Grid("smoke-decode", "tiny decode shapes",
         axes=DecodeAxes(batches=(1, 2), keys=(64, 200), heads=((4, 2),), query_lens=(1, 3), head_dims=(32,)),
         **DECODE),
    # 16k tokens (the paper grid's) and 64k, Llama-3-8B heads: dense batches of 2k and 512, a ragged mix of long
    # sequences, a serving mix, one long prompt among short ones.
    Grid("varlen", "packed ragged batches (attention_varlen): 16k and 64k tokens in mixes of lengths, 32/8 heads, "
                   "d64 and d128",
         axes=VarlenAxes(mixes=("equal-2048", "uniform-1024-4096", "equal-512", "uniform-128-2048",
                                "skewed-8192-128"), tokens=(16384, 65536), heads=((32, 8),), head_dims=(64, 128)),
         **VARLEN),
    Grid("smoke-varlen", "tiny varlen mixes",
         axes=VarlenAxes(mixes=("equal-32", "uniform-5-40", "skewed-50-3"), tokens=(96,), heads=((4, 2),),
                         head_dims=(32,)), **VARLEN),
    Grid("model", "prefill shapes models send: Llama-3-8B/70B, Qwen2.5-7B and Gemma-2-9B heads at 4k-64k "
                  "tokens, chunked prefill (2k queries against 8k-32k keys), causal",
         axes=ModelAxes(models=(("Llama-3-8B", 32, 8, 128), ("Llama-3-70B", 64, 8, 128), ("Qwen2.5-7B", 28, 4, 128),
                                ("Gemma-2-9B", 16, 8, 256)),
                        tokens=(4096, 16384, 65536), chunk=2048, chunk_keys=(8192, 16384, 32768),
                        unmasked_tokens=4096), **MODEL),
    # GQA and MQA, chunks of a length that is no block size's multiple, on the interpreter's budget.
    Grid("smoke-model", "tiny model-like shapes",
         axes=ModelAxes(models=(("tiny-gqa", 4, 2, 32), ("tiny-mqa", 4, 1, 64)), tokens=(16, 48), chunk=16,
                        chunk_keys=(48, 80), unmasked_tokens=48, tokens_per_batch=64), **MODEL),
)}
