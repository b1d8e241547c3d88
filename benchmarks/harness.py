"""What benchmarks/runtime.py and benchmarks/memory.py share: the sweep, the methods, the correctness check, the
progress bar, the tables and the results files. Each command supplies only its measurement and its tables.

Every method goes through a public entry point (`flash_attention.attention(..., backend=...)`, SDPA, FA4's
`flash_attn_func`), never into kernel internals.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
WRONG = "✗"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# cuda_sm80 / cuda_sm90: the cuda backend held to one kernel family (FLASH_ATTENTION_CUDA_KERNEL), to compare the
# two on a Hopper GPU in one run (elsewhere, and for head dims the SM90 family lacks, both are the SM80 kernel).
# Not in the default set.
OUR_METHODS = ("triton", "cuda", "cuda_sm80", "cuda_sm90")
PEER_METHODS = ("sdpa_flash", "sdpa_cudnn", "fa4")
ALL_METHODS = ("baseline",) + OUR_METHODS + PEER_METHODS
DEFAULT_METHODS = ("baseline", "triton", "cuda", "sdpa_flash", "sdpa_cudnn")  # + fa4 where importable
CHECK_HEADS = 2  # the check compares batch element 0, heads [0, CHECK_HEADS) against a float32 reference


# ----------------------------------------------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True)
class Grid:
    """Batch defaults to TOKENS_PER_BATCH // tokens and heads to hidden // head_dim, as in the original repo and the
    FlashAttention-2/3 papers; `batch`/`heads` fix them instead."""

    head_dims: tuple[int, ...]
    tokens: tuple[int, ...]
    hidden: int
    batch: int | None = None
    heads: int | None = None


TOKENS_PER_BATCH = 16384
GRIDS = {
    # The original repo's README: emb_dim 512, (batch, tokens) in (32, 512) ... (4, 4096).
    "seed": Grid(head_dims=(64, 128), tokens=(512, 1024, 2048, 4096), hidden=512),
    # FlashAttention-2/3 papers: 16k tokens per batch, hidden 2048.
    "paper": Grid(head_dims=(64, 128), tokens=(512, 1024, 2048, 4096, 8192, 16384), hidden=2048),
    # CI on CPU under TRITON_INTERPRET=1: the whole path on tiny shapes; 48 is not a multiple of any block size.
    "smoke": Grid(head_dims=(32, 64), tokens=(16, 48), hidden=64, batch=1, heads=2),
}


@dataclass(frozen=True)
class Shape:
    head_dim: int
    batch: int
    heads: int
    tokens: int
    causal: bool
    dtype: str

    @property
    def flops(self) -> float:
        """Two matmuls of 2*N*N*D each per head; causal does half the work."""
        full = 4.0 * self.batch * self.heads * self.tokens * self.tokens * self.head_dim
        return full / 2 if self.causal else full

    @property
    def label(self) -> str:
        mask = "causal" if self.causal else "no mask"
        return f"D={self.head_dim} B={self.batch} H={self.heads} N={self.tokens} {mask}"


def sweep_shapes(grid: Grid, masks: list[bool], dtype: str) -> list[Shape]:
    shapes = []
    for causal in masks:
        for head_dim in grid.head_dims:
            for tokens in grid.tokens:
                batch = grid.batch or max(1, TOKENS_PER_BATCH // tokens)
                heads = grid.heads or max(1, grid.hidden // head_dim)
                shapes.append(Shape(head_dim, batch, heads, tokens, causal, dtype))
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def _method_list(text: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [name for name in names if name not in ALL_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {','.join(ALL_METHODS)}")
    return names


def parse_args(command: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{command}.py", description=description)
    timing = command == "runtime"  # memory.py measures allocations: no timing options
    grids_of_their_own = " (also --grid decode and --grid varlen, each with its own options)" if timing else ""
    parser.add_argument("--grid", choices=("seed", "paper"), default="seed",
                        help="seed: the original repo's grid (emb_dim 512); paper: 16k tokens per batch, hidden "
                             f"2048{grids_of_their_own}")
    parser.add_argument("--head-dims", type=_int_list, help="comma-separated, e.g. 64,128 (overrides the grid)")
    parser.add_argument("--tokens", type=_int_list, help="comma-separated sequence lengths (overrides the grid)")
    parser.add_argument("--batch", type=int, help="fixed batch size (default: 16384 // tokens)")
    parser.add_argument("--heads", type=int, help="fixed head count (default: hidden // head_dim)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    parser.add_argument("--causal", action="store_true", help="same as --mask causal")
    parser.add_argument("--mask", choices=("none", "causal", "both"), default=None)
    parser.add_argument("--methods", type=_method_list, default=None,
                        help=f"comma-separated from {','.join(ALL_METHODS)} "
                             f"(default: {','.join(DEFAULT_METHODS)}, plus fa4 where flash_attn.cute imports)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables on stdout (default: plain text)")
    parser.add_argument("--output", type=Path, help="also write .md, .json, .csv and .png into this folder")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes that also run on CPU (the Triton kernel under its interpreter: "
                             "TRITON_INTERPRET=1 is set for you); the numbers mean nothing")
    if timing:
        parser.add_argument("--warmup-ms", type=float, default=25.0, help="GPU timing: warm-up per method and shape")
        parser.add_argument("--rep-ms", type=float, default=200.0, help="GPU timing: time spent repeating per cell")
        parser.add_argument("--host", action="store_true", help=HOST_HELP)
    args = parser.parse_args(argv)
    if not timing:
        args.warmup_ms = args.rep_ms = None
        args.host = False
    args.command = command
    if args.causal and args.mask not in (None, "causal"):
        parser.error("--causal contradicts --mask " + args.mask)
    args.mask = "causal" if args.causal else (args.mask or "none")
    return args


def grid_from_args(args) -> tuple[str, Grid]:
    """The grid's name (used in file names; '-custom' once a flag overrides it) and the grid itself."""
    name = "smoke" if args.smoke else args.grid
    grid = GRIDS[name]
    overrides = {"head_dims": args.head_dims, "tokens": args.tokens, "batch": args.batch, "heads": args.heads}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides:
        grid = Grid(**{**asdict(grid), **overrides})
        name += "-custom"
    return name, grid


