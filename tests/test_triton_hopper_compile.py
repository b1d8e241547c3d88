"""The triton backend's Gluon kernel (Hopper) compiled for sm_90 without a GPU, as CI runs
(scripts/check_gluon_compile.py): it compiles with this Triton, fits the shared memory, spills nothing, and its SASS
has the warpgroup MMAs of both products, the TMA loads, the TMA store and, causal, the dynamic deal's atomics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.experimental.gluon")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gluon_compile.py"


def test_hopper_kernel_compiles_for_sm90():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}  # it replaces jit
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.count("\nok ") == 10
