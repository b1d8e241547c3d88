"""The benchmark commands end to end on CPU: `--smoke --markdown` under TRITON_INTERPRET=1 (as CI runs them), the
results files, and the refusal to run without a GPU. Plus a few fast checks of the shared harness.

The subprocesses hide any GPU (CUDA_VISIBLE_DEVICES=""), so these tests take the CPU path on every machine.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flash_attention.triton import interpreter_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
SHAPE_COLUMNS = ["head_dim", "batch_size", "num_tokens"]
METHODS = ["baseline", "triton", "cuda", "sdpa_flash", "sdpa_cudnn"]
# The interpreted Triton kernel must run in smoke mode, unless this Triton's interpreter cannot run it at all (the
# backend then says why in the table, which is what it should do).
MUST_RUN_ON_CPU = ["baseline"] + (["triton"] if interpreter_problem() is None else [])
PROVENANCE_KEYS = ["gpu", "driver", "cuda", "torch", "triton", "cudnn", "date", "commit"]
SMOKE_ROWS = 4  # head_dim {32, 64} x num_tokens {16, 48}
WRONG = "✗"


def _load_script(name: str):
    """benchmarks/ is a folder of scripts, not a package: load one by path, under the name the others import."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, and runtime.py's `import harness`, look it up there
    spec.loader.exec_module(module)
    return module


harness = _load_script("harness")
runtime = _load_script("runtime")


def run_command(script: str, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
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


@pytest.fixture(scope="module", params=["runtime", "memory"])
def smoke(request, tmp_path_factory):
    """Each command once with --smoke --markdown --mask both --output DIR (one run serves stdout and file checks)."""
    output = tmp_path_factory.mktemp(request.param)
    result = run_command(f"{request.param}.py", "--smoke", "--markdown", "--mask", "both", "--output", str(output))
    return request.param, result, output


def test_smoke_exits_zero(smoke):
    command, result, _ = smoke
    assert result.returncode == 0, f"{command} failed:\n{result.stderr[-4000:]}"


def test_smoke_tables_have_every_method_and_correct_results(smoke):
    command, result, _ = smoke
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


def test_smoke_writes_results_files_with_provenance(smoke):
    command, result, output = smoke
    assert result.returncode == 0, result.stderr[-4000:]
    stem = output / f"{command}_smoke_fp16_both"
    markdown = stem.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown == result.stdout
    for key in PROVENANCE_KEYS:
        assert f"- {key}: " in markdown

    data = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(PROVENANCE_KEYS) <= set(data["provenance"])
    methods = {record["method"] for record in data["records"]}
    assert set(METHODS) <= methods and len(data["records"]) == 2 * SMOKE_ROWS * len(methods)

    lines = stem.with_suffix(".csv").read_text(encoding="utf-8").splitlines()
    comments = [line for line in lines if line.startswith("# ")]
    assert set(PROVENANCE_KEYS) <= {line[2:].split(":")[0] for line in comments}
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert {"head_dim", "batch_size", "num_tokens", "method", "status"} <= set(rows[0])

    png = stem.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        assert "commit:" in image.text["Description"]


def test_without_gpu_and_without_smoke_exits_2_with_a_clear_message():
    result = run_command("runtime.py", "--markdown", timeout=60)
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "--smoke" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------------------------
# The harness in process (fast)


def test_seed_and_paper_grids():
    seed = harness.sweep_shapes(harness.GRIDS["seed"], [False], "fp16")
    assert [(s.head_dim, s.batch, s.heads, s.tokens) for s in seed[:4]] == [
        (64, 32, 8, 512), (64, 16, 8, 1024), (64, 8, 8, 2048), (64, 4, 8, 4096)]
    assert {(s.head_dim, s.heads) for s in seed} == {(64, 8), (128, 4)}
    paper = harness.sweep_shapes(harness.GRIDS["paper"], [False, True], "bf16")
    assert len(paper) == 2 * 2 * 6
    assert all(s.batch * s.tokens == 16384 and s.heads * s.head_dim == 2048 for s in paper)


def test_causal_flops_are_half():
    shape = harness.Shape(64, 2, 4, 128, False, "fp16")
    assert shape.flops == 4 * 2 * 4 * 128 * 128 * 64
    assert harness.Shape(64, 2, 4, 128, True, "fp16").flops == shape.flops / 2


@pytest.mark.parametrize("causal", [False, True])
def test_reference_accepts_sdpa_and_flags_a_wrong_output(causal):
    shape = harness.Shape(32, 1, 2, 40, causal, "fp16")
    query, key, value = harness.make_inputs(shape, torch.device("cpu"))
    reference = harness.Reference.for_inputs(query, key, value, causal)
    right = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=causal)
    assert reference.max_error(right) <= reference.tolerance
    wrong = right.clone()
    wrong[0, 1, -1, 0] += 0.05  # one element of a checked head
    assert reference.max_error(wrong) > reference.tolerance
    wrong[0, 0, 0, 0] = float("nan")
    assert not reference.max_error(wrong) <= reference.tolerance


