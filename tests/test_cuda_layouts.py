"""The register-layout algebra of the CUDA kernels, checked on the host (no GPU): tests/cuda/check_layouts.cu is
built with nvcc against CUTLASS and run. Skips where nvcc or the CUTLASS headers are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flash_attention.cuda import _loader

SOURCE = Path(__file__).resolve().parent / "cuda" / "check_layouts.cu"


def test_accumulator_views_match_the_mma_operand_layouts(tmp_path):
    nvcc = shutil.which("nvcc") or _loader.find_nvcc()
    include = _loader.find_cutlass_include()
    if nvcc is None or include is None:
        pytest.skip("needs nvcc and the CUTLASS headers")
    binary = tmp_path / "check_layouts"
    build = subprocess.run(
        [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-arch=sm_90a", "-I", str(include), "-I", str(_loader.CSRC),
         str(SOURCE), "-o", str(binary)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": 0 mismatches") == 7, run.stdout
