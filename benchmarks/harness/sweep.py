"""The sweep: per shape, fresh inputs and the float32 reference, each method's availability and one checked call,
then the command's measurement of every method that ran; and the run's records as one pandas DataFrame."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

MEASURED = ("ok", "wrong")  # the statuses of a method that ran (a wrong answer is measured, and marked)


@dataclass
class Record:
    """One (shape, method) cell. status: ok | wrong | unavailable | error | oom. `values` holds the measurement."""

    shape: object
    method: str
    status: str = "ok"
    note: str = ""
    max_error: float | None = None
    tolerance: float | None = None
    values: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status in MEASURED


def run_sweep(call, shapes: list, methods: list, device: torch.device, measure: Callable) -> list[Record]:
    """For each shape: fresh inputs (`call.make_inputs`) and the reference (`call.reference`), then per method its
    availability and one checked call (also the warm-up, so one-off compiles, autotuning and workspaces happen before
    any measurement), then measure(methods, inputs, shape) over the methods whose call ran, all at once (runtime.py
    interleaves their timed calls), returning each method's values by name."""
    records = []
    progress = Progress(len(shapes) * len(methods))
    for shape in shapes:
        inputs = call.make_inputs(shape, device)
        reference = call.reference(inputs)
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _checked_call(shape, method, inputs, reference, device) -> Record:
    record = Record(shape, method.name)
    reason = method.unavailable_reason(inputs)
    if reason is not None:
        record.status, record.note = "unavailable", reason
        return record
    try:
        with warnings.catch_warnings(record=True) as caught:  # SDPA says why a forced backend cannot run
            warnings.simplefilter("always")
            output = method.run(inputs)
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
        values = measure([method for method, _ in cell], inputs, shape)
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
        record.status, record.note = "oom", "out of GPU memory"
    else:
        record.status, record.note = "error", "; ".join([_first_line(error)] + warning_lines)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def records_frame(records: list[Record], shapes: list, columns) -> pd.DataFrame:
    """The run as a DataFrame: one row per (shape, method) in sweep order, indexed by the shape's position in
    `shapes`; the grid's shape columns, dtype, method, status, the measurement's values, the check's max error and
    tolerance, and the note that says why a method has no number."""
    positions = {shape: position for position, shape in enumerate(shapes)}
    index, rows = [], []
    for record in records:
        index.append(positions[record.shape])
        rows.append({**{column.name: column.value(record.shape) for column in columns}, "dtype": record.shape.dtype,
                     "method": record.method, "status": record.status, **record.values,
                     "max_error": record.max_error, "tolerance": record.tolerance, "note": record.note})
    value_keys = list(dict.fromkeys(key for record in records for key in record.values))
    order = [column.name for column in columns] + ["dtype", "method", "status", *value_keys, "max_error",
                                                   "tolerance", "note"]
    return pd.DataFrame(rows, index=pd.Index(index, name="shape"), columns=order)


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