def masks_from_args(args) -> list[bool]:
    return {"none": [False], "causal": [True], "both": [False, True]}[args.mask]


def output_stem(args, grid_name: str) -> str:
    """e.g. runtime_seed_fp16, memory_paper_bf16_causal, runtime_seed_fp16_both."""
    suffix = "" if args.mask == "none" else f"_{args.mask}"
    return f"{args.command}_{grid_name}_{args.dtype}{suffix}"


def pick_device(args) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if args.smoke:
        return torch.device("cpu")
    print(
        f"error: no CUDA GPU found (torch.cuda.is_available() is False, torch {torch.__version__}).\n"
        f"These benchmarks measure GPU kernels. Run on a machine with an NVIDIA GPU, or pass --smoke to run the "
        f"whole path on CPU with tiny shapes (the triton backend under its interpreter; numbers meaningless).",
        file=sys.stderr,
    )
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------------------
# Methods


@dataclass
class Method:
    name: str
    run: Callable  # (query, key, value, causal) -> output (B, H, N, D)
    unavailable_reason: Callable  # (query) -> None or a sentence
    cell_label: str = "unavailable"  # what the table cell says when unavailable_reason is not None


def _flash_attention_method(name: str, backend: str, environment: dict[str, str] | None = None) -> Method:
    import flash_attention

    def call(query, key, value, causal):
        return flash_attention.attention(query, key, value, causal=causal, backend=backend)

    def run_with_environment(query, key, value, causal):
        saved = {key_: os.environ.get(key_) for key_ in environment}
        os.environ.update(environment)
        try:
            return call(query, key, value, causal)
        finally:
            for key_, value_ in saved.items():
                if value_ is None:
                    os.environ.pop(key_, None)
                else:
                    os.environ[key_] = value_

    run = run_with_environment if environment else call

    def unavailable_reason(query):
        try:
            return flash_attention.backend_unavailable_reason(backend, query)
        except Exception as error:  # a backend still being written must not take the sweep down
            return f"backend {backend!r} could not say whether it runs: {type(error).__name__}: {error}"

    return Method(name, run, unavailable_reason)


def _sdpa_method(name: str, sdpa_backend_name: str) -> Method:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa_backend = getattr(SDPBackend, sdpa_backend_name)

    def run(query, key, value, causal):
        # For N_q == N_k, SDPA's top-left causal mask equals our bottom-right one.
        with sdpa_kernel(sdpa_backend):
            return F.scaled_dot_product_attention(query, key, value, is_causal=causal)

    def unavailable_reason(query):
        if sdpa_backend_name == "CUDNN_ATTENTION":
            if query.device.type != "cuda":
                return "SDPA's cuDNN backend needs CUDA tensors"
            if not torch.backends.cudnn.is_available():
                return "cuDNN is not available in this torch build"
        return None  # on CPU, SDPBackend.FLASH_ATTENTION is PyTorch's fused CPU kernel

    return Method(name, run, unavailable_reason)


