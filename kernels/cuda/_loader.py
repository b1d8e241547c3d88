"""The thin JIT loader of the CUDA backend: nothing is built at import, each kernel is built on first use, and
everything is cached per user.

Libraries, each built by ``torch.utils.cpp_extension.load`` (ninja) for the GPU in hand only:
- the binding (``csrc/binding.cpp``, the only unit that includes torch), which implements the ops and holds the
  table of loaded kernel entries;
- one library per kernel that ``_registry`` lists (46: the SM80 and decode families everywhere, the SM90 family on
  compute capability 9.0 only), each its family's translation unit compiled with the kernel's ``-D`` flags and named
  by its stem (``fwd_sm90_hdim128_bf16_causal``); the binding dlopens it and files its entry under the kernel's
  handle.
A call loads the binding and the one kernel it needs, building whichever is missing, in parallel: a first call
compiles one kernel, not forty. ``python -m flash_attention.cuda.build`` builds them all ahead of time, ``MAX_JOBS``
at once (default: one per core).

The cache is ``<cache>/sm<XY>-<key>/<library>/``, where ``<cache>`` is ``$FLASH_ATTENTION_CACHE``, else
``$XDG_CACHE_HOME/flash_attention``, else ``~/.cache/flash_attention`` (flash_attention._settings reads them), and
``<key>`` hashes the sources' contents, the flags, the torch and CUDA versions and the arch (a library's ``-D`` flags
follow from its stem). Two processes building the same library serialise on its file
lock. A finished build records the library's size and sha256; a cached library that does not match (truncated,
corrupt) is wiped and rebuilt before it is loaded, and one that fails to load is rebuilt once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from .. import _settings
from . import _registry

CSRC = Path(__file__).resolve().parent / "csrc"
REPO = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "flash_attention_cuda"
_OK_MARKER = "BUILD_OK"

HOST_FLAGS = ["-O3"]  # torch.utils.cpp_extension adds the C++ standard its headers need
# torch adds -D__CUDA_NO_HALF_OPERATORS__ & co. for its own headers; CUTLASS's half/bfloat types want them back.
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
]

_loaded: set[tuple[str, str | None]] = set()  # (arch, kernel stem or None for the binding) loaded in this process
_lock = threading.Lock()


# ----------------------------------------------------------------------------------------------- finding things
def cache_root() -> Path:
    return _settings.current.cache_dir


def find_cutlass_include() -> Path | None:
    """CUTLASS headers: $CUTLASS_PATH/include, else third_party/cutlass, else the nvidia-cutlass wheel."""
    if _settings.current.cutlass_path is not None:
        include = _settings.current.cutlass_path / "include"
        return include if (include / "cute" / "tensor.hpp").is_file() else None
    submodule = REPO / "third_party" / "cutlass" / "include"
    if (submodule / "cute" / "tensor.hpp").is_file():
        return submodule
    try:
        import cutlass_library  # the nvidia-cutlass wheel
    except ImportError:
        return None
    include = Path(cutlass_library.__file__).resolve().parent / "source" / "include"
    return include if (include / "cute" / "tensor.hpp").is_file() else None


def cutlass_missing_reason() -> str:
    if _settings.current.cutlass_path is not None:
        return f"CUTLASS_PATH={_settings.current.cutlass_path} has no include/cute/tensor.hpp"
    return ("CUTLASS headers not found: set CUTLASS_PATH to a CUTLASS checkout, run "
            "`git submodule update --init third_party/cutlass`, or `pip install nvidia-cutlass`")


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME (as torch.utils.cpp_extension resolves it), else PATH."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home:
        nvcc = Path(home) / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")
        if nvcc.is_file():
            return str(nvcc)
    return shutil.which("nvcc")


def device_arch(device=None) -> str:
    """'80', '86', '90', ... for `device` (default: the current CUDA device)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def arch_flags(arch: str) -> list[str]:
    # Only the GPU in hand. On 9.0 everything builds as sm_90a, the architecture-specific target that wgmma and
    # setmaxnreg need (the SM80 kernels run there unchanged, for the head dims the SM90 family does not cover).
    if _registry.builds_for(arch, _registry.SM90):
        return ["-gencode=arch=compute_90a,code=sm_90a"]
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def kernel_stems(arch: str) -> list[str]:
    """The libraries of every kernel the registry lists for `arch`, by stem."""
    return [kernel.stem for kernel in _registry.kernels_for_arch(arch)]


