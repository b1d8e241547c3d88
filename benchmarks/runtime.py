"""Forward-attention runtime: median ms, TFLOPS, our kernels' speed relative to SDPA (and FA4), and the spread.

    python benchmarks/runtime.py --markdown                 # pixi run bench-runtime --markdown
    python benchmarks/runtime.py --grid paper --mask both --output results/
    python benchmarks/runtime.py --grid decode --markdown   # KV-cache decoding: µs and TB/s (benchmarks/decode.py)
    python benchmarks/runtime.py --grid varlen --markdown   # packed ragged batches (benchmarks/varlen.py)
    python benchmarks/runtime.py --smoke --markdown         # CPU too (the Triton interpreter), numbers meaningless
"""

from __future__ import annotations

import sys

import harness
from harness import WRONG, Document, Footnotes, Report, format_number, shape_cells


def measure(args, methods, inputs, shape, device) -> dict[str, dict]:
    calls = {method.name: (lambda run=method.run: run(*inputs, shape.causal)) for method in methods}
    timings = harness.time_calls(calls, device, args.warmup_ms, args.rep_ms)
    for timing in timings.values():
        timing["tflops"] = shape.flops / (timing["median_ms"] * 1e-3) / 1e12
    if args.host:
        for name, host_us in harness.host_times(calls, device).items():
            timings[name]["host_us"] = host_us
    return timings


def _value_cell(record, key: str, footnotes: Footnotes, fmt=format_number) -> str:
    if not record.measured:
        return footnotes.cell(record)
    return fmt(record.values[key]) + (WRONG if record.status == "wrong" else "")


def _ratio_cell(ours, peer) -> str:
    """How many times faster ours is than the peer (= TFLOPS ratio); ✗ if either answer was wrong."""
    if ours is None or peer is None or not (ours.measured and peer.measured):
        return "—"
    wrong = WRONG if "wrong" in (ours.status, peer.status) else ""
    ratio = peer.values["median_ms"] / ours.values["median_ms"]
    return f"{ratio:.2f}{wrong}" if ratio >= 0.1 else f"{ratio:.2g}{wrong}"


def ratio_pairs(methods: list[str]) -> list[tuple[str, str]]:
    return [(ours, peer) for ours in harness.OUR_METHODS if ours in methods
            for peer in harness.PEER_METHODS if peer in methods]


def make_report(args, grid_name, info, records, methods, method_notes) -> Report:
    pairs = ratio_pairs(methods)

    def body(document: Document) -> None:
        document.lines(method_notes)
        for rows, footnotes in harness.mask_sections(document, args, records):
            document.table(
                "Median runtime (ms)",
                harness.SHAPE_HEADERS + methods,
                [shape_cells(shape) + [_value_cell(cells[m], "median_ms", footnotes) for m in methods]
                 for shape, cells in rows.items()],
            )
            document.table(
                "TFLOPS, and our speed relative to each peer (ratio > 1: ours is faster)",
                harness.SHAPE_HEADERS + methods + [f"{ours}/{peer}" for ours, peer in pairs],
                [shape_cells(shape) + [_value_cell(cells[m], "tflops", footnotes) for m in methods]
                 + [_ratio_cell(cells.get(ours), cells.get(peer)) for ours, peer in pairs]
                 for shape, cells in rows.items()],
            )
            document.table(
                "Interquartile range (ms, 25th-75th percentile)",
                harness.SHAPE_HEADERS + methods,
                [shape_cells(shape) + [_iqr_cell(cells[m], footnotes) for m in methods]
                 for shape, cells in rows.items()],
            )
            if args.host:
                document.table(
                    "Host time per call (µs), back-to-back loop",
                    harness.SHAPE_HEADERS + methods,
                    [shape_cells(shape) + [_value_cell(cells[m], "host_us", footnotes) for m in methods]
                     for shape, cells in rows.items()],
                )
        document.heading("How these numbers were made", 2)
        document.lines([
            "Timing: " + ("wall-clock median of 3 calls on CPU (smoke run: the numbers mean nothing)"
                          if args.device.type == "cpu" else
                          f"CUDA events around each call after {args.warmup_ms:g} ms of warm-up, with the L2 cache "
                          f"flushed before each call; the methods of a shape timed interleaved (one call of each "
                          f"per round, the order rotated each round), for about {args.rep_ms:g} ms per method and "
                          f"at least 10 rounds; median and quartiles"),
            "TFLOPS = 4*B*H*N*N*D / median time, halved for causal. Every method gets the same fresh inputs "
            "(torch.randn, (B, H, N, D)); SDPA gets is_causal= (for N_q == N_k its top-left mask equals ours).",
            *([f"Host time (--host): the wall-clock time per call of a back-to-back loop of "
               f"{harness.HOST_LOOP_CALLS} calls of one method, best of 3 loops, synchronised only around the loop: "
               f"what a model pays per call where the GPU keeps up."] if args.host else []),
            f"Before timing, each method's output (batch 0, heads 0-{harness.CHECK_HEADS - 1}) is checked against "
            f"float32 math on the same inputs; {WRONG} marks a result outside the tolerance (3x PyTorch's own "
            f"same-dtype error + 1 ulp). Such a number is shown but is not a valid timing.",
        ])

    return Report(
        title=f"Forward attention runtime: {grid_name} grid, {args.dtype}",
        stem=harness.output_stem(args, grid_name),
        info=info, records=records, body=body,
        plot=lambda figure, recs: harness.plot_by_head_dim(figure, recs, "tflops", "TFLOPS"),
    )


def _iqr_cell(record, footnotes: Footnotes) -> str:
    if not record.measured:
        return footnotes.cell(record)
    values = record.values
    return f"{format_number(values['q25_ms'])}-{format_number(values['q75_ms'])}"


# Grids with their own sweep and tables, by the module that runs them.
OWN_MODULE_GRIDS = ("decode", "varlen")


def _own_module_grid(argv: list[str]) -> str | None:
    for grid in OWN_MODULE_GRIDS:
        if f"--grid={grid}" in argv or any(a == "--grid" and b == grid for a, b in zip(argv, argv[1:])):
            return grid
    return None


if __name__ == "__main__":
    harness.prepare_smoke_environment(sys.argv[1:])
    grid_module = _own_module_grid(sys.argv[1:])
    if grid_module is not None:
        import importlib

        sys.exit(importlib.import_module(grid_module).main(sys.argv[1:]))
    sys.exit(harness.main("runtime", __doc__.split("\n\n")[0].replace("\n", " "), measure, make_report))