def _fa4_method() -> Method:
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as error:  # ImportError, or a CuTe DSL that fails at import on this machine
        reason = f"flash_attn.cute (FlashAttention-4) is not installed or does not import: {error}"
        return Method("fa4", None, lambda query: reason, cell_label="not installed")

    def run(query, key, value, causal):
        # FA4 takes (B, N, H, D); the transposed views share storage with our (B, H, N, D) inputs: no copy.
        result = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=causal)
        out = result[0] if isinstance(result, tuple) else result
        return out.transpose(1, 2)

    def unavailable_reason(query):
        return None if query.device.type == "cuda" else "FlashAttention-4 needs CUDA tensors"

    return Method("fa4", run, unavailable_reason)


def fa4_importable() -> bool:
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:
        return False
    return True


def build_methods(requested: tuple[str, ...] | None) -> tuple[list[Method], list[str]]:
    """The methods to run, and notes on peers left out."""
    notes = []
    if requested is None:
        requested = DEFAULT_METHODS
        if fa4_importable():
            requested += ("fa4",)
        else:
            notes.append("fa4: not installed (FlashAttention-4, `flash_attn.cute`, does not import here); left out")
    factories = {
        "baseline": lambda: _flash_attention_method("baseline", "naive"),
        "triton": lambda: _flash_attention_method("triton", "triton"),
        "cuda": lambda: _flash_attention_method("cuda", "cuda"),
        "cuda_sm80": lambda: _flash_attention_method("cuda_sm80", "cuda", {"FLASH_ATTENTION_CUDA_KERNEL": "sm80"}),
        "cuda_sm90": lambda: _flash_attention_method("cuda_sm90", "cuda", {"FLASH_ATTENTION_CUDA_KERNEL": "sm90"}),
        "sdpa_flash": lambda: _sdpa_method("sdpa_flash", "FLASH_ATTENTION"),
        "sdpa_cudnn": lambda: _sdpa_method("sdpa_cudnn", "CUDNN_ATTENTION"),
        "fa4": _fa4_method,
    }
    return [factories[name]() for name in dict.fromkeys(requested)], notes


# ----------------------------------------------------------------------------------------------------------------
# Inputs and the correctness check


def make_inputs(shape: Shape, device: torch.device, seed: int = 0):
    """Fresh random q, k, v (never zeros), the same tensors for every method on this shape."""
    generator = torch.Generator(device=device).manual_seed(seed)
    size = (shape.batch, shape.heads, shape.tokens, shape.head_dim)
    return tuple(
        torch.randn(size, generator=generator, device=device, dtype=DTYPES[shape.dtype]) for _ in range(3)
    )


def _attention_math(query, key, value, causal: bool, compute_dtype, rows_per_chunk: int = 2048):
    """softmax(q k^T / sqrt(D)) v in compute_dtype, by chunks of query rows to bound the N x N scores' memory."""
    query, key, value = (tensor.to(compute_dtype) for tensor in (query, key, value))
    scale = query.shape[-1] ** -0.5
    seqlen_q, seqlen_k = query.shape[-2], key.shape[-2]
    chunks = []
    for start in range(0, seqlen_q, rows_per_chunk):
        scores = query[..., start:start + rows_per_chunk, :] @ key.transpose(-1, -2) * scale
        if causal:  # bottom-right aligned: row i sees key j iff j <= i + seqlen_k - seqlen_q
            rows = torch.arange(start, start + scores.shape[-2], device=scores.device)[:, None]
            cols = torch.arange(seqlen_k, device=scores.device)[None, :]
            scores = scores.masked_fill(cols > rows + (seqlen_k - seqlen_q), float("-inf"))
        chunks.append(scores.softmax(dim=-1) @ value)
    return torch.cat(chunks, dim=-2)


