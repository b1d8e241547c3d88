#!/usr/bin/env python3
"""A/B the CUDA kernels of this tree against another tree's, in one process on one GPU.

    git worktree add /tmp/base <commit>
    python scripts/ab_kernels.py --baseline /tmp/base --grids paper,seed --dtype fp16 --output ab.md
    python scripts/ab_kernels.py --baseline /tmp/base --grids paper --head-dims 256 --dtype bf16
    python scripts/ab_kernels.py --baseline /tmp/base --grids decode --dtype bf16
    python scripts/ab_kernels.py --baseline /tmp/base --grids varlen --dtype bf16

Builds the kernels that the grids' calls run (the registry's choice on this GPU) twice: from this tree (the loader's
cache) and from the baseline tree's kernels/cuda/csrc (a cache folder of its own). Both are loaded into this tree's
binding, the baseline's under handles past the registry's, which the binding allows because a kernel entry carries
its own params size (checked at load): so this compares kernel code, with one binding, one process, one GPU. On
every shape of the grids it checks that the two give the same bits, then times them interleaved, A B then B A, the
median over the rounds: prefill grids (seed, paper; both masks) as rounds of back-to-back calls between CUDA events;
the varlen grid (its packed mixes, both masks) as the prefill grids; the decode grid (contiguous and paged caches,
calls of a few to a few hundred µs) as one CUDA-graph replay per round with L2 flushed before it, as the benchmark
flushes it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from flash_attention.cuda import _loader, _registry  # noqa: E402
from harness.grids import GRIDS  # noqa: E402  (the benchmark's grids: benchmarks/harness)
from harness.timing import L2Flush, interleaved_order  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def shapes_of(grid_names: list[str], dtype: str, head_dims: tuple[int, ...] | None = None,
              both_masks: bool = True) -> list:
    """The grids' shapes, with and without a mask where both_masks, at other head dims where head_dims; a grid whose
    shapes are fixed (the model grid: no mask or head_dim axis) keeps its shapes, those of head_dims only."""
    shapes = []
    for name in grid_names:
        axes = GRIDS[name].axes
        fields = {field.name for field in dataclasses.fields(axes)}
        if both_masks and "masks" in fields:
            axes = dataclasses.replace(axes, masks=(False, True))
        if head_dims is not None and "head_dims" in fields:
            axes = dataclasses.replace(axes, head_dims=head_dims)
        shapes += [shape for shape in axes.shapes(dtype) if head_dims is None or shape.head_dim in head_dims]
    return shapes


def build_baseline(csrc: Path, kernels: list, directory: Path, arch: str) -> dict:
    """{kernel: library path}, built from the baseline sources in parallel."""

    def build(kernel):
        where = directory / kernel.stem
        _loader._build(arch, kernel.stem, where, verbose=False, csrc=csrc)
        # torch's JIT versioner suffixes the name (_v1) when this process already built one of that name
        return kernel, next(where.glob(f"{_loader.library_name(kernel.stem)}*.so"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(kernels), 16))) as pool:
        return dict(pool.map(build, kernels))


def interleaved_ms(calls: dict, rounds: int, target_ms: float = 20.0) -> dict:
    """Median ms per call of each callable over `rounds` rounds, the order alternating each round."""
    for call in calls.values():
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    next(iter(calls.values()))()
    end.record()
    torch.cuda.synchronize()
    reps = max(1, int(target_ms / max(start.elapsed_time(end), 1e-3)))
    times = {name: [] for name in calls}
    for order in interleaved_order(list(calls), rounds):
        for name in order:
            start.record()
            for _ in range(reps):
                calls[name]()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / reps)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclasses.dataclass
class Case:
    """One shape of the A/B: its table cells, the kernel it runs, and `prepare`, which makes the shape's inputs (only
    when its turn comes, so that one shape's tensors are alive at a time) and returns the call of a given handle."""
    cells: tuple
    kernel: _registry.Kernel
    prepare: Callable[[], Callable[[int], Callable[[], tuple]]]


def prefill_cases(grid_names, dtype_name, head_dims, capability, device) -> list[Case]:
    dtype = DTYPES[dtype_name]
    cases = []
    for shape in shapes_of(grid_names, dtype_name, head_dims):
        def prepare(shape=shape):
            generator = torch.Generator(device=device).manual_seed(shape.seqlen_q + shape.head_dim)
            q, k, v = (torch.randn(shape.batch, heads, rows, shape.head_dim, device=device, dtype=dtype,
                                   generator=generator)
                       for heads, rows in ((shape.heads_q, shape.seqlen_q), (shape.heads_kv, shape.seqlen_k),
                                           (shape.heads_kv, shape.seqlen_k)))
            return lambda handle: lambda: torch.ops.flash_attention.cuda_fwd(
                q, k, v, shape.causal, shape.head_dim ** -0.5, handle, 0, True)

        kernel = _registry.forward_kernel(capability, shape.head_dim, dtype, shape.causal)
        cells = (shape.head_dim, shape.batch, f"{shape.heads_q}/{shape.heads_kv}", shape.seqlen_q, shape.seqlen_k,
                 "causal" if shape.causal else "none")
        cases.append(Case(cells, kernel, prepare))
    return cases


