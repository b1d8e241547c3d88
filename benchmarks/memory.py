"""Forward-attention GPU memory: what each call allocates beyond its inputs (the naive baseline's N^2 scores against
the fused kernels' O(N)), and the absolute peak.

    python benchmarks/memory.py                             # pixi run bench-memory
    python benchmarks/memory.py --grid paper --markdown --output results/
    python benchmarks/memory.py --smoke --markdown          # CPU: the table renders, figures are n/a
"""

from __future__ import annotations

import gc
import sys

import pandas as pd
import torch

from harness.cli import Command, main
from harness.methods import DTYPES
from harness.report import format_number

MIB = 2.0**20
NOT_ON_CPU = "n/a on CPU"


def measure(options, methods, inputs, shape) -> dict[str, dict]:
    return {method.name: _measure_one(method, inputs, options.device) for method in methods}


def _measure_one(method, inputs, device) -> dict:
    if device.type != "cuda":  # PyTorch has no allocator statistics for CPU tensors
        return {"extra_mib": None, "peak_mib": None}
    # The checked call before this one was the warm-up: one-off workspaces (cuBLAS, autotuning) exist already.
    # Tensors that only a reference cycle of an earlier call still holds go now: a collection that Python happens to
    # run inside the measured call would free them there, and the call would seem to allocate less than it does.
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    allocated_before = torch.cuda.memory_allocated()
    output = method.run(inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del output
    return {"extra_mib": (peak - allocated_before) / MIB, "peak_mib": peak / MIB}


def _mib(value) -> str:
    return NOT_ON_CPU if pd.isna(value) else format_number(value)


def _inputs_mib(shape) -> float:
    elements = shape.batch * shape.head_dim * (shape.heads_q * shape.seqlen_q + 2 * shape.heads_kv * shape.seqlen_k)
    return elements * DTYPES[shape.dtype].itemsize / MIB


def tables(document, section, run) -> None:
    document.table("Allocated by the call beyond its inputs (MiB, peak)",
                   section.table(section.cells(lambda r: _mib(r["extra_mib"]))))
    inputs = pd.DataFrame({"q+k+v": [format_number(_inputs_mib(shape)) for shape in section.shapes]},
                          index=section.index)
    document.table("Absolute peak during the call (MiB), and the inputs q+k+v",
                   section.table(section.cells(lambda r: _mib(r["peak_mib"])), inputs))


def how(run) -> list[str]:
    return [
        "Inputs are allocated first and each method is called once (checked against float32 math: the warm-up, "
        "so one-off workspaces such as cuBLAS's exist before any method is measured); then gc.collect(), "
        "torch.cuda.empty_cache(), reset_peak_memory_stats(), the call, and max_memory_allocated() minus what "
        "was allocated before it.",
        "Beyond inputs = everything PyTorch's caching allocator hands out during the call: the output "
        "(B*H*N*D elements), log-sum-exp or scratch buffers, the N x N scores of the naive baseline. Not "
        "counted: memory allocated outside PyTorch's allocator (e.g. a library calling cudaMalloc itself) and "
        "the CUDA context.",
        "Absolute peak = the allocator's peak during the call, inputs and persistent workspaces included.",
        *([f"{NOT_ON_CPU}: PyTorch keeps no allocator statistics for CPU tensors; this smoke run only shows that "
           f"every method runs and is correct."] if run.device.type == "cpu" else []),
    ]


def plotted(run) -> dict:
    return {"key": "extra_mib", "label": "MiB beyond inputs", "log_y": True}


MEMORY = Command(
    name="memory", title="Forward attention memory", description=" ".join(__doc__.split("\n\n")[0].split()),
    grids=("seed", "paper"), timed=False, measure=measure, tables=tables, how_heading="What is counted", how=how,
    plotted=plotted,
)

if __name__ == "__main__":
    sys.exit(main(MEMORY))