@dataclass
class Reference:
    """The float32 answer on the checked slice (kept on CPU so it does not count in GPU memory figures), and the
    tolerance: a small multiple of the error PyTorch's own same-dtype math makes on that slice (as FlashAttention's
    tests do), plus one unit of rounding of the dtype."""

    output: torch.Tensor
    tolerance: float

    @classmethod
    def for_inputs(cls, query, key, value, causal: bool) -> "Reference":
        checked = (slice(0, 1), slice(0, CHECK_HEADS))
        q, k, v = (tensor[checked] for tensor in (query, key, value))
        exact = _attention_math(q, k, v, causal, torch.float32)
        same_dtype = _attention_math(q, k, v, causal, query.dtype).float()
        same_dtype_error = (same_dtype - exact).abs().max().item()
        tolerance = 3 * same_dtype_error + torch.finfo(query.dtype).eps
        return cls(exact.cpu(), tolerance)

    def max_error(self, output: torch.Tensor) -> float:
        checked = output[:1, :CHECK_HEADS].float().cpu()
        error = (checked - self.output).abs().max().item()
        return error if math.isfinite(error) else math.inf


# ----------------------------------------------------------------------------------------------------------------
# The sweep loop


@dataclass
class Record:
    """One (shape, method) cell. status: ok | wrong | unavailable | error | oom. `values` holds the measurement."""

    shape: Shape
    method: str
    status: str = "ok"
    note: str = ""
    cell_label: str = ""
    max_error: float | None = None
    tolerance: float | None = None
    values: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status in ("ok", "wrong")

    def flat(self) -> dict:
        shape = self.shape
        return {"head_dim": shape.head_dim, "batch_size": shape.batch, "num_tokens": shape.tokens,
                "heads": shape.heads, "causal": shape.causal, "dtype": shape.dtype, "method": self.method,
                "status": self.status, **self.values, "max_error": self.max_error, "tolerance": self.tolerance,
                "note": self.note}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def run_sweep(shapes: list[Shape], methods: list[Method], device: torch.device, measure: Callable) -> list[Record]:
    """For each shape: fresh inputs, then per method availability and one checked call (also the warm-up, so
    one-off compiles, autotuning and workspaces happen before any measurement), then measure(methods, inputs, shape,
    device) over the methods whose call ran, all at once (runtime.py interleaves their timed calls), returning each
    method's values by name."""
    records = []
    progress = Progress(len(shapes) * len(methods))
    for shape in shapes:
        inputs = make_inputs(shape, device)
        reference = Reference.for_inputs(*inputs, shape.causal)
        cell = []
        for method in methods:
            progress.step(f"{shape.label} {method.name}")
            cell.append((method, _checked_call(shape, method, inputs, reference, device)))
        _measure_together([(m, r) for m, r in cell if r.measured], inputs, shape, device, measure)
        records += [record for _, record in cell]
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    return records


def _checked_call(shape, method, inputs, reference, device) -> Record:
    record = Record(shape, method.name)
    reason = method.unavailable_reason(inputs[0])
    if reason is not None:
        record.status, record.note, record.cell_label = "unavailable", reason, method.cell_label
        return record
    try:
        with warnings.catch_warnings(record=True) as caught:  # SDPA says why a forced backend cannot run
            warnings.simplefilter("always")
            output = method.run(*inputs, shape.causal)
        record.max_error, record.tolerance = reference.max_error(output), reference.tolerance
        if not record.max_error <= record.tolerance:
            record.status = "wrong"
        del output
    except Exception as error:
        _failed(record, error, [str(w.message).splitlines()[0] for w in caught][:2], device)
    return record


def _measure_together(cell: list, inputs, shape, device, measure) -> None:
    """Measure the methods of one shape together; should that fail, each alone, so that one method's failure
    (out of memory, say) is its own."""
    if not cell:
        return
    try:
        values = measure([method for method, _ in cell], inputs, shape, device)
        for method, record in cell:
            record.values = values[method.name]
    except Exception as error:
        if len(cell) == 1:
            _failed(cell[0][1], error, [], device)
            return
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for one in cell:
            _measure_together([one], inputs, shape, device, measure)


