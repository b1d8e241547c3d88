"""Decode runtime: a few query rows against a long KV cache, in µs per call and TB/s of K/V read.

    python benchmarks/runtime.py --grid decode --markdown --output results/
    python benchmarks/runtime.py --grid decode --smoke        # CPU too (the Triton interpreter); numbers meaningless

Every sequence's cache is full (cache_seqlens = keys), so each method reads the same B x Hkv x keys x D x 2 K/V
elements and the peers, which take plain (B, H, N, D) tensors, compute the same function. TB/s counts those bytes once
(what a kernel that reads each K/V element once moves) and is set against a device-to-device copy measured in the same
run. Paged rows time our kernels on a cache of 64-key pages dealt in a random order; their ratio to the contiguous row
of the same shape is the cost of the page table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import harness

PAGE_SIZE = 64
MAX_KV_BYTES = 16 * 2**30  # shapes whose cache is larger are left out (they would not fit next to the copy buffer)
OUR_METHODS = ("triton", "cuda")
PEER_METHODS = ("sdpa_flash", "sdpa_cudnn", "fa4")


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    keys: int
    head_dim: int
    paged: bool
    dtype: str

    @property
    def kv_bytes(self) -> int:
        return 2 * self.batch * self.heads_kv * self.keys * self.head_dim * harness.DTYPES[self.dtype].itemsize

    @property
    def label(self) -> str:
        return (f"B{self.batch} H{self.heads_q}/{self.heads_kv} Nq{self.seqlen_q} Nk{self.keys} D{self.head_dim}"
                f"{' paged' if self.paged else ''}")


@dataclass(frozen=True)
class DecodeGrid:
    batches: tuple[int, ...]
    keys: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    seqlen_q: tuple[int, ...]
    head_dims: tuple[int, ...]
    paged: tuple[bool, ...]


GRIDS = {
    "decode": DecodeGrid(batches=(1, 4, 16, 64), keys=(1024, 4096, 16384, 65536, 131072), heads=((32, 8),),
                         seqlen_q=(1,), head_dims=(128,), paged=(False, True)),
    "smoke": DecodeGrid(batches=(1, 2), keys=(64, 200), heads=((4, 2),), seqlen_q=(1, 3), head_dims=(32,),
                        paged=(False, True)),
}


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runtime.py --grid decode", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("decode",), default="decode")
    parser.add_argument("--batches", type=_int_list, help="comma-separated batch sizes (overrides the grid)")
    parser.add_argument("--keys", type=_int_list, help="comma-separated cache lengths (overrides the grid)")
    parser.add_argument("--heads", type=harness.parse_heads, help="query/kv head pairs, e.g. 32/8,64/8,32/32")
    parser.add_argument("--query-lens", type=_int_list, help="query rows per sequence, e.g. 1,4")
    parser.add_argument("--head-dims", type=_int_list, help="e.g. 64,128")
    parser.add_argument("--cache", choices=("contiguous", "paged", "both"), default=None)
    parser.add_argument("--causal", action="store_true", help="bottom-right causal (matters only for Nq > 1)")
    parser.add_argument("--dtype", choices=tuple(harness.DTYPES), default="bf16")
    parser.add_argument("--methods", default=",".join(OUR_METHODS + PEER_METHODS),
                        help=f"comma-separated from {','.join(OUR_METHODS + PEER_METHODS)}")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--output", type=Path, help="also write .md, .json, .csv and .png into this folder")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes that also run on CPU")
    parser.add_argument("--warmup-ms", type=float, default=10.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--host", action="store_true", help=harness.HOST_HELP)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(OUR_METHODS + PEER_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    args.methods = tuple(dict.fromkeys(args.methods.split(",")))
    return args


def sweep_shapes(args) -> list[DecodeShape]:
    grid = GRIDS["smoke" if args.smoke else "decode"]
    overrides = dict(batches=args.batches, keys=args.keys, heads=args.heads, seqlen_q=args.query_lens,
                     head_dims=args.head_dims)
    grid = DecodeGrid(**{**asdict(grid), **{k: v for k, v in overrides.items() if v is not None}})
    if args.cache is not None:
        grid = DecodeGrid(**{**asdict(grid), "paged": {"contiguous": (False,), "paged": (True,),
                                                       "both": (False, True)}[args.cache]})
    shapes = [DecodeShape(b, hq, hkv, nq, n, d, paged, args.dtype)
              for d, (hq, hkv), nq, b, n, paged in itertools.product(grid.head_dims, grid.heads, grid.seqlen_q,
                                                                     grid.batches, grid.keys, grid.paged)]
    return [shape for shape in shapes if shape.kv_bytes <= MAX_KV_BYTES]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and methods


@dataclass
class DecodeInputs:
    query: torch.Tensor  # (B, Hq, Nq, D)
    key: torch.Tensor  # the logical cache, (B, Hkv, N, D): what the peers read
    value: torch.Tensor
    key_cache: torch.Tensor  # what our kernels read: the same tensor, or its pages
    value_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    block_table: torch.Tensor | None


def make_inputs(shape: DecodeShape, device) -> DecodeInputs:
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = harness.DTYPES[shape.dtype]

    def randn(*size):
        return torch.randn(size, generator=generator, device=device, dtype=dtype)

    query = randn(shape.batch, shape.heads_q, shape.seqlen_q, shape.head_dim)
    seqlens = torch.full((shape.batch,), shape.keys, dtype=torch.int32, device=device)
    if not shape.paged:
        key, value = (randn(shape.batch, shape.heads_kv, shape.keys, shape.head_dim) for _ in range(2))
        return DecodeInputs(query, key, value, key, value, seqlens, None)
    blocks = math.ceil(shape.keys / PAGE_SIZE)
    pages = [randn(shape.batch * blocks, shape.heads_kv, PAGE_SIZE, shape.head_dim) for _ in range(2)]
    order = torch.randperm(shape.batch * blocks, generator=torch.Generator().manual_seed(0))
    table = order.view(shape.batch, blocks).to(torch.int32).to(device)
    # The peers are not timed on paged rows: the logical cache of batch 0 serves the correctness check only.
    key, value = (p[table[:1].long()].transpose(1, 2).flatten(2, 3)[:, :, :shape.keys] for p in pages)
    return DecodeInputs(query, key, value, pages[0], pages[1], seqlens, table)


def _our_method(backend: str):
    import flash_attention

    def run(inputs: DecodeInputs, causal: bool):
        return flash_attention.attention_with_kvcache(
            inputs.query, inputs.key_cache, inputs.value_cache, cache_seqlens=inputs.cache_seqlens,
            block_table=inputs.block_table, causal=causal, backend=backend)

    def unavailable(inputs: DecodeInputs):
        return flash_attention.backend_unavailable_reason(backend, inputs.query)

    return run, unavailable


def _sdpa_method(sdpa_backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa_backend = getattr(SDPBackend, sdpa_backend_name)

    def run(inputs: DecodeInputs, causal: bool):
        query = inputs.query
        group = query.shape[1] // inputs.key.shape[1]
        # SDPA's causal mask is top-left aligned: for Nq > 1 pass ours (bottom-right) as a boolean mask.
        mask = None
        if causal and query.shape[2] > 1:
            rows = torch.arange(query.shape[2], device=query.device)[:, None]
            mask = torch.arange(inputs.key.shape[2], device=query.device)[None, :] <= \
                rows + inputs.key.shape[2] - query.shape[2]
        with sdpa_kernel(sdpa_backend):
            return F.scaled_dot_product_attention(query, inputs.key, inputs.value, attn_mask=mask,
                                                  enable_gqa=group > 1)

    def unavailable(inputs: DecodeInputs):
        if inputs.block_table is not None:
            return "SDPA takes no paged cache"
        if sdpa_backend_name == "CUDNN_ATTENTION" and inputs.query.device.type != "cuda":
            return "SDPA's cuDNN backend needs CUDA tensors"
        return None

    return run, unavailable


def _fa4_method():
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as error:  # not installed, or its DSL fails at import here
        reason = f"flash_attn.cute (FlashAttention-4) does not import: {error}"
        return None, lambda inputs: reason

    def run(inputs: DecodeInputs, causal: bool):
        result = flash_attn_func(inputs.query.transpose(1, 2), inputs.key.transpose(1, 2),
                                 inputs.value.transpose(1, 2), causal=causal)
        return (result[0] if isinstance(result, tuple) else result).transpose(1, 2)

    def unavailable(inputs: DecodeInputs):
        if inputs.block_table is not None:
            return "not timed on paged caches here"
        return None if inputs.query.device.type == "cuda" else "FlashAttention-4 needs CUDA tensors"

    return run, unavailable


def build_methods(names) -> dict:
    factories = {"triton": lambda: _our_method("triton"), "cuda": lambda: _our_method("cuda"),
                 "sdpa_flash": lambda: _sdpa_method("FLASH_ATTENTION"),
                 "sdpa_cudnn": lambda: _sdpa_method("CUDNN_ATTENTION"), "fa4": _fa4_method}
    return {name: factories[name]() for name in names}


# ----------------------------------------------------------------------------------------------------------------
# Measuring


def copy_ceiling_tbps(device) -> float:
    """TB/s of a device-to-device copy of 2 GiB (bytes read + bytes written), the median of 20 copies."""
    source = torch.empty(2**30, dtype=torch.int16, device=device)
    target = torch.empty_like(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for index in range(25):
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        if index >= 5:
            times.append(start.elapsed_time(end))
    return 2 * source.numel() * source.element_size() / (sorted(times)[len(times) // 2] * 1e-3) / 1e12


def reference_error(inputs: DecodeInputs, output: torch.Tensor, causal: bool) -> tuple[float, float]:
    """Max error on batch 0 against float32 math, and the tolerance: 3x PyTorch's same-dtype error + one ulp."""
    query = inputs.query[:1]
    group = query.shape[1] // inputs.key.shape[1]
    key, value = (t[:1].repeat_interleave(group, dim=1) for t in (inputs.key, inputs.value))
    exact = harness._attention_math(query, key, value, causal, torch.float32)
    same_dtype = harness._attention_math(query, key, value, causal, query.dtype).float()
    tolerance = 3 * (same_dtype - exact).abs().max().item() + torch.finfo(query.dtype).eps
    return (output[:1].float() - exact).abs().max().item(), tolerance


