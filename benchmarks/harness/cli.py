"""From the command line to the results: the flags (one set for every grid; a shape flag applies to the grids whose
axes have a field of its name), the device, and main(), which both commands run."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .grids import GRIDS
from .methods import DTYPES, fa4_importable
from .provenance import REPO_ROOT, provenance
from .report import AgainstCopy, Run, document, write_files
from .sweep import records_frame, run_sweep
from .timing import HOST_HELP, copy_tbps

MASKS = {"none": (False,), "causal": (True,), "both": (False, True)}
MASK_SUFFIXES = {(False,): "", (True,): "_causal", (False, True): "_both"}  # in the file names
CACHES = {"contiguous": (False,), "paged": (True,), "both": (False, True)}
SMOKE_WARMUP_MS, SMOKE_REP_MS = 5.0, 20.0  # a --smoke run on a GPU: tiny shapes need no long timing


@dataclass(frozen=True)
class Command:
    """What one command (runtime.py, memory.py) adds to the harness."""

    name: str  # the files' prefix
    title: str
    description: str
    grids: tuple[str, ...]  # --grid's choices, the first the default
    timed: bool  # takes --warmup-ms, --rep-ms and --host
    measure: Callable  # (options, methods, inputs, shape) -> {method name: values}
    tables: Callable  # (report.Document, report.Section, Run) -> None: the section's tables
    how_heading: str
    how: Callable  # (Run) -> the lines under how_heading
    plotted: Callable  # (Run) -> plot.draw's keyword arguments: what the .png shows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


def _head_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """'32/8,64/8,16' -> ((32, 8), (64, 8), (16, 16)): query/key-value head pairs."""
    pairs = []
    for part in text.split(","):
        query_heads, _, kv_heads = part.partition("/")
        pairs.append((int(query_heads), int(kv_heads or query_heads)))
    return tuple(pairs)


def _cache(text: str) -> tuple[bool, ...]:
    if text not in CACHES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CACHES)}")
    return CACHES[text]


# (flag, the axes field it overrides, its type, help). Which grids take it follows from their axes' fields.
SHAPE_FLAGS = (
    ("--head-dims", "head_dims", _ints, "comma-separated head dims, e.g. 64,128"),
    ("--tokens", "tokens", _ints, "comma-separated sequence lengths (varlen: tokens per packed batch)"),
    ("--batch", "batch", int, "seed/paper: a fixed batch size (default: 16384 // tokens)"),
    ("--heads", "heads", _head_pairs, "query/key-value head pairs, e.g. 32/8,64/8 (16 = 16/16); seed/paper "
                                      "default: hidden // head_dim"),
    ("--batches", "batches", _ints, "decode: comma-separated batch sizes"),
    ("--keys", "keys", _ints, "decode: comma-separated cache lengths"),
    ("--query-lens", "query_lens", _ints, "decode: query rows per sequence, e.g. 1,4"),
    ("--cache", "paged", _cache, "decode: contiguous, paged or both"),
    ("--mixes", "mixes", lambda text: tuple(text.split(",")), "varlen: comma-separated mixes, equal-N, "
                                                               "uniform-A-B, skewed-L-S"),
)


def parse_args(command: Command, argv: list[str]) -> argparse.Namespace:
    """The flags, resolved against the grid: options.grid is the Grid to run (its axes overridden by the shape
    flags), with the dtype, methods and timing it runs with, the file stem and the title."""
    def per_grid(value: Callable) -> str:
        """value(grid) for each grid of the command, grids of one value together."""
        grids_by_value: dict[str, list[str]] = {}
        for name in command.grids:
            grids_by_value.setdefault(value(GRIDS[name]), []).append(name)
        return "; ".join(f"{', '.join(names)}: {text}" for text, names in grids_by_value.items())

    parser = argparse.ArgumentParser(prog=f"{command.name}.py", description=command.description)
    parser.add_argument("--grid", choices=command.grids, default=command.grids[0],
                        help=per_grid(lambda grid: grid.summary))
    shape_flags = [flag for flag in SHAPE_FLAGS if any(hasattr(GRIDS[g].axes, flag[1]) for g in command.grids)]
    for option, field, kind, text in shape_flags:
        parser.add_argument(option, dest=field, type=kind, metavar=option[2:].upper().replace("-", "_"),
                            help=text + " (overrides the grid)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="default: " + per_grid(lambda grid: grid.dtype))
    parser.add_argument("--causal", action="store_true", help="same as --mask causal")
    parser.add_argument("--mask", choices=tuple(MASKS), help="default: " + per_grid(
        lambda grid: {v: k for k, v in MASKS.items()}[grid.axes.masks] if hasattr(grid.axes, "masks")
        else "each row its own, no --mask"))
    parser.add_argument("--methods", type=_names,
                        help="comma-separated; default: the grid's, plus fa4 where flash_attn.cute imports; "
                             "choose from " + per_grid(lambda grid: ",".join(grid.call.METHODS)))
    parser.add_argument("--markdown", action="store_true", help="markdown tables on stdout (default: plain text)")
    parser.add_argument("--output", type=Path, help="also write .md, .json, .csv and .png into this folder")
    parser.add_argument("--smoke", action="store_true",
                        help="the grid's tiny variant, which also runs on CPU (the Triton kernel under its "
                             "interpreter: TRITON_INTERPRET=1 is set for you); the numbers mean nothing")
    if command.timed:
        parser.add_argument("--warmup-ms", type=float, help="GPU timing: warm-up per method and shape; default: "
                                                            + per_grid(lambda grid: f"{grid.warmup_ms:g}"))
        parser.add_argument("--rep-ms", type=float, help="GPU timing: time spent repeating per cell; default: "
                                                         + per_grid(lambda grid: f"{grid.rep_ms:g}"))
        parser.add_argument("--host", action="store_true", help=HOST_HELP)
    options = parser.parse_args(argv)

    chosen = options.grid
    grid = GRIDS[GRIDS[chosen].smoke] if options.smoke else GRIDS[chosen]
    overrides = {field: getattr(options, field) for _, field, _, _ in shape_flags
                 if getattr(options, field) is not None}
    for option, field, _, _ in shape_flags:
        if field in overrides and not hasattr(grid.axes, field):
            parser.error(f"{option} does not apply to the {chosen} grid")
    axes = dataclasses.replace(grid.axes, **overrides)
    if options.causal and options.mask not in (None, "causal"):
        parser.error("--causal contradicts --mask " + options.mask)
    mask = "causal" if options.causal else options.mask
    if mask is not None:
        if not hasattr(axes, "masks"):
            parser.error(f"--mask and --causal do not apply to the {chosen} grid: its rows have their own masks")
        axes = dataclasses.replace(axes, masks=MASKS[mask])
    unknown = [name for name in options.methods or () if name not in grid.call.METHODS]
    if unknown or options.methods == ():
        parser.error(f"unknown method(s) {unknown}; the {chosen} grid runs {','.join(grid.call.METHODS)}")

    options.grid = dataclasses.replace(grid, axes=axes)
    options.dtype = options.dtype or grid.dtype
    grid_name = grid.name + ("-custom" if overrides else "")
    options.title = f"{command.title}: {grid_name} grid, {options.dtype}"
    options.stem = f"{command.name}_{grid_name}_{options.dtype}{MASK_SUFFIXES[getattr(axes, 'masks', (False,))]}"
    if command.timed:
        options.warmup_ms = options.warmup_ms if options.warmup_ms is not None else grid.warmup_ms
        options.rep_ms = options.rep_ms if options.rep_ms is not None else grid.rep_ms
    else:
        options.warmup_ms = options.rep_ms = None
        options.host = False
    return options


def restart_under_interpreter_if_needed(argv: list[str]) -> None:
    """A --smoke run on a machine without a GPU runs the Triton kernel under its interpreter, which Triton picks from
    TRITON_INTERPRET when a kernel is decorated. If the caller did not set it, the command starts again as itself with
    TRITON_INTERPRET=1 in a copy of the environment (exec, before anything imported triton): the benchmarks never
    write os.environ."""
    if "--smoke" in argv and not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "TRITON_INTERPRET": "1"})


def pick_device(smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if smoke:
        return torch.device("cpu")
    print(
        f"error: no CUDA GPU found (torch.cuda.is_available() is False, torch {torch.__version__}).\n"
        f"These benchmarks measure GPU kernels. Run on a machine with an NVIDIA GPU, or pass --smoke to run the "
        f"whole path on CPU with tiny shapes (the triton backend under its interpreter; numbers meaningless).",
        file=sys.stderr,
    )
    sys.exit(2)


def build_methods(grid, requested: tuple[str, ...] | None) -> tuple[list, list[str]]:
    """The methods to run, and notes on peers left out."""
    notes = []
    if requested is None:
        requested = grid.methods
        if "fa4" in grid.call.METHODS:
            if fa4_importable():
                requested += ("fa4",)
            else:
                notes.append("fa4: not installed (FlashAttention-4, `flash_attn.cute`, does not import here); left out")
    return [grid.call.make_method(name) for name in requested], notes


def main(command: Command, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    restart_under_interpreter_if_needed(argv)
    options = parse_args(command, argv)
    options.device = device = pick_device(options.smoke)
    try:
        importlib.import_module("flash_attention")  # here: after --smoke's restart under the interpreter
    except ImportError as error:
        print(f"error: cannot import flash_attention ({error}); run `pip install -e .` in {REPO_ROOT} "
              f"or use `pixi run bench-{command.name}`", file=sys.stderr)
        return 2
    if options.smoke and device.type == "cuda" and command.timed:
        options.warmup_ms, options.rep_ms = min(options.warmup_ms, SMOKE_WARMUP_MS), min(options.rep_ms, SMOKE_REP_MS)
    grid = options.grid
    shapes = grid.axes.shapes(options.dtype)
    methods, method_notes = build_methods(grid, options.methods)
    against_copy = any(isinstance(comparison, AgainstCopy) for comparison in grid.comparisons)
    # Before the sweep, so that its 4 GiB of buffers are gone before any method runs.
    ceiling = copy_tbps(device) if against_copy and device.type == "cuda" else None
    records = run_sweep(grid.call, shapes, methods, device,
                        lambda methods_, inputs, shape: command.measure(options, methods_, inputs, shape))
    info = provenance(device)
    if against_copy:
        info["copy ceiling"] = (f"{ceiling:.2f} TB/s (device-to-device copy of 2 GiB, read + written)" if ceiling
                                else "not measured (CPU)")
    run = Run(title=options.title, stem=options.stem, grid=grid, shapes=shapes,
              methods=[method.name for method in methods], method_notes=method_notes, device=device,
              warmup_ms=options.warmup_ms, rep_ms=options.rep_ms, host=options.host, info=info, copy_tbps=ceiling,
              frame=records_frame(records, shapes, grid.columns))
    text = document(run, command, options.markdown)
    sys.stdout.write(text)
    if options.output is not None:
        for path in write_files(run, command, text, options.output):
            print(f"wrote {path}", file=sys.stderr)
    return 0