def _failed(record: Record, error: Exception, warning_lines: list[str], device) -> None:
    if isinstance(error, torch.OutOfMemoryError):
        record.status, record.cell_label, record.note = "oom", "OOM", "out of GPU memory"
    else:
        record.status, record.cell_label = "error", "error"
        record.note = "; ".join([_first_line(error)] + warning_lines)
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Progress:
    """tqdm on stderr when installed, else a one-line counter; stdout stays clean for the tables."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            # Redrawn at most every few seconds when stderr is a log file rather than a terminal.
            self._bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True, leave=False,
                             mininterval=0.1 if sys.stderr.isatty() else 5.0)
        except ImportError:
            self._bar = None
        self._total, self._done = total, 0

    def step(self, label: str) -> None:
        if self._bar is not None:
            if self._done:
                self._bar.update(1)
            self._bar.set_description(label)
        else:
            print(f"\r[{self._done + 1}/{self._total}] {label:<60}", end="", file=sys.stderr, flush=True)
        self._done += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.close()
        else:
            print(file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Timing


L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB)


def time_calls(calls: dict[str, Callable], device: torch.device, warmup_ms: float, rep_ms: float,
               min_reps: int = 10, cpu_reps: int = 3) -> dict[str, dict]:
    """Per call (by name): median and quartiles of its runtime in ms, and the number of timed calls.

    GPU: CUDA events around each call, with L2 flushed before every one, so that no method is timed on cache-resident
    inputs; after warm-up, the calls are timed interleaved, one of each per round (each round in an order rotated by
    one), for about rep_ms per call but at least min_reps rounds (do_bench's scheme, interleaved, plus the minimum,
    so slow methods get a spread too). Interleaving puts every method under the same clocks: timed one after the
    other, a cell moved 4-7% with its position among the methods (results/NOTES.md, SM90 v10), as the GPU's clock
    and temperature drift under load. CPU (--smoke only): a wall-clock median of a few calls each; the numbers mean
    nothing, but the whole path runs.
    """
    if device.type == "cuda":
        times = _cuda_event_times(calls, warmup_ms, rep_ms, min_reps)
    else:  # the checked call before this one was the warm-up
        times = {name: [] for name in calls}
        for name, fn in calls.items():
            for _ in range(cpu_reps):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    timings = {}
    for name, samples in times.items():
        q25, median, q75 = statistics.quantiles(samples, n=4, method="inclusive")
        timings[name] = {"median_ms": median, "q25_ms": q25, "q75_ms": q75, "reps": len(samples)}
    return timings


HOST_LOOP_CALLS = 200
HOST_HELP = (f"also report host time: µs per call of a back-to-back loop of {HOST_LOOP_CALLS} calls per method (no "
             f"events, no flush, one synchronisation after the loop), what a model's layer loop pays per call when "
             f"the GPU keeps up")


def host_times(calls: dict[str, Callable], device: torch.device, loop: int = HOST_LOOP_CALLS,
               repeats: int = 3) -> dict[str, float]:
    """Per call (by name): µs of host time per call, the best of `repeats` back-to-back loops of `loop` calls, each
    timed by the wall clock from its first call to its last launch (the GPU finishes afterwards, outside the loop).
    For calls shorter on the GPU than on the host this is the rate they can be issued at; the interleaved, flushed
    kernel timing of time_calls hides it (each call waits for its events and the L2 flush). On CPU (--smoke) two
    calls, once: the numbers mean nothing, but the path runs."""
    if device.type != "cuda":
        loop, repeats = 2, 1
    host = {}
    for name, fn in calls.items():
        for _ in range(min(loop, 20)):  # warm-up
            fn()
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(loop):
                fn()
            best = min(best, (time.perf_counter() - start) / loop * 1e6)
        if device.type == "cuda":
            torch.cuda.synchronize()
        host[name] = best
    return host


def interleaved_order(names: list[str], rounds: int) -> list[list[str]]:
    """Round r calls every name once, starting from name r % len(names): each name is timed as often in each
    position, and so as often right after each of the others."""
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def _cuda_event_times(calls: dict[str, Callable], warmup_ms: float, rep_ms: float, min_reps: int) -> dict:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    estimates_ms = {}
    for name, fn in calls.items():
        start.record()
        for _ in range(3):
            flush.zero_()
            fn()
        end.record()
        torch.cuda.synchronize()
        estimates_ms[name] = max(start.elapsed_time(end) / 3, 1e-3)  # flush included: errs towards fewer calls
        for _ in range(max(1, round(warmup_ms / estimates_ms[name]))):
            fn()
    rounds = max(min_reps, round(rep_ms / statistics.fmean(estimates_ms.values())))
    # Every event made before the timed loop, which then only enqueues work.
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(rounds)] for name in calls}
    for index, order in enumerate(interleaved_order(list(calls), rounds)):
        for name in order:
            begin, finish = events[name][index]
            flush.zero_()
            begin.record()
            calls[name]()
            finish.record()
    torch.cuda.synchronize()
    return {name: [begin.elapsed_time(finish) for begin, finish in pairs] for name, pairs in events.items()}


# ----------------------------------------------------------------------------------------------------------------
# Tables


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Footnotes:
    """Numbers the reasons behind non-numeric cells so that cells stay short and the reason is still in the table."""

    def __init__(self):
        self._numbers: dict[str, int] = {}

    def cell(self, record: Record) -> str:
        """The text of a cell that carries no number."""
        key = f"{record.method}: {record.note}"
        number = self._numbers.setdefault(key, len(self._numbers) + 1)
        return f"{record.cell_label} [{number}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {text}" for text, number in self._numbers.items()]


def wrong_result_lines(records: list[Record]) -> list[str]:
    return [
        f"{WRONG} {r.method}, {r.shape.label}: max abs error {r.max_error:.3g} > tolerance {r.tolerance:.3g} "
        f"(batch 0, heads 0-{CHECK_HEADS - 1}, against float32)"
        for r in records if r.status == "wrong"
    ]


def render_table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    try:
        from tabulate import tabulate
    except ImportError:
        tabulate = None
    if tabulate is not None:
        return tabulate(rows, headers=headers, tablefmt="github" if markdown else "simple",
                        stralign="right", disable_numparse=True)
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows])


SHAPE_HEADERS = ["head_dim", "batch_size", "num_tokens"]


def shape_cells(shape: Shape) -> list[str]:
    return [str(shape.head_dim), str(shape.batch), str(shape.tokens)]


def mask_sections(document: "Document", args, records: list[Record]):
    """For each mask of the run: its heading, then (rows: shape -> method -> record, footnotes) for the caller's
    tables, then (when the caller moves on) the section's notes: footnotes and wrong results."""
    for causal in masks_from_args(args):
        section = [r for r in records if r.shape.causal == causal]
        footnotes = Footnotes()
        document.heading("causal" if causal else "no mask", 2)
        yield group_rows(section), footnotes
        document.lines(footnotes.lines() + wrong_result_lines(section), title="Notes:")