def test_a_wrong_result_is_marked_in_the_table_and_listed_below_it():
    args = harness.parse_args("runtime", "", ["--smoke", "--markdown"])
    args.device = torch.device("cpu")
    shapes = harness.sweep_shapes(harness.GRIDS["smoke"], [False], "fp16")[:1]
    methods, _ = harness.build_methods(("baseline",))
    off_by_one_tenth = harness.Method("triton", lambda q, k, v, causal: methods[0].run(q, k, v, causal) + 0.1,
                                      lambda query: None)
    fixed_timing = {"median_ms": 1.0, "q25_ms": 0.9, "q75_ms": 1.1, "tflops": 2.0}
    records = harness.run_sweep(shapes, methods + [off_by_one_tenth], args.device,
                                lambda methods, *cell: {method.name: fixed_timing for method in methods})
    assert [record.status for record in records] == ["ok", "wrong"]
    text = runtime.make_report(args, "smoke", {"commit": "test"}, records, ["baseline", "triton"], []).document(True)
    header, rows = markdown_tables(text)[0]
    assert rows[0][header.index("triton")] == "1.00" + WRONG
    assert rows[0][header.index("baseline")] == "1.00"
    assert f"{WRONG} triton, D=32 B=1 H=2 N=16 no mask: max abs error" in text


def test_commit_named_by_environment_wins_over_git(monkeypatch):
    """A tree shipped to a GPU machine may carry a stale .git; FLASH_ATTENTION_COMMIT names what was measured."""
    monkeypatch.delenv("FLASH_ATTENTION_COMMIT", raising=False)
    assert "FLASH_ATTENTION_COMMIT" not in harness.git_commit()
    monkeypatch.setenv("FLASH_ATTENTION_COMMIT", "abc1234")
    assert harness.git_commit().startswith("abc1234 ")


def test_interleaved_timing_rotates_the_order_each_round():
    order = harness.interleaved_order(["a", "b", "c"], 6)
    assert all(sorted(one_round) == ["a", "b", "c"] for one_round in order)
    for position in range(3):  # each method as often in each position
        assert sorted(one_round[position] for one_round in order) == ["a", "a", "b", "b", "c", "c"]


def test_a_method_that_fails_to_measure_spoils_no_other():
    shapes = harness.sweep_shapes(harness.GRIDS["smoke"], [False], "fp16")[:1]
    baseline = harness.build_methods(("baseline",))[0][0]
    methods = [baseline, harness.Method("triton", baseline.run, lambda query: None)]

    def measure(methods, inputs, shape, device):
        if any(method.name == "triton" for method in methods):
            if len(methods) == 1:
                raise torch.OutOfMemoryError("pretend")
            raise RuntimeError("together")
        return {method.name: {"median_ms": 1.0} for method in methods}

    records = harness.run_sweep(shapes, methods, torch.device("cpu"), measure)
    assert [(r.method, r.status) for r in records] == [("baseline", "ok"), ("triton", "oom")]
    assert records[0].values == {"median_ms": 1.0}