def run_shape(shape: DecodeShape, methods: dict, args, device) -> list[dict]:
    inputs = make_inputs(shape, device)
    rows, timings, host = harness.check_and_time(methods, inputs, asdict(shape), args.causal, reference_error, args,
                                                 device)
    for row in rows:
        if row["method"] in timings:
            median_ms = timings[row["method"]]["median_ms"]
            row.update(us=median_ms * 1e3, tbps=shape.kv_bytes / (median_ms * 1e-3) / 1e12)
        if row["method"] in host:
            row["host_us"] = host[row["method"]]
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def report(args, info, rows, ceiling, device) -> str:
    methods = list(args.methods)
    document = harness.Document(args.markdown)
    document.heading(f"Decode runtime, {args.dtype}{', causal' if args.causal else ''}", 1)
    document.lines(harness.provenance_lines(info) + [
        f"copy ceiling: {ceiling:.2f} TB/s (device-to-device copy of 2 GiB, read + written)" if ceiling else
        "copy ceiling: not measured (CPU)"])
    by_shape: dict = {}
    for row in rows:
        shape = DecodeShape(**{k: row[k] for k in DecodeShape.__dataclass_fields__})
        by_shape.setdefault(shape, {})[row["method"]] = row
    headers = ["B", "Hq/Hkv", "Nq", "keys", "D", "cache"]
    ours = [m for m in methods if m in OUR_METHODS]
    peers = [m for m in methods if m in PEER_METHODS]

    def shape_cells(shape):
        return [str(shape.batch), f"{shape.heads_q}/{shape.heads_kv}", str(shape.seqlen_q), str(shape.keys),
                str(shape.head_dim), "paged" if shape.paged else "contiguous"]

    def ratio(our_row, peer_row):  # peer time over ours: > 1 when ours is faster
        if not (our_row and peer_row and "us" in our_row and "us" in peer_row):
            return "—"
        return f"{peer_row['us'] / our_row['us']:.2f}"

    def best_peer(cells):
        timed = [cells[p] for p in peers if p in cells and "us" in cells[p] and cells[p]["status"] == "ok"]
        return min(timed, key=lambda r: r["us"]) if timed else None

    document.table("µs per call (median)", headers + methods,
                   [shape_cells(s) + [harness.row_cell(c.get(m), "us", harness.format_number) for m in methods]
                    for s, c in by_shape.items()])
    ceiling_columns = [f"{m} % copy" for m in ours] if ceiling else []
    document.table("TB/s of K/V read; ours against the copy ceiling and the best peer (ratio > 1: ours faster)",
                   headers + methods + ceiling_columns + [f"{m}/best peer" for m in ours],
                   [shape_cells(s) + [harness.row_cell(c.get(m), "tbps", lambda v: f"{v:.2f}") for m in methods]
                    + [harness.row_cell(c.get(m), "tbps", lambda v: f"{100 * v / ceiling:.0f}%")
                       for m in ours if ceiling]
                    + [ratio(c.get(m), best_peer(c)) for m in ours]
                    for s, c in by_shape.items()])
    if args.host:
        document.table("Host time per call (µs), back-to-back loop",
                       headers + methods,
                       [shape_cells(s) + [harness.row_cell(c.get(m), "host_us", harness.format_number) for m in methods]
                        for s, c in by_shape.items()])
    paged_pairs = []
    for shape, cells in by_shape.items():
        if shape.paged:
            twin = by_shape.get(DecodeShape(**{**asdict(shape), "paged": False}), {})
            paged_pairs.append(shape_cells(shape)[:5] + [ratio(cells.get(m), twin.get(m)) for m in ours])
    if paged_pairs:
        document.table("Paged against contiguous, same shape (contiguous µs / paged µs; 1.00: pages cost nothing)",
                       headers[:5] + ours, paged_pairs)
    notes = sorted({f"{row['method']}: {row['note']}" for row in rows if row.get("note")})
    document.lines(notes, title="Notes")
    document.lines([
        "Timing: " + ("wall-clock on CPU (smoke run: the numbers mean nothing)" if device.type == "cpu" else
                      f"CUDA events, L2 flushed before each call, methods interleaved, about {args.rep_ms:g} ms per "
                      f"method and shape; median"),
        f"Each output (batch 0) is checked against float32 math; {harness.WRONG} marks one outside 3x PyTorch's "
        f"same-dtype error + 1 ulp.",
    ], title="How these numbers were made")
    return document.text()