def group_rows(records: list[Record]) -> dict[Shape, dict[str, Record]]:
    """shape -> method -> record, in sweep order."""
    rows: dict[Shape, dict[str, Record]] = {}
    for record in records:
        rows.setdefault(record.shape, {})[record.method] = record
    return rows


class Document:
    """Markdown or plain text: headings, tables and notes, in the order they are added."""

    def __init__(self, markdown: bool):
        self.markdown = markdown
        self._parts: list[str] = []

    def heading(self, text: str, level: int) -> None:
        if self.markdown:
            self._parts.append(f"{'#' * level} {text}")
        else:
            self._parts.append(text + {1: "\n" + "=" * len(text), 2: "\n" + "-" * len(text)}.get(level, ":"))

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        self.heading(title, 3)
        self._parts.append(render_table(headers, rows, self.markdown))

    def lines(self, lines: list[str], title: str | None = None) -> None:
        if not lines:
            return
        text = "\n".join(f"- {line}" if self.markdown else f"  {line}" for line in lines)
        self._parts.append(f"{title}\n\n{text}" if title and self.markdown else (f"{title}\n{text}" if title else text))

    def text(self) -> str:
        return "\n\n".join(self._parts) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Provenance and results files


def _command_output(*command: str) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str:
    """Short sha, plus '-dirty' when tracked files differ from it (as `git describe --dirty`). A copy of the tree
    shipped to a GPU machine names its commit in FLASH_ATTENTION_COMMIT, which wins over git: such a copy may carry
    no .git, or a stale one (seen on the device machine: its .git named the last landed commit, not the tree's)."""
    given = os.environ.get("FLASH_ATTENTION_COMMIT")
    if given:
        return f"{given} (from FLASH_ATTENTION_COMMIT: a copy of the tree)"
    sha = _command_output("git", "rev-parse", "--short", "HEAD")
    if sha is None:
        return "unknown (no git commit)"
    dirty = _command_output("git", "status", "--porcelain", "--untracked-files=no")
    return sha + ("-dirty" if dirty else "")


def provenance(device: torch.device) -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        gpu = f"{gpu} (sm {capability})"
        driver = _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        driver = driver.splitlines()[0] if driver else "unknown"
    else:
        gpu, driver = f"none (CPU: {platform.processor() or platform.machine()})", "n/a"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": gpu,
        "driver": driver,
        "cuda": torch.version.cuda or "n/a (CPU build of torch)",
        "torch": torch.__version__,
        "triton": triton_version,
        "cudnn": cudnn_version_text(cudnn) if cudnn else "n/a",
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(["python", *sys.argv]),
    }