def varlen_cases(dtype_name, head_dims, device) -> list[Case]:
    from harness.varlen import make_inputs

    cases = []
    for shape in shapes_of(["varlen"], dtype_name, head_dims):
        def prepare(shape=shape):
            x = make_inputs(shape, device)
            return lambda handle: lambda: torch.ops.flash_attention.cuda_varlen_fwd(
                x.query, x.key, x.value, x.cu_seqlens, x.cu_seqlens, x.max_seqlen, x.max_seqlen, x.causal,
                shape.head_dim ** -0.5, handle)

        kernel = _registry.varlen_kernel(shape.head_dim, DTYPES[dtype_name], shape.causal)
        cells = (shape.head_dim, shape.mix, f"{shape.heads_q}/{shape.heads_kv}", shape.tokens,
                 "causal" if shape.causal else "none")
        cases.append(Case(cells, kernel, prepare))
    return cases


def decode_cases(dtype_name, head_dims, device) -> list[Case]:
    from flash_attention.cuda import decode_launch
    from harness.kvcache import make_inputs

    cases = []
    for shape in shapes_of(["decode"], dtype_name, head_dims, both_masks=False):
        def prepare(shape=shape):
            x = make_inputs(shape, device)
            launch = decode_launch(x.query, x.key_cache, x.block_table)
            return lambda handle: lambda: torch.ops.flash_attention.cuda_decode(
                x.query, x.key_cache, x.value_cache, x.cache_seqlens, x.block_table, 0, x.causal,
                shape.head_dim ** -0.5, launch.num_splits, launch.rows, launch.warps, handle)

        kernel = _registry.decode_kernel(shape.head_dim, DTYPES[dtype_name])
        cells = (shape.head_dim, shape.batch, f"{shape.heads_q}/{shape.heads_kv}", shape.seqlen_q, shape.keys,
                 "paged" if shape.paged else "contiguous")
        cases.append(Case(cells, kernel, prepare))
    return cases


def graph_replay_ms(calls: dict, rounds: int) -> dict:
    """Median ms of one CUDA-graph replay of each callable over `rounds` rounds, L2 flushed before each replay, the
    order alternating each round."""
    flush = L2Flush()
    graphs = {}
    for name, call in calls.items():
        call()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graphs[name] = graph
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = {name: [] for name in graphs}
    for order in interleaved_order(list(graphs), rounds):
        for name in order:
            flush()
            start.record()
            graphs[name].replay()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other tree's root")
    parser.add_argument("--grids", default="paper,seed",
                        help="benchmark grids, comma-separated: seed and paper, or decode or varlen alone (default "
                             "paper,seed)")
    parser.add_argument("--head-dims", default=None,
                        help="comma-separated head dims instead of the grids' own, e.g. 256 (heads = hidden // head_dim)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds (default: 10 for prefill grids, 15 for decode)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    grid_names = args.grids.split(",")
    decode, varlen = "decode" in grid_names, "varlen" in grid_names
    if (decode or varlen) and len(grid_names) > 1:
        parser.error("--grids decode and --grids varlen run alone (their tables have other columns)")
    head_dims = None if args.head_dims is None else tuple(int(d) for d in args.head_dims.split(","))
    rounds = args.rounds or (15 if decode else 10)

    device = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    if decode:
        cases = decode_cases(args.dtype, head_dims, device)
    elif varlen:
        cases = varlen_cases(args.dtype, head_dims, device)
    else:
        cases = prefill_cases(grid_names, args.dtype, head_dims, (major, minor), device)
    kernels = sorted({case.kernel for case in cases}, key=lambda kernel: kernel.handle)
    started = time.perf_counter()
    _loader.load(device, kernels=[kernel.stem for kernel in kernels])
    offset = len(_registry.KERNELS)  # the baseline's handles: past every registry handle
    load = (torch.ops.flash_attention.cuda_load_decode_kernel if decode
            else torch.ops.flash_attention.cuda_load_kernel)
    with tempfile.TemporaryDirectory() as tmp:
        for kernel, library in build_baseline(args.baseline / "kernels" / "cuda" / "csrc", kernels, Path(tmp),
                                              arch).items():
            load(str(library), offset + kernel.handle)
    print(f"built {len(kernels)} kernels twice in {time.perf_counter() - started:.0f} s", flush=True)

    columns = ("D | B | Hq/Hkv | Nq | keys | cache" if decode else
               "D | mix | Hq/Hkv | tokens | mask" if varlen else "D | B | Hq/Hkv | Nq | Nk | mask")
    how = ("graph replays, L2 flushed" if decode else "rounds of back-to-back calls")
    lines = [f"A/B of the CUDA kernels on {torch.cuda.get_device_name()} ({args.dtype}, {rounds} interleaved "
             f"rounds of {how}; baseline {args.baseline})", "",
             f"| {columns} | kernel | this tree ms | baseline ms | baseline / this | same bits |",
             "|" + "---|" * (len(columns.split("|")) + 5)]
    print("\n".join(lines), flush=True)
    for case in cases:
        call = case.prepare()
        calls = {"this": call(case.kernel.handle), "baseline": call(offset + case.kernel.handle)}
        same = all(torch.equal(a, b) for a, b in zip(calls["this"](), calls["baseline"]()))
        ms = graph_replay_ms(calls, rounds) if decode else interleaved_ms(calls, rounds)
        line = (f"| {' | '.join(str(cell) for cell in case.cells)} | {case.kernel.stem} | {ms['this']:.4f} | "
                f"{ms['baseline']:.4f} | {ms['baseline'] / ms['this']:.3f} | {'yes' if same else 'NO'} |")
        lines.append(line)
        print(line, flush=True)
        del call, calls
        torch.cuda.empty_cache()
    if args.output is not None:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
