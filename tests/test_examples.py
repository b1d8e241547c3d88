"""The scripts in examples/ run as written (each checks its own results and exits non-zero when they are wrong)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import HAS_GPU, KERNEL_BACKENDS

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("backend", ["auto"] + KERNEL_BACKENDS)
def test_decoder_block(backend):
    """Prefill of packed prompts (attention_varlen) and decode steps against a KV cache (attention_with_kvcache), each
    checked against PyTorch's SDPA by the script."""
    env = dict(os.environ)
    if not HAS_GPU:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, str(EXAMPLES / "decoder_block.py"), "--backend", backend, "--steps",
                             "3"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decode steps; max |attention - SDPA|" in result.stdout
