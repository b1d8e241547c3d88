#!/usr/bin/env python3
"""A/B the CUDA forward kernels of this tree against another tree's, in one process on one GPU.

    git worktree add /tmp/base <commit>
    python scripts/ab_kernels.py --baseline /tmp/base --grids paper,seed --dtype fp16 --output ab.md
    python scripts/ab_kernels.py --baseline /tmp/base --grids paper --head-dims 256 --dtype bf16

Builds the kernels that the grids' calls run (the registry's choice on this GPU) twice: from this tree (the loader's
cache) and from the baseline tree's kernels/cuda/csrc (a cache folder of its own). Both are loaded into this tree's
binding, the baseline's under handles past the registry's, which the binding allows because a kernel entry carries
its own FwdParams size (checked at load): so this compares kernel code, with one binding, one process, one GPU. On
every shape of the grids (both masks) it checks that the two give the same bits, then times them interleaved: rounds
of back-to-back calls between CUDA events, A B then B A, the median per-call time of each over the rounds.
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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from flash_attention.cuda import _loader, _registry  # noqa: E402
from harness.grids import GRIDS  # noqa: E402  (the benchmark's grids: benchmarks/harness)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def shapes_of(grid_names: list[str], dtype: str, head_dims: tuple[int, ...] | None = None) -> list:
    shapes = []
    for name in grid_names:
        axes = dataclasses.replace(GRIDS[name].axes, masks=(False, True))
        if head_dims is not None:
            axes = dataclasses.replace(axes, head_dims=head_dims)
        shapes += axes.shapes(dtype)
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
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start.record()
            for _ in range(reps):
                calls[name]()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / reps)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other tree's root")
    parser.add_argument("--grids", default="paper,seed", help="benchmark grids, comma-separated (default paper,seed)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--head-dims", default=None,
                        help="comma-separated head dims instead of the grids' own, e.g. 256 (heads = hidden // head_dim)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    device = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    dtype = DTYPES[args.dtype]
    head_dims = None if args.head_dims is None else tuple(int(d) for d in args.head_dims.split(","))
    shapes = shapes_of(args.grids.split(","), args.dtype, head_dims)
    kernels = sorted({_registry.forward_kernel((major, minor), s.head_dim, dtype, s.causal) for s in shapes},
                     key=lambda kernel: kernel.handle)
    started = time.perf_counter()
    _loader.load(device, kernels=[kernel.stem for kernel in kernels])
    offset = len(_registry.KERNELS)  # the baseline's handles: past every registry handle
    with tempfile.TemporaryDirectory() as tmp:
        for kernel, library in build_baseline(args.baseline / "kernels" / "cuda" / "csrc", kernels, Path(tmp),
                                              arch).items():
            torch.ops.flash_attention.cuda_load_kernel(str(library), offset + kernel.handle)
    print(f"built {len(kernels)} kernels twice in {time.perf_counter() - started:.0f} s", flush=True)

    lines = [f"A/B of the CUDA forward kernels on {torch.cuda.get_device_name()} ({args.dtype}, {args.rounds} "
             f"interleaved rounds; baseline {args.baseline})", "",
             "| D | B | H | N | mask | kernel | this tree ms | baseline ms | baseline / this | same bits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in shapes:
        generator = torch.Generator(device=device).manual_seed(shape.seqlen_q + shape.head_dim)
        q, k, v = (torch.randn(shape.batch, heads, shape.seqlen_q, shape.head_dim, device=device, dtype=dtype,
                               generator=generator)
                   for heads in (shape.heads_q, shape.heads_kv, shape.heads_kv))
        kernel = _registry.forward_kernel((major, minor), shape.head_dim, dtype, shape.causal)
        scale = shape.head_dim ** -0.5

        def run(handle):
            return lambda: torch.ops.flash_attention.cuda_fwd(q, k, v, shape.causal, scale, handle, 0, True)

        calls = {"this": run(kernel.handle), "baseline": run(offset + kernel.handle)}
        same = all(torch.equal(a, b) for a, b in zip(calls["this"](), calls["baseline"]()))
        ms = interleaved_ms(calls, args.rounds)
        line = (f"| {shape.head_dim} | {shape.batch} | {shape.heads_q} | {shape.seqlen_q} | "
                f"{'causal' if shape.causal else 'none'} | {kernel.stem} | {ms['this']:.3f} | {ms['baseline']:.3f} | "
                f"{ms['baseline'] / ms['this']:.3f} | {'yes' if same else 'NO'} |")
        lines.append(line)
        print(line, flush=True)
    if args.output is not None:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
