"""The benchmark commands end to end on CPU: `--smoke --markdown` of every grid under TRITON_INTERPRET=1 (as CI runs
them), the results files (strict JSON, CSV that pandas reads, PNG), and the refusal to run without a GPU. Plus fast
checks of the harness's parts in process.

The subprocesses hide any GPU (CUDA_VISIBLE_DEVICES=""), so these tests take the CPU path on every machine.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from flash_attention.triton import interpreter_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/runtime.py` has it: the harness package is importable

from harness import checking, dense, grids, kvcache, plot, provenance, report, sweep, timing  # noqa: E402

SHAPE_COLUMNS = ["head_dim", "batch_size", "num_tokens"]
METHODS = ["baseline", "triton", "cuda", "sdpa_flash", "sdpa_cudnn"]
# The interpreted Triton kernel must run in smoke mode, unless this Triton's interpreter cannot run it at all (the
# backend then says why in the table, which is what it should do).
MUST_RUN_ON_CPU = ["baseline"] + (["triton"] if interpreter_problem() is None else [])
PROVENANCE_KEYS = ["gpu", "driver", "cuda", "torch", "triton", "cudnn", "date", "commit", "settings"]
SMOKE_ROWS = 4  # head_dim {32, 64} x num_tokens {16, 48}
WRONG = "✗"

# Every grid's smoke run: the command line after `--smoke --markdown`, and the stem of the files it writes.
SMOKE_RUNS = {
    "runtime": (("runtime.py", "--mask", "both"), "runtime_smoke_fp16_both"),
    "memory": (("memory.py", "--mask", "both"), "memory_smoke_fp16_both"),
    "decode": (("runtime.py", "--grid", "decode", "--host"), "runtime_smoke-decode_bf16"),
    "varlen": (("runtime.py", "--grid", "varlen", "--mask", "both"), "runtime_smoke-varlen_bf16_both"),
    "model": (("runtime.py", "--grid", "model"), "runtime_smoke-model_bf16"),
}


def _load_script(name: str):
    """A command script by path (benchmarks/ is a folder of scripts around the harness package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runtime = _load_script("runtime")


def run_command(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) of every pipe table in `text`."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            tables.append((block[0], block[2:]))  # block[1] is the |---| separator
            block = []
    return tables


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """smoke(name) -> (completed process, stem of its files): each grid's smoke run once, on first use."""
    done = {}

    def run(name: str):
        if name not in done:
            (script, *args), stem = SMOKE_RUNS[name]
            output = tmp_path_factory.mktemp(name)
            done[name] = run_command(script, "--smoke", "--markdown", *args, "--output", str(output)), output / stem
        return done[name]

    return run


@pytest.mark.parametrize("name", list(SMOKE_RUNS))
def test_every_grid_smoke_writes_its_results_files(smoke, name):
    """Markdown as printed, with the provenance; strict JSON (no NaN or Infinity) and CSV (provenance as '#' lines)
    with one record per (shape, method); a PNG with the provenance in its metadata."""
    result, stem = smoke(name)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    markdown = stem.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown == result.stdout
    for key in PROVENANCE_KEYS:
        assert f"- {key}: " in markdown
    assert "- settings: " in markdown and "TRITON_INTERPRET=1" in markdown

    written = strict_json(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(PROVENANCE_KEYS) <= set(written["provenance"])
    records = written["records"]
    per_method = Counter(record["method"] for record in records)
    assert len(set(per_method.values())) == 1, per_method  # one record per (shape, method)

    lines = stem.with_suffix(".csv").read_text(encoding="utf-8").splitlines()
    assert set(PROVENANCE_KEYS) <= {line[2:].split(":")[0] for line in lines if line.startswith("# ")}
    frame = pd.read_csv(stem.with_suffix(".csv"), comment="#")
    assert len(frame) == len(records) and {"method", "status", "max_error", "tolerance", "note"} <= set(frame)

    png = stem.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        assert "commit:" in image.text["Description"]


@pytest.mark.parametrize("command", ["runtime", "memory"])
def test_smoke_tables_have_every_method_and_correct_results(smoke, command):
    result, _ = smoke(command)
    tables = markdown_tables(result.stdout)
    # runtime: ms, TFLOPS and IQR tables per mask; memory: beyond-inputs and absolute tables per mask.
    assert len(tables) == (6 if command == "runtime" else 4), result.stdout
    for header, rows in tables:
        assert header[:3] == SHAPE_COLUMNS
        assert all(method in header for method in METHODS), header
        assert len(rows) == SMOKE_ROWS
        for method in MUST_RUN_ON_CPU:
            column = header.index(method)
            for row in rows:
                cell = row[column]
                assert WRONG not in cell, f"{method} gave a wrong result: {row}"
                assert cell[0].isdigit() or cell == "n/a on CPU", f"{method} did not run: {row}\n{result.stdout}"
    if command == "runtime":
        tflops_header = tables[1][0]
        assert "triton/sdpa_flash" in tflops_header and "cuda/sdpa_cudnn" in tflops_header
    else:
        assert "n/a on CPU" in result.stdout


def test_decode_grid_smoke_times_every_shape_contiguous_and_paged(smoke):
    """`runtime.py --grid decode --smoke --host`: every shape's triton cell is timed (kernel and host) and correct,
    contiguous and paged, and paged rows are read against their contiguous twin."""
    result, stem = smoke("decode")
    assert "### Median runtime (µs)" in result.stdout and "triton/contiguous" in result.stdout
    assert "### Host time per call (µs), back-to-back loop" in result.stdout
    records = strict_json(stem.with_suffix(".json").read_text())["records"]
    if "triton" in MUST_RUN_ON_CPU:
        triton_rows = [r for r in records if r["method"] == "triton"]
        assert triton_rows and all(r["status"] == "ok" and r["median_ms"] > 0 and r["tbps"] > 0 and r["host_us"] > 0
                                   for r in triton_rows), triton_rows
        assert {r["cache"] for r in triton_rows} == {"contiguous", "paged"}


def test_varlen_grid_smoke_reads_ragged_mixes_against_a_dense_one(smoke):
    result, stem = smoke("varlen")
    assert "uniform-5-40 is read against equal-32" in result.stdout and "triton/dense" in result.stdout
    if "triton" in MUST_RUN_ON_CPU:
        triton_rows = [r for r in strict_json(stem.with_suffix(".json").read_text())["records"]
                       if r["method"] == "triton"]
        assert len(triton_rows) == 6 and all(r["status"] == "ok" and r["median_ms"] > 0 for r in triton_rows)


def test_model_grid_smoke_runs_gqa_and_chunked_prefill(smoke):
    """`runtime.py --grid model --smoke`: GQA and MQA heads, chunked prefill (Nq < Nk, bottom-right causal) and a
    no-mask row, our kernels and SDPA correct on each, and the ratios of ours to each peer."""
    result, stem = smoke("model")
    header, rows = markdown_tables(result.stdout)[1]
    assert header[:7] == ["model", "Hq/Hkv", "D", "B", "Nq", "Nk", "mask"]
    assert "baseline" not in header and "triton/sdpa_flash" in header and "cuda/sdpa_cudnn" in header
    assert any(int(row[4]) < int(row[5]) for row in rows) and {row[6] for row in rows} == {"causal", "none"}
    records = strict_json(stem.with_suffix(".json").read_text())["records"]
    for method in ["sdpa_flash"] + [m for m in MUST_RUN_ON_CPU if m == "triton"]:
        mine = [r for r in records if r["method"] == method]
        assert len(mine) == len(rows) and all(r["status"] == "ok" and r["tflops"] > 0 for r in mine), mine


def test_without_gpu_and_without_smoke_exits_2_with_a_clear_message():
    result = run_command("runtime.py", "--markdown", timeout=60)
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "--smoke" in result.stderr
    assert result.stdout == ""


def test_host_time_table_of_the_runtime_command(tmp_path):
    """`--host` adds a host-time table (µs per call of a back-to-back loop) with a number for every method that ran."""
    result = run_command("runtime.py", "--smoke", "--markdown", "--host", "--methods", "baseline,triton",
                         "--head-dims", "32", "--tokens", "16", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    host_section = result.stdout.split("### Host time per call (µs), back-to-back loop", 1)[1]
    headers, rows = markdown_tables(host_section)[0]
    for method in MUST_RUN_ON_CPU:
        assert float(rows[0][headers.index(method)]) > 0
    records = json.loads((tmp_path / "runtime_smoke-custom_fp16.json").read_text())["records"]
    assert all(r["host_us"] > 0 for r in records if r["method"] in MUST_RUN_ON_CPU)


def test_smoke_runs_set_the_interpreter_themselves(tmp_path):
    """`--smoke` on a machine without a GPU needs no TRITON_INTERPRET from the caller."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "runtime.py"), "--smoke", "--markdown", "--methods",
                             "baseline,triton", "--head-dims", "32", "--tokens", "16", "--output", str(tmp_path)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr
    records = strict_json((tmp_path / "runtime_smoke-custom_fp16.json").read_text())["records"]
    if "triton" in MUST_RUN_ON_CPU:
        assert any(r["method"] == "triton" and r["status"] == "ok" for r in records), records


def test_memory_help_is_whole_and_takes_no_timing_flags():
    """memory.py measures allocations: its help carries its whole description and no timing options, and a timing
    flag is an error rather than silently ignored."""
    help_text = run_command("memory.py", "--help").stdout
    assert "and the absolute peak" in " ".join(help_text.split()) and "--rep-ms" not in help_text
    result = run_command("memory.py", "--smoke", "--rep-ms", "3")
    assert result.returncode == 2 and "unrecognized arguments: --rep-ms" in result.stderr


def test_a_shape_flag_of_another_grid_is_an_error():
    result = run_command("runtime.py", "--grid", "decode", "--smoke", "--tokens", "64")
    assert result.returncode == 2 and "--tokens does not apply to the decode grid" in result.stderr
    result = run_command("runtime.py", "--grid", "model", "--smoke", "--mask", "none")
    assert result.returncode == 2 and "the model grid" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The harness in process (fast)


def test_seed_paper_and_model_grids():
    seed = grids.GRIDS["seed"].axes.shapes("fp16")
    assert [(s.head_dim, s.batch, s.heads_q, s.seqlen_q) for s in seed[:4]] == [
        (64, 32, 8, 512), (64, 16, 8, 1024), (64, 8, 8, 2048), (64, 4, 8, 4096)]
    assert {(s.head_dim, s.heads_q) for s in seed} == {(64, 8), (128, 4)}
    paper = grids.GRIDS["paper"].axes
    paper = type(paper)(**{**paper.__dict__, "masks": (False, True)}).shapes("bf16")
    assert len(paper) == 2 * 2 * 6
    assert all(s.batch * s.seqlen_q == 16384 and s.heads_q * s.head_dim == 2048 for s in paper)
    model = grids.GRIDS["model"].axes.shapes("bf16")
    assert len(model) == 4 * 3 + 3 + 1
    assert all(s.batch == max(1, 16384 // s.seqlen_k) for s in model if s.seqlen_q == s.seqlen_k)
    assert {(s.heads_q, s.heads_kv, s.head_dim) for s in model} == {(32, 8, 128), (64, 8, 128), (28, 4, 128),
                                                                    (16, 8, 256)}
    chunked = [s for s in model if s.seqlen_q < s.seqlen_k]
    assert [(s.batch, s.seqlen_q, s.seqlen_k, s.causal) for s in chunked] == [
        (1, 2048, 8192, True), (1, 2048, 16384, True), (1, 2048, 32768, True)]
    assert [(s.batch, s.seqlen_q, s.causal) for s in model if not s.causal] == [(4, 4096, False)]


def test_flops_count_the_score_entries_computed():
    """No mask: Nq*Nk; causal Nq == Nk: half of N^2 (the papers' count); bottom-right causal Nq < Nk: exactly the
    entries its mask keeps."""
    shape = dense.Shape(2, 4, 4, 128, 128, 64, False, "fp16")
    assert shape.work == 4 * 2 * 4 * 128 * 128 * 64
    assert dense.Shape(2, 4, 4, 128, 128, 64, True, "fp16").work == shape.work / 2
    for seqlen_q, seqlen_k in [(1, 9), (5, 9), (16, 48), (2048, 8192), (9, 5)]:
        rows = torch.arange(seqlen_q)[:, None]
        kept = (torch.arange(seqlen_k)[None, :] <= rows + seqlen_k - seqlen_q).sum().item()
        assert dense.score_entries(seqlen_q, seqlen_k, True) == kept, (seqlen_q, seqlen_k)
        assert dense.Shape(1, 8, 2, seqlen_q, seqlen_k, 32, True, "bf16").work == 4 * 32 * 8 * kept


@pytest.mark.parametrize("heads_q, heads_kv, seqlen_q, seqlen_k, causal", [
    (2, 2, 40, 40, False), (2, 2, 40, 40, True), (4, 2, 24, 56, True), (28, 4, 17, 33, True), (6, 3, 1, 20, True)])
def test_reference_accepts_sdpa_and_flags_a_wrong_output(heads_q, heads_kv, seqlen_q, seqlen_k, causal):
    """GQA and bottom-right causal with Nq < Nk included: SDPA given our mask is within the tolerance, one wrong
    element of a checked head or a NaN is not."""
    shape = dense.Shape(1, heads_q, heads_kv, seqlen_q, seqlen_k, 32, causal, "fp16")
    inputs = dense.make_inputs(shape, torch.device("cpu"))
    reference = dense.reference(inputs)
    right = dense.make_method("sdpa_flash").run(inputs)
    assert reference.max_error(right) <= reference.tolerance
    wrong = right.clone()
    wrong[0, 1, -1, 0] += 0.05  # one element of a checked head
    assert reference.max_error(wrong) > reference.tolerance
    wrong[0, 0, 0, 0] = float("nan")
    assert not reference.max_error(wrong) <= reference.tolerance


def make_run(grid_name: str, records: list, methods: list[str], copy_tbps=None) -> report.Run:
    grid = grids.GRIDS[grid_name]
    shapes = list(dict.fromkeys(record.shape for record in records))
    return report.Run(title="test", stem="test", grid=grid, shapes=shapes, methods=methods, method_notes=[],
                      device=torch.device("cpu"), warmup_ms=1.0, rep_ms=1.0, host=False, info={"commit": "test"},
                      copy_tbps=copy_tbps, frame=sweep.records_frame(records, shapes, grid.columns))


def test_a_wrong_result_is_marked_in_the_table_and_listed_below_it():
    shapes = grids.GRIDS["smoke"].axes.shapes("fp16")[:1]
    baseline = dense.make_method("baseline")
    off_by_one_tenth = dense.Method("triton", lambda inputs: baseline.run(inputs) + 0.1, lambda inputs: None)
    fixed_timing = {"median_ms": 1.0, "q25_ms": 0.9, "q75_ms": 1.1, "tflops": 2.0}
    records = sweep.run_sweep(dense, shapes, [baseline, off_by_one_tenth], torch.device("cpu"),
                              lambda methods, *cell: {method.name: fixed_timing for method in methods})
    assert [record.status for record in records] == ["ok", "wrong"]
    text = report.document(make_run("smoke", records, ["baseline", "triton"]), runtime.RUNTIME, markdown=True)
    header, rows = markdown_tables(text)[0]
    assert rows[0][header.index("triton")] == "1.00" + WRONG
    assert rows[0][header.index("baseline")] == "1.00"
    assert f"{WRONG} triton, D=32 B=1 H=2 N=16 no mask: max abs error" in text


def test_decode_tables_state_ratios_the_right_way_round():
    """Ours against a peer is peer time over ours (> 1: ours faster); paged against contiguous is contiguous time over
    paged (1.00: the page table costs nothing, 0.50: paged takes twice as long); % copy is ours over the copy."""
    contiguous = kvcache.Shape(1, 4, 2, 1, 64, 32, False, False, "bf16")
    paged = kvcache.Shape(1, 4, 2, 1, 64, 32, True, False, "bf16")

    def timed(shape, method, ms):
        return sweep.Record(shape, method, values={"median_ms": ms, "q25_ms": ms, "q75_ms": ms,
                                                   "tbps": timing.Rate.of(shape.work, ms)})

    records = [timed(contiguous, "triton", 0.010), timed(contiguous, "sdpa_flash", 0.030),
               timed(paged, "triton", 0.020), sweep.Record(paged, "sdpa_flash", "unavailable", "no pages")]
    copy = 2 * timing.Rate.of(contiguous.work, 0.010)
    text = report.document(make_run("smoke-decode", records, ["triton", "sdpa_flash"], copy), runtime.RUNTIME, True)
    header, rows = markdown_tables(text.split("### TB/s of K/V read")[1])[0]
    assert [row[header.index("triton/best peer")] for row in rows] == ["3.00", "—"]
    assert [row[header.index("triton/contiguous")] for row in rows] == ["—", "0.50"]
    assert [row[header.index("triton % copy")] for row in rows] == ["50%", "25%"]


def test_a_method_that_fails_to_measure_spoils_no_other():
    shapes = grids.GRIDS["smoke"].axes.shapes("fp16")[:1]
    baseline = dense.make_method("baseline")
    methods = [baseline, dense.Method("triton", baseline.run, lambda inputs: None)]

    def measure(methods, inputs, shape):
        if any(method.name == "triton" for method in methods):
            if len(methods) == 1:
                raise torch.OutOfMemoryError("pretend")
            raise RuntimeError("together")
        return {method.name: {"median_ms": 1.0} for method in methods}

    records = sweep.run_sweep(dense, shapes, methods, torch.device("cpu"), measure)
    assert [(r.method, r.status) for r in records] == [("baseline", "ok"), ("triton", "oom")]
    assert records[0].values == {"median_ms": 1.0}


def test_kernel_families_are_chosen_by_keyword_not_environment(monkeypatch):
    """cuda_sm80 / cuda_sm90 call flash_attention.cuda.attention(..., kernel_family=...)."""
    from flash_attention import cuda

    calls = []
    monkeypatch.setattr(cuda, "attention", lambda *args, **options: calls.append(options) or args[0])
    inputs = dense.make_inputs(dense.Shape(1, 2, 2, 8, 8, 32, True, "fp16"), torch.device("cpu"))
    for family in ("sm80", "sm90"):
        dense.make_method(f"cuda_{family}").run(inputs)
    assert calls == [{"causal": True, "kernel_family": "sm80"}, {"causal": True, "kernel_family": "sm90"}]


def test_the_benchmarks_never_write_the_environment():
    """Options travel as arguments; --smoke's TRITON_INTERPRET goes to a restarted command's copy of the environment
    (test_smoke_runs_set_the_interpreter_themselves)."""
    writes = []
    for path in sorted(BENCHMARKS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                written = node.func.attr in ("setdefault", "update", "pop", "popitem", "clear", "putenv")
                target = node.func.value if written else None
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = getattr(node, "targets", None) or [node.target]
                target = next((t.value for t in targets if isinstance(t, ast.Subscript)), None)
            else:
                target = None
            if target is not None and ast.unparse(target) in ("os.environ", "os"):
                writes.append(f"{path.relative_to(BENCHMARKS)}: {ast.unparse(node)}")
    assert writes == []


def test_commit_named_by_environment_wins_over_git(monkeypatch):
    """A tree shipped to a GPU machine may carry a stale .git; FLASH_ATTENTION_COMMIT names what was measured."""
    monkeypatch.delenv("FLASH_ATTENTION_COMMIT", raising=False)
    assert "FLASH_ATTENTION_COMMIT" not in provenance.git_commit()
    monkeypatch.setenv("FLASH_ATTENTION_COMMIT", "abc1234")
    assert provenance.git_commit().startswith("abc1234 ")
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "0")
    assert "FLASH_ATTENTION_AUTOTUNE=0" in provenance.settings_text()
    assert "FLASH_ATTENTION_COMMIT" not in provenance.settings_text()


def test_interleaved_timing_rotates_the_order_each_round():
    order = timing.interleaved_order(["a", "b", "c"], 6)
    assert all(sorted(one_round) == ["a", "b", "c"] for one_round in order)
    for position in range(3):  # each method as often in each position
        assert sorted(one_round[position] for one_round in order) == ["a", "a", "b", "b", "c", "c"]


def test_strict_json_and_the_cudnn_version():
    assert report.strict_json({"a": [1.0, float("inf")], "b": (float("nan"), "x"), "c": pd.NA}) == {
        "a": [1.0, None], "b": [None, "x"], "c": None}
    assert provenance.cudnn_version_text(91900) == "9.19.0"
    assert provenance.cudnn_version_text(90100) == "9.1.0"
    assert provenance.cudnn_version_text(8902) == "8.9.2"


def test_the_plot_lists_every_method_with_the_status_of_those_that_did_not_run():
    from matplotlib import pyplot

    shape = dense.Shape(1, 2, 2, 16, 16, 32, False, "fp16")
    records = [sweep.Record(shape, "baseline", values={"tflops": 1.0}),
               sweep.Record(shape, "cuda", status="unavailable", note="no GPU")]
    figure = plot.draw(make_run("smoke", records, ["baseline", "cuda"]), key="tflops", label="TFLOPS")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    pyplot.close(figure)
    assert labels == ["baseline", "cuda: unavailable"]


def test_the_check_pairs_each_query_head_with_its_key_head():
    query, key, value = (torch.randn(1, heads, 5, 8) for heads in (6, 2, 2))
    q, k, v = checking.query_heads(query, key, value, 4)
    assert q.shape[1] == k.shape[1] == 4 and torch.equal(k[0, 2], key[0, 0]) and torch.equal(k[0, 3], key[0, 1])


def _ab_kernels():
    spec = importlib.util.spec_from_file_location("ab_kernels", REPO_ROOT / "scripts" / "ab_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ab_kernels", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ab_kernels_takes_the_benchmark_grids_shapes_and_the_registrys_kernels():
    """scripts/ab_kernels.py A/Bs the kernels the grids' calls run: its cases are the grids' shapes (inputs made only
    when a case runs), each with the registry's kernel; decode and varlen run alone."""
    ab = _ab_kernels()
    prefill = ab.prefill_cases(["paper"], "fp16", (256,), (9, 0), torch.device("cpu"))
    assert len(prefill) == 2 * len(grids.GRIDS["paper"].axes.tokens)  # both masks
    assert {case.kernel.stem for case in prefill} == {"fwd_sm90_hdim256_fp16", "fwd_sm90_hdim256_fp16_causal"}
    model = ab.prefill_cases(["model"], "bf16", (128,), (9, 0), torch.device("cpu"))  # fixed shapes: those of d128
    assert [case.cells[1:] for case in model] == [case.cells[1:] for case in ab.prefill_cases(
        ["model"], "bf16", None, (9, 0), torch.device("cpu")) if "hdim128" in case.kernel.stem]
    assert model and {case.kernel.stem for case in model} == {"fwd_sm90_hdim128_bf16", "fwd_sm90_hdim128_bf16_causal"}
    decode = ab.decode_cases("bf16", None, torch.device("cpu"))
    assert [case.cells[1:] for case in decode] == [
        (s.batch, f"{s.heads_q}/{s.heads_kv}", s.seqlen_q, s.keys, "paged" if s.paged else "contiguous")
        for s in grids.GRIDS["decode"].axes.shapes("bf16")]
    assert {case.kernel.stem for case in decode} == {"decode_hdim128_bf16"}
    varlen = ab.varlen_cases("bf16", None, torch.device("cpu"))
    assert [case.cells[1] for case in varlen] == [s.mix for s in grids.GRIDS["varlen"].axes.shapes("bf16")] * 2
    assert {case.kernel.stem for case in varlen} == {f"fwd_sm90_hdim{d}_bf16{mask}" for mask in ("", "_causal")
                                                     for d in grids.GRIDS["varlen"].axes.head_dims}
    for mixed in ("decode,paper", "varlen,paper"):
        with pytest.raises(SystemExit):
            ab.main(["--baseline", ".", "--grids", mixed])
