"""Forward-attention runtime: median time, TFLOPS (TB/s of K/V read for decoding), our kernels' speed relative to
SDPA (and FA4), and the spread.

    python benchmarks/runtime.py --markdown                 # pixi run bench-runtime --markdown
    python benchmarks/runtime.py --grid paper --mask both --output results/
    python benchmarks/runtime.py --grid model --markdown    # prefill shapes models send: GQA, chunked prefill
    python benchmarks/runtime.py --grid decode --markdown   # KV-cache decoding: µs and TB/s
    python benchmarks/runtime.py --grid varlen --markdown   # packed ragged batches
    python benchmarks/runtime.py --smoke --markdown         # CPU too (the Triton interpreter), numbers meaningless
"""

from __future__ import annotations

import functools
import sys

from harness import timing
from harness.checking import TOLERANCE_TEXT
from harness.cli import Command, main
from harness.report import WRONG, format_number, rate_title

TIME_SCALES = {"ms": 1.0, "µs": 1e3}


def measure(options, methods, inputs, shape) -> dict[str, dict]:
    """Every method of a shape timed together (interleaved), its rate, and its host time with --host."""
    calls = {method.name: functools.partial(method.run, inputs) for method in methods}
    timings = timing.time_calls(calls, options.device, options.warmup_ms, options.rep_ms)
    rate = options.grid.call.RATE
    for values in timings.values():
        values[rate.key] = rate.of(shape.work, values["median_ms"])
    if options.host:
        for name, host_us in timing.host_times(calls, options.device).items():
            timings[name]["host_us"] = host_us
    return timings


def tables(document, section, run) -> None:
    unit, rate = run.grid.time_unit, run.grid.call.RATE

    def time(record, key: str) -> str:
        return format_number(record[key] * TIME_SCALES[unit])

    document.table(f"Median runtime ({unit})", section.table(section.cells(lambda r: time(r, "median_ms"))))
    document.table(rate_title(rate, run.grid.comparisons),
                   section.table(section.cells(lambda r: format_number(r[rate.key])), section.comparisons(rate.key)))
    document.table(f"Interquartile range ({unit}, 25th-75th percentile)",
                   section.table(section.cells(lambda r: f"{time(r, 'q25_ms')}-{time(r, 'q75_ms')}")))
    if run.host:
        document.table("Host time per call (µs), back-to-back loop",
                       section.table(section.cells(lambda r: format_number(r["host_us"]))))


def how(run) -> list[str]:
    call = run.grid.call
    return [
        timing.timing_text(run.device, run.warmup_ms, run.rep_ms),
        call.RATE.definition,
        call.INPUTS_TEXT,
        run.grid.axes.description,
        *([timing.HOST_TEXT] if run.host else []),
        f"Before timing, each method's output ({call.CHECKED}) is checked against float32 math on the same inputs; "
        f"{WRONG} marks a result outside the tolerance ({TOLERANCE_TEXT}). Such a number is shown but is not a "
        f"valid timing.",
    ]


def plotted(run) -> dict:
    rate = run.grid.call.RATE
    return {"key": rate.key, "label": rate.title, "lines": {"copy ceiling": run.copy_tbps} if run.copy_tbps else {}}


RUNTIME = Command(
    name="runtime", title="Forward attention runtime", description=" ".join(__doc__.split("\n\n")[0].split()),
    grids=("seed", "paper", "model", "decode", "varlen"), timed=True, measure=measure, tables=tables,
    how_heading="How these numbers were made", how=how, plotted=plotted,
)

if __name__ == "__main__":
    sys.exit(main(RUNTIME))
