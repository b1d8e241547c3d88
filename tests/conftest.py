"""Shared fixtures: the device, the backends that can run here, fresh random inputs, poisoned outputs.

Without a GPU the kernel tests run on CPU tensors: the naive backend always, and the Triton kernel when
TRITON_INTERPRET=1 is set (CI sets it). With a GPU they run on CUDA tensors for every backend that can.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

# Without a GPU the Triton kernel runs under Triton's interpreter on CPU tensors. Set before flash_attention (and so
# triton.jit) is imported: the interpreter is chosen when a kernel is decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests use each backend's fixed default tile; tests/test_gpu.py covers the autotuned path on its own.
os.environ.setdefault("FLASH_ATTENTION_AUTOTUNE", "0")

import flash_attention  # noqa: E402
from flash_attention import _settings, _validation  # noqa: E402

HAS_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_GPU else "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_probe = torch.empty(1, device=DEVICE)
KERNEL_BACKENDS = [name for name in ("triton", "cuda") if flash_attention.backend_unavailable_reason(name, _probe) is None]
BACKENDS = KERNEL_BACKENDS + ["naive"]
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every output starts NaN-filled, so an element a kernel never writes fails the comparison."""
    monkeypatch.setattr(_validation, "POISON_OUTPUTS", True)


@pytest.fixture
def settings(monkeypatch):
    """settings(field=value, ...) changes flash_attention._settings.current (what the environment said at import,
    read by the package at use) for one test."""

    def change(**fields):
        monkeypatch.setattr(_settings, "current", dataclasses.replace(_settings.current, **fields))

    return change


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS or [pytest.param("none", marks=pytest.mark.skip("no kernel backend here"))])
def kernel_backend(request):
    return request.param


def random_qkv(batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, *, layout="bhsd", scale=1.0):
    """Fresh standard-normal inputs (never zeros). layout 'bshd' gives (B, N, H, D) storage seen as (B, H, N, D)."""

    def make(heads, seqlen):
        if layout == "bshd":
            return (torch.randn(batch, seqlen, heads, head_dim, device=DEVICE) * scale).to(dtype).transpose(1, 2)
        return (torch.randn(batch, heads, seqlen, head_dim, device=DEVICE) * scale).to(dtype)

    return make(heads_q, seqlen_q), make(heads_kv, seqlen_k), make(heads_kv, seqlen_k)


def assert_forward_only(out, query, backend):
    """The naive backend is plain PyTorch and differentiable; a kernel's output stays connected to the graph and its
    backward raises, never a silently missing gradient."""
    if backend == "naive":
        out.float().sum().backward()
        assert query.grad is not None
        return
    assert out.requires_grad, "a kernel output must not be silently detached"
    with pytest.raises(NotImplementedError, match="forward-only"):
        out.float().sum().backward()


_passed_per_backend = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = params.get("backend") or params.get("kernel_backend") or params.get("varlen_backend")
    if report.when == "call" and report.passed and name:
        _passed_per_backend[name] = _passed_per_backend.get(name, 0) + 1


def pytest_terminal_summary(terminalreporter):
    mode = "CUDA tensors" if HAS_GPU else ("CPU tensors, Triton interpreter" if INTERPRETED else "CPU tensors")
    counts = ", ".join(f"{name} {_passed_per_backend.get(name, 0)}" for name in ("triton", "cuda", "naive"))
    terminalreporter.write_line(f"kernel tests passed per backend ({mode}): {counts}")
