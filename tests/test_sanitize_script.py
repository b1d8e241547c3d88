"""scripts/sanitize.py runs compute-sanitizer on a GPU; here: it skips cleanly without one, and parses options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sanitize.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    # Hide any GPU, so the test checks the no-GPU path on every machine (and never starts a sanitizer run).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_skips_cleanly_without_a_gpu():
    done = run_script("--tools", "memcheck,racecheck,synccheck,initcheck", "--backends", "triton,cuda")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" in done.stdout and "no CUDA GPU" in done.stdout


def test_help_lists_the_options():
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--tools", "--backends", "memcheck", "racecheck"):
        assert option in done.stdout


def test_unknown_tool_is_refused():
    done = run_script("--tools", "memcheck,leakcheck")
    assert done.returncode == 2 and "leakcheck" in done.stderr