def library_name(stem: str | None) -> str:
    """The binding's library (stem None) or a kernel's: flash_attention_cuda, flash_attention_fwd_hdim64_fp16, ..."""
    return EXTENSION_NAME if stem is None else f"flash_attention_{stem}"


@functools.lru_cache(maxsize=None)
def cache_key(arch: str) -> str:
    """Hash of everything that changes a built library: sources and headers, flags, torch, CUDA, Python, arch.
    Computed once per process: `is_built` asks on every `auto` call until the library is loaded."""
    h = hashlib.sha256()
    for path in sorted(p for p in CSRC.rglob("*") if p.is_file()):
        h.update(path.relative_to(CSRC).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (HOST_FLAGS, NVCC_FLAGS, arch_flags(arch)):
        h.update(" ".join(part).encode() + b"\0")
    h.update(f"torch={torch.__version__} cuda={torch.version.cuda} py={sys.version_info[:2]} arch={arch}".encode())
    return h.hexdigest()[:16]


def build_dir(arch: str) -> Path:
    return cache_root() / f"sm{arch}-{cache_key(arch)}"


def library_path(arch: str, stem: str | None = None) -> Path:
    name = library_name(stem)
    return build_dir(arch) / name / f"{name}.so"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_marker(library: Path) -> None:
    record = {"size": library.stat().st_size, "sha256": _digest(library), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    (library.parent / _OK_MARKER).write_text(json.dumps(record) + "\n")


def _marker_matches(library: Path, *, check_digest: bool) -> bool:
    """The cached library is the one a finished build wrote: same size (and sha256 if asked). A truncated library
    must never reach dlopen: mapping past the end of a short file kills the process with SIGBUS, not an OSError."""
    try:
        record = json.loads((library.parent / _OK_MARKER).read_text())
        if library.stat().st_size != record["size"]:
            return False
        return not check_digest or _digest(library) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def is_built(arch: str, kernels=()) -> bool:
    """True if the binding and each kernel in `kernels` (file stems) are loaded in this process or completely built
    in the cache: a call needs no build."""
    return all((arch, stem) in _loaded or _marker_matches(library_path(arch, stem), check_digest=False)
               for stem in (None, *kernels))


# ----------------------------------------------------------------------------------------------- building
@contextlib.contextmanager
def _file_lock(path: Path):
    """Inter-process lock: filelock if installed, else fcntl.flock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import filelock
    except ImportError:
        filelock = None
    if filelock is not None:
        with filelock.FileLock(str(path)):
            yield
        return
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_toolchain() -> Path:
    """The CUTLASS include directory, once nvcc, CUTLASS and ninja are known to be there; else a clear error."""
    from torch.utils import cpp_extension

    if find_nvcc() is None:
        raise RuntimeError(
            "flash_attention cuda backend: nvcc not found (set CUDA_HOME to a CUDA toolkit >= 12, or put nvcc on "
            "PATH), and no built library is cached for this GPU; use backend='triton' or 'naive' instead"
        )
    include = find_cutlass_include()
    if include is None:
        raise RuntimeError(f"flash_attention cuda backend: {cutlass_missing_reason()}")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as error:
        raise RuntimeError("flash_attention cuda backend: the JIT build needs ninja (`pip install ninja`)") from error
    return include


def _build(arch: str, stem: str | None, directory: Path, verbose: bool, csrc: Path = CSRC) -> None:
    """Build one library into `directory`: the binding (stem None) or the registry's kernel of that stem (its
    family's translation unit with the kernel's -D flags), from the sources in `csrc` (another tree's, to compare
    kernels: scripts/ab_kernels.py)."""
    from torch.utils import cpp_extension

    include = _check_toolchain()
    directory.mkdir(parents=True, exist_ok=True)
    if stem is None:  # host code only, against torch's CUDA headers and libraries
        sources, cuda_flags = [csrc / "binding.cpp"], []
    else:
        kernel = _registry.by_stem(stem)
        sources, cuda_flags = [csrc / kernel.family.source], NVCC_FLAGS + arch_flags(arch) + kernel.defines
    cpp_extension.load(
        name=library_name(stem),
        sources=[str(p) for p in sources],
        extra_cflags=HOST_FLAGS,
        extra_cuda_cflags=cuda_flags,
        extra_include_paths=[str(include), str(csrc)],
        build_directory=str(directory),
        with_cuda=True,
        is_python_module=False,
        verbose=verbose,
    )


def _ensure_built(arch: str, stems: list, verbose: bool) -> None:
    """Build, in parallel (MAX_JOBS at once, default one per core), each library of `stems` (None: the binding) that
    the cache lacks complete. Each build runs under its library's file lock, so another process building the same
    one is waited for, not repeated."""

    def build_one(stem):
        library = library_path(arch, stem)
        with _file_lock(library.parent.with_suffix(".lock")):
            if not _marker_matches(library, check_digest=True):
                # No finished build, or a truncated / altered library: start from a clean directory.
                shutil.rmtree(library.parent, ignore_errors=True)
                _build(arch, stem, library.parent, verbose)
                _write_marker(library)

    jobs = _settings.current.max_jobs or os.cpu_count() or 1
    if len(stems) == 1 or jobs == 1:
        for stem in stems:
            build_one(stem)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, len(stems))) as pool:
        for future in [pool.submit(build_one, stem) for stem in stems]:
            future.result()  # the first failure, after every build has finished


def _load_into_process(arch: str, stem: str | None) -> None:
    library = library_path(arch, stem)
    if stem is None:
        torch.ops.load_library(str(library))  # no-op if cpp_extension.load already loaded it
        return
    kernel = _registry.by_stem(stem)  # the binding dlopens it and files its entry under the kernel's handle
    if kernel.is_decode:
        torch.ops.flash_attention.cuda_load_decode_kernel(str(library), kernel.handle)
    else:
        torch.ops.flash_attention.cuda_load_kernel(str(library), kernel.handle)


def load(device=None, *, kernels=(), verbose: bool = False) -> Path:
    """Load the binding and the kernels named in `kernels` (stems, e.g. "fwd_sm90_hdim128_fp16") for `device`'s
    GPU, building in parallel whatever the cache lacks. Returns the build directory."""
    if not torch.cuda.is_available():
        raise RuntimeError("flash_attention cuda backend: CUDA is not available (no GPU, or a CPU-only torch build)")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise ValueError(
            f"flash_attention cuda backend needs a GPU with compute capability >= 8.0, got {major}.{minor} "
            f"({torch.cuda.get_device_name(device)})"
        )
    arch = f"{major}{minor}"
    wanted = [None, *kernels]  # the binding first: loading a kernel goes through it
    with _lock:
        missing = [stem for stem in wanted if (arch, stem) not in _loaded]
        if missing:
            _ensure_built(arch, missing, verbose)
            for stem in missing:
                try:
                    _load_into_process(arch, stem)
                except (OSError, RuntimeError):
                    # Intact but unloadable (e.g. a system library changed under it): rebuild once.
                    library = library_path(arch, stem)
                    with _file_lock(library.parent.with_suffix(".lock")):
                        shutil.rmtree(library.parent, ignore_errors=True)
                    _ensure_built(arch, [stem], verbose)
                    _load_into_process(arch, stem)
                _loaded.add((arch, stem))
    return build_dir(arch)