def test_decode_grid_smoke_runs_and_writes_results(tmp_path):
    """`runtime.py --grid decode --smoke --host`: every shape's triton cell is timed (kernel and host) and correct,
    contiguous and paged, and the results files are written."""
    result = run_command("runtime.py", "--grid", "decode", "--smoke", "--markdown", "--host", "--output",
                         str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "### µs per call (median)" in result.stdout and "Paged against contiguous" in result.stdout
    assert "### Host time per call (µs), back-to-back loop" in result.stdout
    written = json.loads((tmp_path / "runtime_smoke_bf16.json").read_text())
    records = written["records"]
    assert set(PROVENANCE_KEYS) <= set(written["provenance"])
    if "triton" in MUST_RUN_ON_CPU:
        triton_rows = [r for r in records if r["method"] == "triton"]
        assert triton_rows and all(r["status"] == "ok" and r["us"] > 0 and r["host_us"] > 0
                                   for r in triton_rows), triton_rows
        assert {r["paged"] for r in triton_rows} == {False, True}
    assert (tmp_path / "runtime_smoke_bf16.md").read_text().startswith("# Decode runtime")


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


def test_decode_tables_state_ratios_the_right_way_round():
    """Ours against a peer is peer time over ours (> 1: ours faster); paged against contiguous is contiguous time over
    paged (1.00: the page table costs nothing, 0.50: paged takes twice as long)."""
    decode = _load_script("decode")
    args = decode.parse_args(["--smoke", "--markdown", "--methods", "triton,sdpa_flash"])
    shape = dict(batch=1, heads_q=4, heads_kv=2, seqlen_q=1, keys=64, head_dim=32, dtype="bf16", status="ok", note="")
    rows = [dict(shape, paged=False, method="triton", us=10.0, tbps=1.0),
            dict(shape, paged=False, method="sdpa_flash", us=30.0, tbps=0.33),
            dict(shape, paged=True, method="triton", us=20.0, tbps=0.5),
            dict(shape, paged=True, method="sdpa_flash", status="unavailable", note="no pages")]
    text = decode.report(args, {"gpu": "test"}, rows, None, torch.device("cpu"))
    peer_table, paged_table = text.split("### TB/s of K/V read")[1].split("### Paged against contiguous")
    assert "3.00" in peer_table.splitlines()[4], peer_table  # the contiguous row: 30 µs / 10 µs
    assert "0.50" in paged_table.splitlines()[4], paged_table


def test_varlen_grid_smoke_runs_and_writes_results(tmp_path):
    """`runtime.py --grid varlen --smoke`: every mix's triton cell is timed and correct, the ragged mixes are read
    against a dense one, and the results files are written."""
    result = run_command("runtime.py", "--grid", "varlen", "--smoke", "--markdown", "--mask", "both", "--output",
                         str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "uniform-5-40 is read against equal-32" in result.stdout
    written = json.loads((tmp_path / "runtime_smoke-varlen_bf16_both.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(written["provenance"])
    if "triton" in MUST_RUN_ON_CPU:
        triton_rows = [r for r in written["records"] if r["method"] == "triton"]
        assert len(triton_rows) == 6 and all(r["status"] == "ok" and r["ms"] > 0 for r in triton_rows), triton_rows


def test_smoke_runs_set_the_interpreter_themselves_and_write_strict_json(tmp_path):
    """`--smoke` on a machine without a GPU needs no TRITON_INTERPRET from the caller, and the JSON has no NaN or
    Infinity (a strict parser reads it)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "runtime.py"), "--smoke", "--markdown", "--methods",
                             "baseline,triton", "--head-dims", "32", "--tokens", "16", "--output", str(tmp_path)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "runtime_smoke-custom_fp16.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    records = json.loads(text, parse_constant=refuse)["records"]
    if "triton" in MUST_RUN_ON_CPU:
        assert any(r["method"] == "triton" and r["status"] == "ok" for r in records), records


def test_strict_json_and_the_cudnn_version():
    assert harness.strict_json({"a": [1.0, float("inf")], "b": (float("nan"), "x")}) == {"a": [1.0, None],
                                                                                          "b": [None, "x"]}
    assert harness.cudnn_version_text(91900) == "9.19.0"
    assert harness.cudnn_version_text(90100) == "9.1.0"
    assert harness.cudnn_version_text(8902) == "8.9.2"


def test_memory_help_is_whole_and_takes_no_timing_flags():
    """memory.py measures allocations: its help carries its whole description and no timing options, and a timing
    flag is an error rather than silently ignored."""
    help_text = run_command("memory.py", "--help").stdout
    assert "and the absolute peak" in " ".join(help_text.split()) and "--rep-ms" not in help_text
    result = run_command("memory.py", "--smoke", "--rep-ms", "3")
    assert result.returncode == 2 and "unrecognized arguments: --rep-ms" in result.stderr


def test_the_plot_lists_every_method_with_the_status_of_those_that_did_not_run():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    shape = harness.Shape(head_dim=32, batch=1, heads=2, tokens=16, causal=False, dtype="fp16")
    records = [harness.Record(shape, "baseline", values={"tflops": 1.0}),
               harness.Record(shape, "cuda", status="unavailable", note="no GPU")]
    figure = pyplot.figure()
    harness.plot_by_head_dim(figure, records, "tflops", "TFLOPS")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    pyplot.close(figure)
    assert labels == ["baseline", "cuda: unavailable"]
