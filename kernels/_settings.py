"""The environment variables the package honours, read here and nowhere else, once, at import.

Each is the default of an option that code can also set directly (the backends' keyword options, module attributes),
so a run's behaviour never depends on the environment changing under it, and the settings of a run are in one object
(`current`) that a benchmark can print.

    FLASH_ATTENTION_CUDA_KERNEL        cuda backend: "sm80" or "sm90" forces a kernel family (unset: the registry's
                                       choice, kernels/cuda/_registry.py)
    FLASH_ATTENTION_SM90_SCHEDULER     cuda backend, SM90 family: auto | static | dynamic | per-tile
    FLASH_ATTENTION_SM90_CLUSTER       cuda backend, SM90 family: auto (pairs of CTAs where they pay) | off
    FLASH_ATTENTION_BUILD_ON_FIRST_USE cuda backend: 1 lets backend="auto" build a missing kernel on its first call
    FLASH_ATTENTION_CACHE              where the cuda backend's builds live (else $XDG_CACHE_HOME/flash_attention,
                                       else ~/.cache/flash_attention)
    CUTLASS_PATH                       a CUTLASS checkout for the cuda backend's headers
    MAX_JOBS                           parallel kernel builds (default: one per core)
    FLASH_ATTENTION_AUTOTUNE           triton backend: 0 takes each configuration's first candidate, no autotuning
    FLASH_ATTENTION_TMA                triton backend: 0 loads with pointers instead of tensor descriptors
    FLASH_ATTENTION_TRITON_KERNEL      triton backend: auto (the Gluon kernel on Hopper where it applies) | portable
                                       (the tl.dot kernel everywhere)

A value outside a variable's choices raises ValueError at import, naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Optional

CUDA_KERNEL_FAMILIES = ("sm80", "sm90")
SM90_SCHEDULES = ("auto", "static", "dynamic", "per-tile")
TRITON_KERNELS = ("auto", "portable")


@dataclasses.dataclass(frozen=True)
class Settings:
    cuda_kernel_family: Optional[str]  # None: the registry's choice
    sm90_schedule: str
    sm90_cta_pairs: bool
    build_on_first_use: bool
    cache_dir: Path
    cutlass_path: Optional[Path]
    max_jobs: Optional[int]
    triton_autotune: bool
    triton_tma: bool
    triton_kernel: str


def _choice(environ: Mapping[str, str], name: str, choices: tuple, default: str) -> str:
    value = environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    return _choice(environ, name, ("0", "1"), "1" if default else "0") == "1"


def from_environment(environ: Mapping[str, str]) -> Settings:
    family = environ.get("FLASH_ATTENTION_CUDA_KERNEL") or None
    if family is not None and family not in CUDA_KERNEL_FAMILIES:
        raise ValueError(f"FLASH_ATTENTION_CUDA_KERNEL must be one of {', '.join(CUDA_KERNEL_FAMILIES)} or unset, "
                         f"got {family!r}")
    if environ.get("FLASH_ATTENTION_CACHE"):
        cache_dir = Path(environ["FLASH_ATTENTION_CACHE"]).expanduser()
    else:
        xdg = environ.get("XDG_CACHE_HOME")
        cache_dir = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "flash_attention"
    max_jobs = environ.get("MAX_JOBS")
    if max_jobs is not None and not (max_jobs.isdigit() and int(max_jobs) > 0):
        raise ValueError(f"MAX_JOBS must be a positive integer, got {max_jobs!r}")
    return Settings(
        cuda_kernel_family=family,
        sm90_schedule=_choice(environ, "FLASH_ATTENTION_SM90_SCHEDULER", SM90_SCHEDULES, "auto"),
        sm90_cta_pairs=_choice(environ, "FLASH_ATTENTION_SM90_CLUSTER", ("auto", "off"), "auto") == "auto",
        build_on_first_use=_flag(environ, "FLASH_ATTENTION_BUILD_ON_FIRST_USE", False),
        cache_dir=cache_dir,
        cutlass_path=Path(environ["CUTLASS_PATH"]).expanduser() if environ.get("CUTLASS_PATH") else None,
        max_jobs=int(max_jobs) if max_jobs is not None else None,
        triton_autotune=_flag(environ, "FLASH_ATTENTION_AUTOTUNE", True),
        triton_tma=_flag(environ, "FLASH_ATTENTION_TMA", True),
        triton_kernel=_choice(environ, "FLASH_ATTENTION_TRITON_KERNEL", TRITON_KERNELS, "auto"),
    )


current = from_environment(os.environ)
