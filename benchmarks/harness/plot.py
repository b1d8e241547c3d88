"""The .png of a run, from its DataFrame: one panel per value of the grid's panel columns, one line per method (and per
value of the grid's line columns that vary in the run), the measured figure against the grid's x column."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd

from .sweep import MEASURED

LINE_STYLES = ("-", "--", ":", "-.")


def plot_run(run, path: Path, **what) -> None:
    """The figure of `what` (draw's arguments) as a PNG, its provenance also in the file's metadata."""
    from matplotlib import pyplot

    figure = draw(run, **what)
    metadata = {"Title": run.title, "Description": "\n".join(f"{k}: {v}" for k, v in run.info.items())}
    figure.savefig(path, dpi=110, metadata=metadata)
    pyplot.close(figure)


def draw(run, key: str, label: str, log_y: bool = False, lines: dict[str, float] | None = None):
    """A matplotlib Figure of the records' `key`. Every requested method is in each panel's legend: one with no value
    there is listed with its status (unavailable, error, oom), not dropped. `lines`: horizontal reference lines by
    label (the copy ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    axes_spec, frame = run.grid.plot, run.frame
    panels = list(frame.groupby(list(axes_spec.panels), sort=False))
    columns = max(1, frame[axes_spec.panels[-1]].nunique())
    rows = max(1, math.ceil(len(panels) / columns))
    figure = pyplot.figure(figsize=(max(6.0, 5.5 * columns), 3.8 * rows + 1.2), layout="constrained")
    for index, (panel, records) in enumerate(panels, start=1):
        axes = figure.add_subplot(rows, columns, index)
        _draw_panel(axes, run, records, key, log_y, lines or {})
        axes.set_title(", ".join(f"{name}={value}" for name, value in zip(axes_spec.panels, panel)), fontsize=9)
        axes.set_ylabel(label)
    details = " | ".join(f"{k}: {v}" for k, v in run.info.items() if k != "command")
    figure.suptitle(f"{run.title}\n" + textwrap.fill(details, width=int(60 * columns + 50)), fontsize=8)
    return figure


def _draw_panel(axes, run, records: pd.DataFrame, key: str, log_y: bool, lines: dict[str, float]) -> None:
    x_column = run.grid.plot.x
    # Columns that split a method's line, named in the legend only where they vary in the run.
    splits = [column for column in run.grid.plot.lines if run.frame[column].nunique() > 1]
    categories = None
    if not pd.api.types.is_numeric_dtype(run.frame[x_column]):  # e.g. varlen mixes: evenly spaced, in sweep order
        categories = {value: position for position, value in enumerate(dict.fromkeys(run.frame[x_column]))}
    for color, method in enumerate(run.methods):
        mine = records[records["method"] == method]
        drawn = False
        groups = mine.groupby(splits, sort=False) if splits else [((), mine)]
        for style, (split, group) in enumerate(groups):
            values = pd.to_numeric(group[key], errors="coerce").where(group["status"].isin(MEASURED))
            points = pd.DataFrame({"x": group[x_column], "y": values}).dropna()
            if points.empty:
                continue
            xs = points["x"].map(categories) if categories else points["x"]
            name = " ".join([method, *(f"{column}={value}" for column, value in zip(splits, split))])
            axes.plot(xs, points["y"], marker="o", color=f"C{color}", linestyle=LINE_STYLES[style % len(LINE_STYLES)],
                      label=name)
            drawn = True
        if not drawn:
            statuses = sorted(set(mine["status"]) - set(MEASURED)) or ["no value"]
            axes.plot([], [], linestyle="none", marker="x", color="gray", label=f"{method}: {', '.join(statuses)}")
    has_values = any(len(line.get_xdata()) for line in axes.lines)
    for label, value in lines.items():
        axes.axhline(value, color="gray", linestyle=":", label=label)
    if categories:
        axes.set_xticks(list(categories.values()), list(categories), rotation=20, fontsize=7)
    else:
        ticks = sorted(set(records[x_column]))
        axes.set_xscale("log", base=2)
        axes.set_xticks(ticks, [str(tick) for tick in ticks])
        axes.minorticks_off()
    if log_y and has_values:
        axes.set_yscale("log")
    axes.set_xlabel(x_column)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    if not has_values:
        axes.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=axes.transAxes)
