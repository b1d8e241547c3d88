"""Which CUDA kernels exist, and which one runs a call: the one place where the backend decides.

A kernel is one instantiation of a family's translation unit (``csrc/fwd_sm80.cu``, ``csrc/fwd_sm90.cu``,
``csrc/decode.cu``) for a head dim, a dtype and (forward families) a mask, built as its own library by the loader with
the ``-D`` flags ``Kernel.defines`` gives (``csrc/instantiation.h``). Its ``handle`` is its index in ``KERNELS``: the
loader files a library's entry under it in the binding, and every op call names its kernel by it, so the binding
holds no family, head-dim, arch or file-name rule of its own.

    registry -> loader (builds and loads what the registry names) -> binding (launches the handle it is given)
             -> kernel (mainloop x epilogue x tile scheduler x mask: csrc/sm90_fwd_kernel.h)
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import torch

from .. import _settings


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    source: str                   # csrc/<source>, compiled once per kernel of the family
    head_dims: tuple[int, ...]    # instantiated head dims; a call runs the smallest one >= its head_dim (zero-padded)
    masks: tuple[Optional[bool], ...]  # (False, True) per-mask kernels; (None,) the mask is a run-time argument
    archs: Optional[tuple[str, ...]]   # compute capabilities it is built for ("90"), None: every one from 8.0


SM80 = Family("sm80", "fwd_sm80.cu", (32, 64, 96, 128, 160, 192, 256), (False, True), None)
# sm_90a code (wgmma, setmaxnreg, TMA multicast) runs on compute capability 9.0 only.
SM90 = Family("sm90", "fwd_sm90.cu", (64, 128, 256), (False, True), ("90",))
DECODE = Family("decode", "decode.cu", (64, 128, 256), (None,), None)
FAMILIES = {family.name: family for family in (SM80, SM90, DECODE)}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_DTYPE_ENUMERATORS = {torch.float16: "kFloat16", torch.bfloat16: "kBFloat16"}  # flash::DType (csrc/params.h)


@dataclasses.dataclass(frozen=True)
class Kernel:
    family: Family
    head_dim: int
    dtype: torch.dtype
    causal: Optional[bool]  # None for a family whose mask is a run-time argument
    handle: int

    @property
    def stem(self) -> str:
        """The library's name (and cache folder): fwd_[sm90_]hdim<D>_<dtype>[_causal], decode_hdim<D>_<dtype>."""
        prefix = {"sm80": "fwd_hdim", "sm90": "fwd_sm90_hdim", "decode": "decode_hdim"}[self.family.name]
        return f"{prefix}{self.head_dim}_{DTYPE_NAMES[self.dtype]}{'_causal' if self.causal else ''}"

    @property
    def defines(self) -> list[str]:
        flags = [f"-DFLASH_HEAD_DIM={self.head_dim}", f"-DFLASH_DTYPE={_DTYPE_ENUMERATORS[self.dtype]}"]
        if self.causal is not None:
            flags.append(f"-DFLASH_CAUSAL={'true' if self.causal else 'false'}")
        return flags

    @property
    def is_decode(self) -> bool:
        return self.family is DECODE


def _enumerate() -> tuple[Kernel, ...]:
    kernels = []
    for family in FAMILIES.values():
        for head_dim in family.head_dims:
            for dtype in DTYPE_NAMES:
                for causal in family.masks:
                    kernels.append(Kernel(family, head_dim, dtype, causal, len(kernels)))
    return tuple(kernels)


KERNELS = _enumerate()
_BY_KEY = {(k.family.name, k.head_dim, k.dtype, k.causal): k for k in KERNELS}
_BY_STEM = {k.stem: k for k in KERNELS}


def builds_for(arch: str, family: Family) -> bool:
    return family.archs is None or arch in family.archs


def kernels_for_arch(arch: str) -> list[Kernel]:
    """Every kernel a GPU of compute capability `arch` ("80", "90", ...) can build and run."""
    return [kernel for kernel in KERNELS if builds_for(arch, kernel.family)]


def by_stem(stem: str) -> Kernel:
    if stem not in _BY_STEM:
        raise ValueError(f"no CUDA kernel is named {stem!r}")
    return _BY_STEM[stem]


def _rounded_head_dim(family: Family, head_dim: int) -> Optional[int]:
    return next((d for d in family.head_dims if d >= head_dim), None)


def sm90_covers(head_dim: int) -> bool:
    """Whether the SM90 family runs this head_dim: where it rounds up to the same instantiation as the SM80 family
    (40-64, 104-128, 200-256). The others run the SM80 family's nearer tile (96, 160, 192) instead of padding more."""
    rounded = _rounded_head_dim(SM90, head_dim)
    return rounded is not None and _rounded_head_dim(SM80, head_dim) == rounded


