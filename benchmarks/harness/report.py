"""From a run's DataFrame to what a reader gets: the tables (one row per shape, one column per method, then the ratio
columns the grid asks for), their footnotes and notes, and the results files (.md, .json, .csv; the .png is
plot.py's)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from .methods import OURS, PEERS
from .plot import plot_run
from .sweep import MEASURED

WRONG = "✗"
NO_VALUE = "—"


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio_cells(ours: pd.Series, reference, wrong) -> list[str]:
    """ours / reference per row, ✗ where either answer was wrong, — where either has no number."""
    cells = []
    for value, against, marked in zip(ours, reference, wrong):
        if not (value > 0 and against > 0):  # NaN: not measured
            cells.append(NO_VALUE)
            continue
        ratio = value / against
        cells.append((f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}") + (WRONG if marked else ""))
    return cells


class Footnotes:
    """Numbers the reasons behind cells without a number, so that cells stay short and the reason is in the table."""

    def __init__(self):
        self._numbers: dict[str, int] = {}

    def cell(self, record: pd.Series) -> str:
        number = self._numbers.setdefault(f"{record['method']}: {record['note']}", len(self._numbers) + 1)
        return f"{'OOM' if record['status'] == 'oom' else record['status']} [{number}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {text}" for text, number in self._numbers.items()]


class Section:
    """The records of one table section (a whole run, or one mask of the seed and paper grids) as the parts of its
    tables: the shape columns, one text column per method, ratio columns; and its notes."""

    def __init__(self, run: "Run", frame: pd.DataFrame):
        self.run, self.frame = run, frame
        self.index = frame.index.unique()
        self.shapes = [run.shapes[position] for position in self.index]
        self.methods = run.methods
        self.ours = [m for m in self.methods if m in OURS]
        self.peers = [m for m in self.methods if m in PEERS]
        self.footnotes = Footnotes()
        shown = [column.name for column in run.grid.columns if column.shown]
        self._shape_cells = frame[~frame.index.duplicated()][shown].astype(str)

    def cells(self, text: Callable[[pd.Series], str]) -> pd.DataFrame:
        """Per method: text(record), ✗ appended if its answer was wrong; where it has no number, its status and a
        footnote that says why."""
        columns = {}
        for method in self.methods:
            records = self.frame[self.frame["method"] == method]
            columns[method] = [
                text(record) + (WRONG if record["status"] == "wrong" else "") if record["status"] in MEASURED
                else self.footnotes.cell(record)
                for _, record in records.iterrows()]
        return pd.DataFrame(columns, index=self.index)

    def _by_method(self, values: pd.Series) -> pd.DataFrame:
        """A value per record as a value per shape (rows) and method (columns)."""
        return values.to_frame("value").assign(method=self.frame["method"]) \
            .pivot(columns="method", values="value").reindex(columns=self.methods)

    def numbers(self, key: str) -> pd.DataFrame:
        """key per shape and method, NaN where the method has no measurement."""
        return self._by_method(pd.to_numeric(self.frame[key], errors="coerce")
                               .where(self.frame["status"].isin(MEASURED)))

    def wrong(self) -> pd.DataFrame:
        return self._by_method(self.frame["status"] == "wrong")

    def table(self, *parts: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([self._shape_cells, *parts], axis=1)

    def comparisons(self, key: str) -> pd.DataFrame:
        columns = {}
        for comparison in self.run.grid.comparisons:
            columns.update(comparison.columns(self, key))
        return pd.DataFrame(columns, index=self.index)

    def notes(self) -> list[str]:
        wrong_results = [
            f"{WRONG} {record['method']}, {self.run.shapes[position].label}: max abs error {record['max_error']:.3g} > "
            f"tolerance {record['tolerance']:.3g} ({self.run.grid.call.CHECKED}, against float32)"
            for position, record in self.frame[self.frame["status"] == "wrong"].iterrows()]
        explained = [line for comparison in self.run.grid.comparisons for line in comparison.notes(self)]
        return self.footnotes.lines() + wrong_results + explained


# ------------------------------------------------------------------------------------------------------------------
# Comparisons: the ratio columns a grid's rate table carries, each ours against something, > 1 where ours is faster.


class Comparison:
    description: str

    def columns(self, section: Section, key: str) -> dict[str, list[str]]:
        """Header -> the text cells of one column, per row of the section."""
        raise NotImplementedError

    def notes(self, section: Section) -> list[str]:
        return []


class EachPeer(Comparison):
    description = "each peer"

    def columns(self, section: Section, key: str) -> dict[str, list[str]]:
        rates, wrong_ = section.numbers(key), section.wrong()
        return {f"{ours}/{peer}": ratio_cells(rates[ours], rates[peer], wrong_[ours] | wrong_[peer])
                for ours in section.ours for peer in section.peers}


class BestPeer(Comparison):
    description = "the fastest right peer"

    def columns(self, section: Section, key: str) -> dict[str, list[str]]:
        if not section.peers:
            return {}
        rates, wrong_ = section.numbers(key), section.wrong()
        best = rates[section.peers].where(~wrong_[section.peers]).max(axis=1)
        return {f"{ours}/best peer": ratio_cells(rates[ours], best, wrong_[ours]) for ours in section.ours}


class AgainstCopy(Comparison):
    """Ours as a share of a device-to-device copy's TB/s, measured once per run (timing.copy_tbps): the ceiling of a
    kernel that reads its bytes once."""

    description = "a device-to-device copy (%)"

    def columns(self, section: Section, key: str) -> dict[str, list[str]]:
        ceiling = section.run.copy_tbps
        if ceiling is None:
            return {}
        rates, wrong_ = section.numbers(key), section.wrong()
        return {f"{ours} % copy": [NO_VALUE if not value > 0 else f"{100 * value / ceiling:.0f}%" + (WRONG if w else "")
                                   for value, w in zip(rates[ours], wrong_[ours])] for ours in section.ours}


@dataclass(frozen=True)
class Twin(Comparison):
    """Ours against ours on another row of the run (its twin) that does the same work another way: paged against a
    contiguous cache, a ragged mix against the dense batch of the same tokens."""

    label: str  # the columns are "<ours>/<label>"
    description: str
    find: Callable  # (shape, the run's shapes) -> the twin, or None
    explain: Callable | None = None  # (shape, twin) -> a note under the table, or None

    def _twins(self, section: Section) -> list:
        return [self.find(shape, section.run.shapes) for shape in section.shapes]

    def columns(self, section: Section, key: str) -> dict[str, list[str]]:
        run = section.run
        positions = [run.position(twin) for twin in self._twins(section)]
        whole = Section(run, run.frame)  # a twin may be in another section
        all_rates, all_wrong = whole.numbers(key), whole.wrong()
        own_rates, own_wrong = section.numbers(key), section.wrong()
        return {f"{ours}/{self.label}": ratio_cells(
            own_rates[ours], [math.nan if p is None else all_rates[ours][p] for p in positions],
            [w or (p is not None and all_wrong[ours][p]) for w, p in zip(own_wrong[ours], positions)])
            for ours in section.ours}

    def notes(self, section: Section) -> list[str]:
        if self.explain is None:
            return []
        return sorted({self.explain(shape, twin) for shape, twin in zip(section.shapes, self._twins(section))
                       if twin is not None and twin != shape})


def rate_title(rate, comparisons) -> str:
    descriptions = [comparison.description for comparison in comparisons]
    against = ", ".join(descriptions[:-1]) + (" and " if len(descriptions) > 1 else "") + descriptions[-1]
    return f"{rate.title}; ours against {against}; ratio > 1: ours is faster"


# ------------------------------------------------------------------------------------------------------------------
# The run and its document


@dataclass
class Run:
    """Everything one command invocation decided, measured and reports."""

    title: str
    stem: str  # the results files' name, e.g. runtime_paper_fp16_both
    grid: object  # grids.Grid
    shapes: list
    methods: list[str]
    method_notes: list[str]  # methods left out, and why
    device: object
    warmup_ms: float | None
    rep_ms: float | None
    host: bool
    info: dict[str, str]  # the provenance, and run-level figures (the copy ceiling)
    copy_tbps: float | None = None
    frame: pd.DataFrame | None = None

    def position(self, shape) -> int | None:
        return None if shape is None else self.shapes.index(shape)

    def sections(self) -> list[tuple[str | None, Section]]:
        if self.grid.section is None:
            return [(None, Section(self, self.frame))]
        headings = pd.Series([self.grid.section(self.shapes[p]) for p in self.frame.index], index=self.frame.index)
        return [(heading, Section(self, self.frame[headings == heading])) for heading in headings.unique()]


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

    def table(self, title: str, frame: pd.DataFrame) -> None:
        self.heading(title, 3)
        self._parts.append(frame.to_markdown(index=False, tablefmt="github" if self.markdown else "simple",
                                             stralign="right", disable_numparse=True))

    def lines(self, lines: list[str], title: str | None = None) -> None:
        if not lines:
            return
        text = "\n".join(f"- {line}" if self.markdown else f"  {line}" for line in lines)
        self._parts.append(f"{title}\n\n{text}" if title and self.markdown else (f"{title}\n{text}" if title else text))

    def text(self) -> str:
        return "\n\n".join(self._parts) + "\n"


def provenance_lines(info: dict[str, str]) -> list[str]:
    return [f"{key}: {value}" for key, value in info.items()]


def document(run: Run, command, markdown: bool) -> str:
    """The title, provenance, methods left out, each section's tables (the command's) and notes, and how the
    numbers were made."""
    doc = Document(markdown)
    doc.heading(run.title, 1)
    doc.lines(provenance_lines(run.info))
    doc.lines(run.method_notes)
    for heading, section in run.sections():
        if heading is not None:
            doc.heading(heading, 2)
        command.tables(doc, section, run)
        doc.lines(section.notes(), title="Notes:")
    doc.heading(command.how_heading, 2)
    doc.lines(command.how(run))
    return doc.text()


# ------------------------------------------------------------------------------------------------------------------
# Results files


def strict_json(value):
    """`value` with every non-finite float (and pandas' missing value) as None, for json.dumps(..., allow_nan=False):
    JSON has no NaN or Infinity (Python's json writes them, and strict parsers refuse the file)."""
    if value is pd.NA:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def _json_scalar(value):
    """JSON for what json cannot write: numpy scalars as their Python value, anything else as its text."""
    return value.item() if hasattr(value, "item") else str(value)


def write_files(run: Run, command, markdown_text: str, folder: Path) -> list[Path]:
    """<stem>.md (what --markdown prints), .json (provenance and records), .csv (records, the provenance as '#' lines:
    pandas.read_csv(path, comment="#")) and .png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{run.stem}.{ext}" for ext in ("md", "json", "csv", "png")]
    markdown_path, json_path, csv_path, png_path = paths
    markdown_path.write_text(markdown_text, encoding="utf-8")
    records = run.frame.convert_dtypes()  # counts stay integers where a row has none (reps of an unavailable method)
    document_ = {"title": run.title, "provenance": run.info, "records": records.to_dict("records")}
    json_path.write_text(json.dumps(strict_json(document_), indent=1, allow_nan=False, default=_json_scalar),
                         encoding="utf-8")
    comments = "".join(f"# {line}\n" for line in provenance_lines(run.info))
    csv_path.write_text(comments + records.to_csv(index=False, lineterminator="\n"), encoding="utf-8")
    plot_run(run, path=png_path, **command.plotted(run))
    return paths

