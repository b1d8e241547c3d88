"""Packed variable-length batches: median ms and TFLOPS of `attention_varlen` against FlashAttention-4's varlen call
and, on batches of equal lengths, SDPA on the same sequences as a dense (B, H, N, D) batch.

    python benchmarks/runtime.py --grid varlen --markdown --output results/
    python benchmarks/runtime.py --grid varlen --smoke        # CPU too (the Triton interpreter); numbers meaningless

Each row packs sequences of the lengths its mix names into one stream of about `tokens` rows, the same lengths for
queries and keys (self-attention of a prefill or a packed training batch). A mix of equal lengths is the dense batch
of the same tokens: the row against which a ragged mix's TFLOPS is read. TFLOPS = sum over sequences of
4 * Hq * L^2 * D / time, halved for causal (the paper grid's convention).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import harness

OUR_METHODS = ("triton", "cuda")
PEER_METHODS = ("fa4", "sdpa_flash", "sdpa_cudnn")


def mix_lengths(mix: str, tokens: int) -> list[int]:
    """Sequence lengths of a mix, deterministic: 'equal-N' (tokens / N sequences of N), 'uniform-A-B' (lengths drawn
    uniformly from [A, B] until the tokens are used up), 'skewed-L-S' (one sequence of L, the rest of S)."""
    kind, _, sizes = mix.partition("-")
    numbers = [int(part) for part in sizes.split("-") if part]
    if kind == "equal":
        return [numbers[0]] * max(1, tokens // numbers[0])
    if kind == "uniform":
        generator, lengths = random.Random(0), []
        while sum(lengths) < tokens:
            lengths.append(generator.randint(numbers[0], numbers[1]))
        lengths[-1] -= sum(lengths) - tokens
        return [length for length in lengths if length > 0]
    if kind == "skewed":
        long, short = numbers
        return [long] + [short] * max(0, (tokens - long) // short)
    raise ValueError(f"unknown mix {mix!r} (equal-N, uniform-A-B, skewed-L-S)")


@dataclass(frozen=True)
class VarlenShape:
    mix: str
    tokens: int
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool
    dtype: str

    @property
    def lengths(self) -> list[int]:
        return mix_lengths(self.mix, self.tokens)

    @property
    def flops(self) -> float:
        return sum(4 * self.heads_q * n * n * self.head_dim for n in self.lengths) / (2 if self.causal else 1)

    @property
    def label(self) -> str:
        return f"{self.mix} ({self.tokens} tokens) H{self.heads_q}/{self.heads_kv} D{self.head_dim}" + \
            (" causal" if self.causal else "")


@dataclass(frozen=True)
class VarlenGrid:
    mixes: tuple[str, ...]
    tokens: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    head_dims: tuple[int, ...]


GRIDS = {
    # 16k tokens (the paper grid's), Llama-3-8B heads: dense batches of 2k and 512, a ragged mix of long sequences,
    # a serving mix, one long prompt among short ones.
    "varlen": VarlenGrid(mixes=("equal-2048", "uniform-1024-4096", "equal-512", "uniform-128-2048",
                                "skewed-8192-128"),
                         tokens=(16384,), heads=((32, 8),), head_dims=(128,)),
    "smoke": VarlenGrid(mixes=("equal-32", "uniform-5-40", "skewed-50-3"), tokens=(96,), heads=((4, 2),),
                        head_dims=(32,)),
}


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runtime.py --grid varlen", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("varlen",), default="varlen")
    parser.add_argument("--mixes", help="comma-separated mixes: equal-N, uniform-A-B, skewed-L-S")
    parser.add_argument("--tokens", type=lambda t: tuple(int(p) for p in t.split(",")), help="tokens per batch")
    parser.add_argument("--heads", type=harness.parse_heads, help="query/kv head pairs, e.g. 32/8,16/16")
    parser.add_argument("--head-dims", type=lambda t: tuple(int(p) for p in t.split(",")), help="e.g. 64,128")
    parser.add_argument("--mask", choices=("none", "causal", "both"), default="causal")
    parser.add_argument("--dtype", choices=tuple(harness.DTYPES), default="bf16")
    parser.add_argument("--methods", default=",".join(OUR_METHODS + PEER_METHODS),
                        help=f"comma-separated from {','.join(OUR_METHODS + PEER_METHODS)}")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--output", type=Path, help="also write .md, .json and .csv into this folder")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes that also run on CPU")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(OUR_METHODS + PEER_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    args.methods = tuple(dict.fromkeys(args.methods.split(",")))
    return args


def sweep_shapes(args) -> list[VarlenShape]:
    grid = GRIDS["smoke" if args.smoke else "varlen"]
    mixes = tuple(args.mixes.split(",")) if args.mixes else grid.mixes
    masks = {"none": (False,), "causal": (True,), "both": (False, True)}[args.mask]
    return [VarlenShape(mix, tokens, hq, hkv, d, causal, args.dtype)
            for causal in masks for d in (args.head_dims or grid.head_dims) for hq, hkv in (args.heads or grid.heads)
            for tokens in (args.tokens or grid.tokens) for mix in mixes]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and methods


@dataclass
class VarlenInputs:
    query: torch.Tensor  # (total, Hq, D)
    key: torch.Tensor  # (total, Hkv, D)
    value: torch.Tensor
    cu_seqlens: torch.Tensor  # int32 (B + 1,), for queries and keys alike
    max_seqlen: int
    lengths: list[int]


def make_inputs(shape: VarlenShape, device) -> VarlenInputs:
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = harness.DTYPES[shape.dtype]
    lengths = shape.lengths
    total = sum(lengths)

    def randn(*size):
        return torch.randn(size, generator=generator, device=device, dtype=dtype)

    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=device)
    return VarlenInputs(randn(total, shape.heads_q, shape.head_dim), randn(total, shape.heads_kv, shape.head_dim),
                        randn(total, shape.heads_kv, shape.head_dim), cu_seqlens, max(lengths), lengths)


def _our_method(backend: str):
    import flash_attention

    def run(inputs: VarlenInputs, causal: bool):
        return flash_attention.attention_varlen(inputs.query, inputs.key, inputs.value, inputs.cu_seqlens,
                                                inputs.cu_seqlens, inputs.max_seqlen, inputs.max_seqlen,
                                                causal=causal, backend=backend)

    def unavailable(inputs: VarlenInputs):
        reason = flash_attention.backend_unavailable_reason(backend, inputs.query)
        if reason is None and not hasattr(getattr(flash_attention, backend), "run_varlen_validated"):
            return f"the {backend} backend has no varlen kernel yet"
        return reason

    return run, unavailable


def _dense_views(inputs: VarlenInputs):
    """An equal-length batch as (B, H, N, D) views of the packed tensors (no copy)."""
    batch, length = len(inputs.lengths), inputs.lengths[0]
    return tuple(t.view(batch, length, *t.shape[1:]).transpose(1, 2) for t in (inputs.query, inputs.key, inputs.value))


def _sdpa_method(sdpa_backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa_backend = getattr(SDPBackend, sdpa_backend_name)

    def run(inputs: VarlenInputs, causal: bool):
        query, key, value = _dense_views(inputs)
        with sdpa_kernel(sdpa_backend):
            out = F.scaled_dot_product_attention(query, key, value, is_causal=causal,
                                                 enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).flatten(0, 1)

    def unavailable(inputs: VarlenInputs):
        if len(set(inputs.lengths)) > 1:
            return "SDPA takes no packed batch: timed on equal lengths only, as the dense batch"
        if inputs.query.device.type != "cuda":
            return "timed on CUDA tensors only"
        return None

    return run, unavailable


def _fa4_method():
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except Exception as error:  # not installed, or its DSL fails at import here
        reason = f"flash_attn.cute (FlashAttention-4) does not import: {error}"
        return None, lambda inputs: reason

    def run(inputs: VarlenInputs, causal: bool):
        result = flash_attn_varlen_func(inputs.query, inputs.key, inputs.value, cu_seqlens_q=inputs.cu_seqlens,
                                        cu_seqlens_k=inputs.cu_seqlens, max_seqlen_q=inputs.max_seqlen,
                                        max_seqlen_k=inputs.max_seqlen, causal=causal)
        return result[0] if isinstance(result, tuple) else result

    def unavailable(inputs: VarlenInputs):
        return None if inputs.query.device.type == "cuda" else "FlashAttention-4 needs CUDA tensors"

    return run, unavailable


def build_methods(names) -> dict:
    factories = {"triton": lambda: _our_method("triton"), "cuda": lambda: _our_method("cuda"),
                 "sdpa_flash": lambda: _sdpa_method("FLASH_ATTENTION"),
                 "sdpa_cudnn": lambda: _sdpa_method("CUDNN_ATTENTION"), "fa4": _fa4_method}
    return {name: factories[name]() for name in names}


# ----------------------------------------------------------------------------------------------------------------
# Measuring

CHECKED_HEADS = 2


def reference_error(inputs: VarlenInputs, output: torch.Tensor, causal: bool) -> tuple[float, float]:
    """Max error on the first and the last sequence (query heads 0-1) against float32 math, and the tolerance: 3x
    PyTorch's same-dtype error + one ulp."""
    errors, tolerance = [], 0.0
    offsets = inputs.cu_seqlens.tolist()
    for b in (0, len(inputs.lengths) - 1):
        rows = slice(offsets[b], offsets[b + 1])
        group = inputs.query.shape[1] // inputs.key.shape[1]
        query = inputs.query[rows, :CHECKED_HEADS].transpose(0, 1)[None]
        key, value = (t[rows].repeat_interleave(group, dim=1)[:, :CHECKED_HEADS].transpose(0, 1)[None]
                      for t in (inputs.key, inputs.value))
        exact = harness._attention_math(query, key, value, causal, torch.float32)
        same_dtype = harness._attention_math(query, key, value, causal, query.dtype).float()
        tolerance = max(tolerance, 3 * (same_dtype - exact).abs().max().item() + torch.finfo(query.dtype).eps)
        mine = output[rows, :CHECKED_HEADS].transpose(0, 1)[None].float()
        errors.append((mine - exact).abs().max().item())
    return max(errors), tolerance