def _arch(major_minor) -> str:
    return f"{major_minor[0]}{major_minor[1]}"


# ------------------------------------------------------------------------------------------------ options
class Sm90Schedule(enum.IntEnum):
    """The SM90 grid and its deal (tile_scheduler.h); the values are flash::Sm90Schedule's (csrc/params.h)."""

    AUTO = 0      # persistent: equal tiles dealt statically, unequal ones (causal, a partial tile) drawn
    STATIC = 1
    DYNAMIC = 2
    PER_TILE = 3  # one CTA per tile

    @classmethod
    def named(cls, name: str) -> "Sm90Schedule":
        names = dict(zip(_settings.SM90_SCHEDULES, (cls.AUTO, cls.STATIC, cls.DYNAMIC, cls.PER_TILE)))
        if name not in names:
            raise ValueError(f"sm90_schedule must be one of {', '.join(names)}, got {name!r}")
        return names[name]


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """The research knobs of a forward call: which family (None: the registry's choice), and the SM90 family's grid
    and CTA pairs. Defaults from the environment (flash_attention._settings), read once at import."""

    kernel_family: Optional[str] = None
    sm90_schedule: Sm90Schedule = Sm90Schedule.AUTO
    sm90_cta_pairs: bool = True


DEFAULT_OPTIONS = LaunchOptions(_settings.current.cuda_kernel_family,
                                Sm90Schedule.named(_settings.current.sm90_schedule), _settings.current.sm90_cta_pairs)


def launch_options(kernel_family=None, sm90_schedule=None, sm90_cta_pairs=None) -> LaunchOptions:
    """The defaults, with the options a call names (None keeps a default)."""
    if kernel_family is None and sm90_schedule is None and sm90_cta_pairs is None:
        return DEFAULT_OPTIONS
    if kernel_family is not None and kernel_family not in _settings.CUDA_KERNEL_FAMILIES:
        raise ValueError(f"kernel_family must be one of {', '.join(_settings.CUDA_KERNEL_FAMILIES)} or None, "
                         f"got {kernel_family!r}")
    if sm90_cta_pairs is not None and not isinstance(sm90_cta_pairs, bool):
        raise TypeError(f"sm90_cta_pairs must be a bool or None, got {type(sm90_cta_pairs).__name__}")
    return LaunchOptions(
        kernel_family if kernel_family is not None else DEFAULT_OPTIONS.kernel_family,
        Sm90Schedule.named(sm90_schedule) if sm90_schedule is not None else DEFAULT_OPTIONS.sm90_schedule,
        sm90_cta_pairs if sm90_cta_pairs is not None else DEFAULT_OPTIONS.sm90_cta_pairs,
    )


# ------------------------------------------------------------------------------------------------ selection
def forward_kernel(major_minor, head_dim: int, dtype: torch.dtype, causal: bool,
                   kernel_family: Optional[str] = None) -> Kernel:
    """The kernel that runs `attention` on a GPU of this compute capability: the SM90 family where it builds and
    covers the head dim (faster there than the SM80 family: results/NOTES.md), else the SM80 family. `kernel_family`
    forces one; ValueError if it cannot run the call."""
    sm90_fits = builds_for(_arch(major_minor), SM90) and sm90_covers(head_dim)
    if kernel_family == "sm90" and not sm90_fits:
        raise ValueError(f"kernel_family='sm90' runs on compute capability 9.0 with head dims 40-64, 104-128 or "
                         f"200-256; this call has {major_minor[0]}.{major_minor[1]} and head_dim {head_dim}")
    family = SM90 if sm90_fits and kernel_family != "sm80" else SM80
    return _BY_KEY[(family.name, _rounded_head_dim(family, head_dim), dtype, bool(causal))]


def varlen_unsupported_reason(major_minor, head_dim: int) -> Optional[str]:
    """Why no kernel runs a packed variable-length call here, or None: the varlen kernels are the SM90 family's."""
    if not builds_for(_arch(major_minor), SM90):
        return (f"its varlen kernels run on compute capability 9.0 (Hopper), this GPU has "
                f"{major_minor[0]}.{major_minor[1]}")
    if not sm90_covers(head_dim):
        return f"its varlen kernels serve head dims 40-64, 104-128 and 200-256, got {head_dim}"
    return None


def varlen_kernel(head_dim: int, dtype: torch.dtype, causal: bool) -> Kernel:
    """The SM90 library that holds the varlen kernel of a packed call (varlen_unsupported_reason said None)."""
    return _BY_KEY[("sm90", _rounded_head_dim(SM90, head_dim), dtype, bool(causal))]


def decode_kernel(head_dim: int, dtype: torch.dtype) -> Kernel:
    """The decode kernel of a KV-cache call (or a decode-shaped `attention`)."""
    return _BY_KEY[("decode", _rounded_head_dim(DECODE, head_dim), dtype, None)]
