"""pixi.toml and pyproject.toml name the same packages with the same pins, so neither install path rots; and the
package imports once, whatever name Python finds its folder under."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# Conda-only toolchain (no pip equivalent in pyproject): python itself, the CUDA compiler and runtime headers, and
# the C++ compiler.
CONDA_TOOLCHAIN = {"python", "cuda-nvcc", "cuda-cudart-dev", "cxx-compiler"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", requirement)
    return match.group(1).lower(), match.group(3).replace(" ", "")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pixi() -> dict:
    return tomllib.loads((ROOT / "pixi.toml").read_text())


def _requirements(requirements) -> dict[str, str]:
    return dict(_split(r) for r in requirements if not r.startswith(_pyproject()["name"]))


def _pixi_table(table: dict) -> dict[str, str]:
    """name -> pin of a pixi table's conda and PyPI dependencies, without the conda-only toolchain."""
    found = {}
    for kind in ("dependencies", "pypi-dependencies"):
        for name, spec in table.get(kind, {}).items():
            if name.lower() in CONDA_TOOLCHAIN or name == "flash-attention":
                continue
            found[name.lower()] = (spec["version"] if isinstance(spec, dict) else spec).replace(" ", "")
    return found


# pyproject's extras and the pixi features that hold the same packages (the build feature adds the toolchain).
EXTRA_FEATURES = {"cuda": "build", "bench": "bench", "hf": "hf", "test": "test"}


def test_each_extra_is_a_pixi_feature_with_the_same_pins():
    project, pixi = _pyproject(), _pixi()
    for extra, feature in EXTRA_FEATURES.items():
        assert _requirements(project["optional-dependencies"][extra]) == _pixi_table(pixi["feature"][feature]), extra
    assert set(project["optional-dependencies"]) == set(EXTRA_FEATURES)
    # The runtime needs: the workspace's own, plus torch, which each torch feature pins alike from its own index.
    core = _pixi_table(pixi)
    for feature in ("gpu", "cpu"):
        assert _requirements(project["dependencies"]) == {**core, **_pixi_table(pixi["feature"][feature])}, feature


def test_pixi_environments_gpu_by_default_and_a_cpu_one_that_needs_no_cuda():
    pixi = _pixi()
    environments = pixi["environments"]
    assert set(environments["default"]) == {"gpu", *EXTRA_FEATURES.values()}
    assert set(environments["cpu"]) == {"cpu", "bench", "hf", "test"}
    features = pixi["feature"]
    assert features["gpu"]["system-requirements"] == {"cuda": "13.0"}
    assert not any("system-requirements" in features[name] for name in environments["cpu"])
    assert "system-requirements" not in pixi
    assert features["cpu"]["pypi-dependencies"]["torch"]["index"].endswith("/whl/cpu")
    assert features["gpu"]["pypi-dependencies"]["torch"]["index"].endswith("/whl/cu130")
    readme = (ROOT / "README.md").read_text()
    assert "pixi run -e cpu test" in readme and "CONDA_OVERRIDE_CUDA" in readme


def test_pixi_python_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_python = re.search(r"Python (3\.\d+)", ci).group(1)
    assert _pixi()["dependencies"]["python"] == f"{ci_python}.*"
    minimum = re.fullmatch(r">=(3\.\d+)", _pyproject()["requires-python"]).group(1)
    assert tuple(map(int, minimum.split("."))) <= tuple(map(int, ci_python.split(".")))


def test_pixi_tasks_run_the_readme_commands():
    pixi = _pixi()
    tasks = pixi["tasks"]
    assert {"test", "bench-runtime", "bench-memory"} <= tasks.keys()
    assert pixi["feature"]["build"]["tasks"]["build"] == "python -m flash_attention.cuda.build"
    assert tasks["bench-runtime"] == "python benchmarks/runtime.py"
    assert tasks["bench-memory"] == "python benchmarks/memory.py"
    readme = (ROOT / "README.md").read_text()
    for command in ("pixi run test", "pixi run bench-runtime --markdown", "pixi run bench-memory",
                    'pip install -e ".[test]"'):
        assert command in readme, f"README.md must show `{command}`"


def test_pixi_installs_the_package_from_this_folder():
    assert _pixi()["pypi-dependencies"]["flash-attention"] == {"path": ".", "editable": True}


def _cutlass_version(include: Path) -> str:
    text = (include / "cutlass" / "version.h").read_text()
    parts = [re.search(rf"#define CUTLASS_{part} (\d+)", text).group(1) for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def test_cutlass_submodule_and_wheel_pin_agree():
    """third_party/cutlass is pinned (a gitlink) to the same CUTLASS release as the nvidia-cutlass wheel."""
    assert 'path = third_party/cutlass' in (ROOT / ".gitmodules").read_text()
    wheel_pin = _requirements(_pyproject()["optional-dependencies"]["cuda"])["nvidia-cutlass"]  # "==4.2.0.0"
    release = ".".join(wheel_pin.lstrip("=").split(".")[:3])
    checked_out = ROOT / "third_party" / "cutlass" / "include"
    if (checked_out / "cutlass" / "version.h").is_file():
        assert _cutlass_version(checked_out) == release
    cutlass_library = pytest.importorskip("cutlass_library")
    assert _cutlass_version(Path(cutlass_library.__file__).parent / "source" / "include") == release


def test_the_folder_imported_as_kernels_registers_no_op_twice():
    """From the repository's root Python also finds kernels/ as a package `kernels` (transformers imports it while
    probing for Hugging Face's `kernels`). That copy must reuse flash_attention's backends: importing them again would
    register the torch custom ops a second time and free the first registration."""
    code = ("import sys, flash_attention, kernels; "
            "assert kernels._MODULES['triton'] is flash_attention._MODULES['triton']; "
            "assert not [name for name in sys.modules if name in ('kernels.triton', 'kernels.cuda', 'kernels.naive')]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "TRITON_INTERPRET": "1"})


def test_license_and_types_ship_with_the_package():
    """The MIT license pyproject names is a file, and the package marks itself typed (PEP 561) and ships the marker."""
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "kernels" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["flash_attention"]
    import flash_attention

    annotations = flash_attention.attention.__annotations__
    assert annotations["return"] == "AttentionResult" and annotations["query"] == "torch.Tensor"


def test_every_backend_meets_the_backend_contract():
    import flash_attention
    from flash_attention._backend import Backend

    for name in flash_attention.BACKENDS:
        module = getattr(flash_attention, name)
        assert isinstance(module, Backend), name  # every call of the Protocol is there