def cudnn_version_text(version: int) -> str:
    """torch.backends.cudnn.version()'s integer as major.minor.patch: cuDNN 9 encodes 9.19.0 as 91900 (major x 10000),
    cuDNN 8 encoded 8.9.2 as 8902 (major x 1000)."""
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def strict_json(value):
    """`value` with every non-finite float as None, for json.dumps(..., allow_nan=False): JSON has no NaN or Infinity
    (Python's json writes them, and strict parsers refuse the file)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def prepare_smoke_environment(argv: list[str]) -> None:
    """A --smoke run on a machine without a GPU runs the Triton kernel under its interpreter: set TRITON_INTERPRET=1
    (unless the caller set it) before anything imports triton, which picks the interpreter at decoration time."""
    if "--smoke" in argv and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def provenance_lines(info: dict[str, str]) -> list[str]:
    return [f"{key}: {value}" for key, value in info.items()]


@dataclass
class Report:
    """Everything a command produced: what to print and what --output writes."""

    title: str
    stem: str
    info: dict[str, str]
    records: list[Record]
    body: Callable  # (Document) -> None: the command's tables and notes
    plot: Callable  # (matplotlib Figure, records) -> None

    def document(self, markdown: bool) -> str:
        document = Document(markdown)
        document.heading(self.title, 1)
        document.lines(provenance_lines(self.info))
        self.body(document)
        return document.text()

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{self.stem}.{ext}" for ext in ("md", "json", "csv", "png")]
        markdown_path, json_path, csv_path, png_path = paths
        markdown_path.write_text(self.document(markdown=True), encoding="utf-8")
        rows = [record.flat() for record in self.records]
        document = {"title": self.title, "provenance": self.info, "records": rows}
        json_path.write_text(json.dumps(strict_json(document), indent=1, allow_nan=False, default=_json_fallback),
                             encoding="utf-8")
        csv_path.write_text(self._csv(rows), encoding="utf-8")
        self._png(png_path)
        return paths

    def _csv(self, rows: list[dict]) -> str:
        buffer = io.StringIO()
        for line in provenance_lines(self.info):  # read back with pandas.read_csv(path, comment="#")
            buffer.write(f"# {line}\n")
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def _png(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot

        figure = pyplot.figure(figsize=(11, 7.5))
        self.plot(figure, self.records)
        details = " | ".join(f"{k}: {v}" for k, v in self.info.items() if k != "command")
        header = f"{self.title}\n" + textwrap.fill(details, width=170)  # one long line would be clipped
        figure.suptitle(header, fontsize=8)
        figure.tight_layout(rect=(0, 0, 1, 0.9))
        metadata = {"Title": self.title, "Description": "\n".join(provenance_lines(self.info))}
        figure.savefig(path, dpi=120, metadata=metadata)
        pyplot.close(figure)


# ----------------------------------------------------------------------------------------------------------------
# Parts of the grids with their own sweep and tables (decode.py, varlen.py): a row of results per (shape, method).


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """'32/8,64/8,16' -> ((32, 8), (64, 8), (16, 16)): query/kv head pairs."""
    pairs = []
    for part in text.split(","):
        query_heads, _, kv_heads = part.partition("/")
        pairs.append((int(query_heads), int(kv_heads or query_heads)))
    return tuple(pairs)


def check_and_time(methods: dict, inputs, base_row: dict, causal: bool, reference_error: Callable, args,
                   device: torch.device) -> tuple[list[dict], dict[str, dict], dict[str, float]]:
    """One shape of such a grid: each method `(run, unavailable)` called once (its warm-up: compiles and tunes) and
    checked by `reference_error(inputs, output, causal) -> (error, tolerance)`, then every method that ran timed
    together (time_calls), and its host time where args.host. Returns the rows (base_row plus method, status, note,
    max_error, tolerance), the timings and the host times by method. One method's failure stays its own."""
    rows, calls = [], {}
    for name, (run, unavailable) in methods.items():
        row = dict(base_row, method=name, status="ok", note="")
        rows.append(row)
        reason = unavailable(inputs)
        if reason is not None:
            row.update(status="unavailable", note=reason)
            continue
        try:
            output = run(inputs, causal)
            error, tolerance = reference_error(inputs, output, causal)
            row.update(max_error=error, tolerance=tolerance, status="ok" if error <= tolerance else "wrong")
            calls[name] = lambda run=run: run(inputs, causal)
        except Exception as failure:
            row.update(status="oom" if isinstance(failure, torch.OutOfMemoryError) else "error",
                       note=_first_line(failure))
    timings = time_calls(calls, device, args.warmup_ms, args.rep_ms) if calls else {}
    host = host_times(calls, device) if calls and getattr(args, "host", False) else {}
    return rows, timings, host