def plot(path: Path, title: str, info, rows, ceiling) -> None:
    """TB/s against keys, one panel per batch size, one line per (method, cache); the copy ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    import textwrap

    batches = sorted({row["batch"] for row in rows})
    variants = sorted({(row["heads_q"], row["heads_kv"], row["seqlen_q"], row["head_dim"]) for row in rows})
    figure, panels = pyplot.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.2), squeeze=False)
    for axes, batch in zip(panels[0], batches):
        lines = sorted({(row["method"], row["paged"], (row["heads_q"], row["heads_kv"], row["seqlen_q"],
                                                       row["head_dim"])) for row in rows if row["batch"] == batch})
        for method, paged, variant in lines:
            points = sorted((row["keys"], row["tbps"]) for row in rows if "tbps" in row and row["batch"] == batch
                            and (row["method"], row["paged"], (row["heads_q"], row["heads_kv"], row["seqlen_q"],
                                                               row["head_dim"])) == (method, paged, variant))
            shape = f" {variant[0]}/{variant[1]} Nq{variant[2]} D{variant[3]}" if len(variants) > 1 else ""
            if points:
                axes.plot(*zip(*points), marker="o", linestyle="--" if paged else "-",
                          label=f"{method}{' paged' if paged else ''}{shape}")
        if ceiling:
            axes.axhline(ceiling, color="gray", linestyle=":", label="copy ceiling")
        axes.set_xscale("log", base=2)
        axes.set_title(f"batch {batch}", fontsize=9)
        axes.set_xlabel("keys")
        axes.set_ylabel("TB/s of K/V read")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6)
    details = " | ".join(f"{k}: {v}" for k, v in info.items() if k != "command")
    figure.suptitle(f"{title}\n" + textwrap.fill(details, width=40 * len(batches) + 20), fontsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.85))
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def write_outputs(folder: Path, stem: str, text: str, info, rows, ceiling) -> None:
    harness.write_rows(folder, stem, text, info, rows)
    plot(folder / f"{stem}.png", text.splitlines()[0].lstrip("# "), info, rows, ceiling)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu" and not args.smoke:
        print("error: no CUDA GPU; pass --smoke to run the decode path on CPU", file=sys.stderr)
        return 2
    if args.smoke and device.type == "cuda":
        args.warmup_ms, args.rep_ms = min(args.warmup_ms, 5.0), min(args.rep_ms, 20.0)
    methods = build_methods(args.methods)
    ceiling = copy_ceiling_tbps(device) if device.type == "cuda" else None
    rows = []
    shapes = sweep_shapes(args)
    for index, shape in enumerate(shapes, start=1):
        print(f"[{index}/{len(shapes)}] {shape.label}", file=sys.stderr, flush=True)
        rows += run_shape(shape, methods, args, device)
    info = harness.provenance(device)
    text = report(args, info, rows, ceiling, device)
    sys.stdout.write(text)
    if args.output is not None:
        stem = f"runtime_{'smoke' if args.smoke else 'decode'}_{args.dtype}{'_causal' if args.causal else ''}"
        write_outputs(args.output, stem, text, info, rows, ceiling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
