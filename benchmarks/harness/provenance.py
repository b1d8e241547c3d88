"""The header of every results file: the machine, the library versions, the date, the commit and the settings."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# The environment variables that change what a kernel does (flash_attention._settings reads the first kind once at
# import; Triton reads the second): a table made under one of them says so.
SETTING_PREFIXES = ("FLASH_ATTENTION_", "TRITON_")
COMMIT_VARIABLE = "FLASH_ATTENTION_COMMIT"  # names the commit of a copied tree (see git_commit); not a setting


def _command_output(*command: str) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str:
    """Short sha, plus '-dirty' when tracked files differ from it (as `git describe --dirty`). A copy of the tree
    shipped to a GPU machine names its commit in FLASH_ATTENTION_COMMIT, which wins over git: such a copy may carry
    no .git, or a stale one (seen on the device machine: its .git named the last landed commit, not the tree's)."""
    given = os.environ.get(COMMIT_VARIABLE)
    if given:
        return f"{given} (from {COMMIT_VARIABLE}: a copy of the tree)"
    sha = _command_output("git", "rev-parse", "--short", "HEAD")
    if sha is None:
        return "unknown (no git commit)"
    dirty = _command_output("git", "status", "--porcelain", "--untracked-files=no")
    return sha + ("-dirty" if dirty else "")


def cudnn_version_text(version: int) -> str:
    """torch.backends.cudnn.version()'s integer as major.minor.patch: cuDNN 9 encodes 9.19.0 as 91900 (major x 10000),
    cuDNN 8 encoded 8.9.2 as 8902 (major x 1000)."""
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def settings_text() -> str:
    """The FLASH_ATTENTION_* and TRITON_* variables of this process, e.g. 'TRITON_INTERPRET=1'."""
    settings = sorted(f"{name}={value}" for name, value in os.environ.items()
                      if name.startswith(SETTING_PREFIXES) and name != COMMIT_VARIABLE)
    return ", ".join(settings) or "none (every default)"


def provenance(device: torch.device) -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        gpu = f"{torch.cuda.get_device_name(device)} (sm {capability})"
        driver = _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        driver = driver.splitlines()[0] if driver else "unknown"
    else:
        gpu, driver = f"none (CPU: {platform.processor() or platform.machine()})", "n/a"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": gpu,
        "driver": driver,
        "cuda": torch.version.cuda or "n/a (CPU build of torch)",
        "torch": torch.__version__,
        "triton": triton_version,
        "cudnn": cudnn_version_text(cudnn) if cudnn else "n/a",
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "settings": settings_text(),
        "command": " ".join(["python", *sys.argv]),
    }