def row_cell(row: dict | None, key: str, fmt: Callable) -> str:
    """A row's value formatted, ✗ appended if its answer was wrong; its status where it has no value; "—" if none."""
    if row is None:
        return "—"
    if row["status"] not in ("ok", "wrong") or key not in row:
        return row["status"]
    return fmt(row[key]) + (WRONG if row["status"] == "wrong" else "")


def write_rows(folder: Path, stem: str, text: str, info: dict, rows: list[dict]) -> None:
    """The report as markdown, and its rows as JSON (with the provenance) and CSV (provenance as comments)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(text, encoding="utf-8")
    document = {"provenance": info, "records": rows}
    (folder / f"{stem}.json").write_text(json.dumps(strict_json(document), indent=1, allow_nan=False,
                                                    default=_json_fallback), encoding="utf-8")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [f"# {line}" for line in provenance_lines(info)] + [",".join(columns)]
    lines += [",".join(str(row.get(column, "")) for column in columns) for row in rows]
    (folder / f"{stem}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _json_fallback(value):
    """JSON for values json cannot write (numpy scalars, paths): their text."""
    return str(value)


def plot_by_head_dim(figure, records: list[Record], value_key: str, ylabel: str, log_y: bool = False) -> None:
    """One panel per (mask, head_dim), one line per method: value against num_tokens. Every requested method is in
    each panel's legend: one with no value there is listed with its status (unavailable, error, oom), not dropped."""
    panels = sorted({(r.shape.causal, r.shape.head_dim) for r in records})
    methods = list(dict.fromkeys(r.method for r in records))
    columns = max(1, len({head_dim for _, head_dim in panels}))
    rows = max(1, math.ceil(len(panels) / columns))
    for index, (causal, head_dim) in enumerate(panels, start=1):
        axes = figure.add_subplot(rows, columns, index)
        for method in methods:
            points = sorted((r.shape.tokens, r.values[value_key]) for r in records
                            if r.method == method and (r.shape.causal, r.shape.head_dim) == (causal, head_dim)
                            and r.measured and r.values.get(value_key) is not None)
            if points:
                axes.plot(*zip(*points), marker="o", label=method)
            else:
                statuses = sorted({r.status for r in records if r.method == method
                                   and (r.shape.causal, r.shape.head_dim) == (causal, head_dim)})
                axes.plot([], [], linestyle="none", marker="x", color="gray",
                          label=f"{method}: {', '.join(statuses) or 'no value'}")
        axes.set_xscale("log", base=2)
        tokens = sorted({r.shape.tokens for r in records})
        axes.set_xticks(tokens, [str(n) for n in tokens])
        axes.minorticks_off()
        has_values = any(len(line.get_xdata()) for line in axes.lines)
        if log_y and has_values:
            axes.set_yscale("log")
        axes.set_title(f"head_dim {head_dim}, {'causal' if causal else 'no mask'}", fontsize=9)
        axes.set_xlabel("num_tokens")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        if not has_values:
            axes.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=axes.transAxes)


# ----------------------------------------------------------------------------------------------------------------
# Entry point shared by both commands


def main(command: str, description: str, measure: Callable, make_report: Callable, argv=None) -> int:
    args = parse_args(command, description, argv)
    device = pick_device(args)
    try:
        import flash_attention  # noqa: F401
    except ImportError as error:
        print(f"error: cannot import flash_attention ({error}); run `pip install -e .` in {REPO_ROOT} "
              f"or use `pixi run {command}`", file=sys.stderr)
        return 2
    grid_name, grid = grid_from_args(args)
    shapes = sweep_shapes(grid, masks_from_args(args), args.dtype)
    methods, method_notes = build_methods(args.methods)
    args.device = device
    if args.smoke and device.type == "cuda" and args.warmup_ms is not None:  # tiny shapes need no long timing
        args.warmup_ms, args.rep_ms = min(args.warmup_ms, 5.0), min(args.rep_ms, 20.0)
    records = run_sweep(shapes, methods, device, lambda *cell: measure(args, *cell))
    report = make_report(args, grid_name, provenance(device), records, [m.name for m in methods], method_notes)
    sys.stdout.write(report.document(markdown=args.markdown))
    if args.output is not None:
        for path in report.write(args.output):
            print(f"wrote {path}", file=sys.stderr)
    return 0

