"""Forward-attention GPU memory: what each call allocates beyond its inputs (the naive baseline's N^2 scores against
the fused kernels' O(N)), and the absolute peak.

    python benchmarks/memory.py                             # pixi run bench-memory
    python benchmarks/memory.py --grid paper --markdown --output results/
    python benchmarks/memory.py --smoke --markdown          # CPU: the table renders, figures are n/a
"""

from __future__ import annotations

import gc
import sys

import torch

import harness
from harness import WRONG, Document, Footnotes, Report, format_number, shape_cells

MIB = 2.0**20
NOT_ON_CPU = "n/a on CPU"


def measure(args, methods, inputs, shape, device) -> dict[str, dict]:
    return {method.name: _measure_one(method, inputs, shape, device) for method in methods}


def _measure_one(method, inputs, shape, device) -> dict:
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
    output = method.run(*inputs, shape.causal)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del output
    return {"extra_mib": (peak - allocated_before) / MIB, "peak_mib": peak / MIB}


def _cell(record, key: str, footnotes: Footnotes) -> str:
    if not record.measured:
        return footnotes.cell(record)
    value = record.values[key]
    text = NOT_ON_CPU if value is None else format_number(value)
    return text + (WRONG if record.status == "wrong" else "")


def make_report(args, grid_name, info, records, methods, method_notes) -> Report:
    def body(document: Document) -> None:
        document.lines(method_notes)
        for rows, footnotes in harness.mask_sections(document, args, records):
            document.table(
                "Allocated by the call beyond its inputs (MiB, peak)",
                harness.SHAPE_HEADERS + methods,
                [shape_cells(shape) + [_cell(cells[m], "extra_mib", footnotes) for m in methods]
                 for shape, cells in rows.items()],
            )
            document.table(
                "Absolute peak during the call (MiB), and the inputs q+k+v",
                harness.SHAPE_HEADERS + methods + ["q+k+v"],
                [shape_cells(shape) + [_cell(cells[m], "peak_mib", footnotes) for m in methods]
                 + [format_number(_inputs_mib(shape))]
                 for shape, cells in rows.items()],
            )
        document.heading("What is counted", 2)
        document.lines([
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
               f"every method runs and is correct."] if args.device.type == "cpu" else []),
        ])

    return Report(
        title=f"Forward attention memory: {grid_name} grid, {args.dtype}",
        stem=harness.output_stem(args, grid_name),
        info=info, records=records, body=body,
        plot=lambda figure, recs: harness.plot_by_head_dim(figure, recs, "extra_mib", "MiB beyond inputs", log_y=True),
    )


def _inputs_mib(shape) -> float:
    element_size = torch.finfo(harness.DTYPES[shape.dtype]).bits // 8
    return 3 * shape.batch * shape.heads * shape.tokens * shape.head_dim * element_size / MIB


if __name__ == "__main__":
    harness.prepare_smoke_environment(sys.argv[1:])
    sys.exit(harness.main("memory", __doc__.split("\n\n")[0].replace("\n", " "), measure, make_report))