def run_shape(shape: VarlenShape, methods: dict, args, device) -> list[dict]:
    inputs = make_inputs(shape, device)
    base_row = dict(asdict(shape), sequences=len(inputs.lengths))
    rows, timings, _ = harness.check_and_time(methods, inputs, base_row, shape.causal, reference_error, args, device)
    for row in rows:
        if row["method"] in timings:
            median_ms = timings[row["method"]]["median_ms"]
            row.update(ms=median_ms, tflops=shape.flops / (median_ms * 1e-3) / 1e12)
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def report(args, info, rows, device) -> str:
    methods = list(args.methods)
    document = harness.Document(args.markdown)
    document.heading(f"Packed variable-length batches (attention_varlen), {args.dtype}", 1)
    document.lines(harness.provenance_lines(info))
    by_shape: dict = {}
    for row in rows:
        shape = VarlenShape(**{k: row[k] for k in VarlenShape.__dataclass_fields__})
        by_shape.setdefault(shape, {})[row["method"]] = row
    headers = ["mix", "sequences", "tokens", "Hq/Hkv", "D", "mask"]
    ours = [m for m in methods if m in OUR_METHODS]
    peers = [m for m in methods if m in PEER_METHODS]

    def shape_cells(shape, cells):
        sequences = next(iter(cells.values()))["sequences"]
        return [shape.mix, str(sequences), str(shape.tokens), f"{shape.heads_q}/{shape.heads_kv}",
                str(shape.head_dim), "causal" if shape.causal else "none"]

    def ratio(our_row, peer_row):  # peer time over ours: > 1 when ours is faster
        if not (our_row and peer_row and "ms" in our_row and "ms" in peer_row):
            return "—"
        return f"{peer_row['ms'] / our_row['ms']:.2f}"

    def dense_twin(shape):
        """The equal-length row of the same tokens, heads and mask whose sequences are the longest of the grid's
        equal mixes no longer than this mix's mean (the dense batch it is read against)."""
        mean = shape.tokens / max(1, len(shape.lengths))
        candidates = [s for s in by_shape if s.mix.startswith("equal-") and s.tokens == shape.tokens
                      and (s.heads_q, s.heads_kv, s.head_dim, s.causal) == (shape.heads_q, shape.heads_kv,
                                                                             shape.head_dim, shape.causal)]
        fitting = [s for s in candidates if s.lengths[0] <= mean] or candidates
        return max(fitting, key=lambda s: s.lengths[0]) if fitting else None

    document.table("Median runtime (ms)", headers + methods,
                   [shape_cells(s, c) + [harness.row_cell(c.get(m), "ms", harness.format_number) for m in methods]
                    for s, c in by_shape.items()])
    dense_columns = [f"{m} / dense" for m in ours]
    document.table("TFLOPS; ours against each peer (ratio > 1: ours faster) and against our own dense batch of the "
                   "same tokens (the equal mix named in the note)",
                   headers + methods + [f"{o}/{p}" for o in ours for p in peers] + dense_columns,
                   [shape_cells(s, c) + [harness.row_cell(c.get(m), "tflops", lambda v: f"{v:.0f}") for m in methods]
                    + [ratio(c.get(o), c.get(p)) for o in ours for p in peers]
                    + [_dense_ratio(c.get(m), by_shape.get(dense_twin(s), {}).get(m)) for m in ours]
                    for s, c in by_shape.items()])
    notes = sorted({f"{row['method']}: {row['note']}" for row in rows if row.get("note")})
    twins = sorted({f"{s.mix} is read against {dense_twin(s).mix}" for s in by_shape
                    if dense_twin(s) is not None and dense_twin(s) != s})
    document.lines(notes + twins, title="Notes")
    document.lines([
        "Timing: " + ("wall-clock on CPU (smoke run: the numbers mean nothing)" if device.type == "cpu" else
                      f"CUDA events, L2 flushed before each call, methods interleaved, about {args.rep_ms:g} ms per "
                      f"method and shape; median"),
        f"Each output (first and last sequence, query heads 0-{CHECKED_HEADS - 1}) is checked against float32 math; "
        f"{harness.WRONG} marks one outside 3x PyTorch's same-dtype error + 1 ulp.",
    ], title="How these numbers were made")
    return document.text()


def _dense_ratio(row, dense_row) -> str:
    """TFLOPS of a ragged mix over those of the dense batch (1.00: raggedness costs nothing)."""
    if not (row and dense_row and "tflops" in row and "tflops" in dense_row):
        return "—"
    return f"{row['tflops'] / dense_row['tflops']:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu" and not args.smoke:
        print("error: no CUDA GPU; pass --smoke to run the varlen path on CPU", file=sys.stderr)
        return 2
    if args.smoke and device.type == "cuda":
        args.warmup_ms, args.rep_ms = min(args.warmup_ms, 5.0), min(args.rep_ms, 20.0)
    methods = build_methods(args.methods)
    rows = []
    shapes = sweep_shapes(args)
    for index, shape in enumerate(shapes, start=1):
        print(f"[{index}/{len(shapes)}] {shape.label}", file=sys.stderr, flush=True)
        rows += run_shape(shape, methods, args, device)
    info = harness.provenance(device)
    text = report(args, info, rows, device)
    sys.stdout.write(text)
    if args.output is not None:
        stem = f"runtime_{'smoke-varlen' if args.smoke else 'varlen'}_{args.dtype}_{args.mask}"
        harness.write_rows(args.output, stem, text, info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
