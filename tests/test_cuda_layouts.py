"""The CUDA kernels' index algebra, checked on the host (no GPU): tests/cuda/check_layouts.cu (register layouts) and
check_tile_order.cu (the SM90 causal tile order) are built with nvcc against CUTLASS and run. Skips where nvcc or the
CUTLASS headers are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flash_attention.cuda import _loader

CHECKS = Path(__file__).resolve().parent / "cuda"


def build_and_run(source: Path, tmp_path: Path) -> str:
    nvcc = shutil.which("nvcc") or _loader.find_nvcc()
    include = _loader.find_cutlass_include()
    if nvcc is None or include is None:
        pytest.skip("needs nvcc and the CUTLASS headers")
    binary = tmp_path / source.stem
    build = subprocess.run(
        [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-arch=sm_90a", "-I", str(include), "-I", str(_loader.CSRC),
         str(source), "-o", str(binary)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_accumulator_views_match_the_mma_operand_layouts(tmp_path):
    output = build_and_run(CHECKS / "check_layouts.cu", tmp_path)
    assert output.count(": 0 mismatches") == 7, output


def test_causal_tile_order_names_every_tile_once(tmp_path):
    output = build_and_run(CHECKS / "check_tile_order.cu", tmp_path)
    assert output.count(": 0 failures") == 2, output
    # The triton backend's Gluon kernel sizes its causal sections by its own copy of the rule: the same counts.
    from flash_attention.triton import section_heads

    rules = [line.split()[1:] for line in output.splitlines() if line.startswith("rule ")]
    assert len(rules) == 2 * 3 * 8 * 9 * 3, output
    for l2, head_dim, seqlen_k, heads, group, sections in (map(int, rule) for rule in rules):
        assert section_heads(l2, seqlen_k, head_dim, 2, heads, group) == sections, (l2, seqlen_k, heads, group)
