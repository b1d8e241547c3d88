"""The thin JIT loader of the CUDA backend: build once per (sources, flags, torch, CUDA, GPU arch), cache per user.

Importing this module builds nothing. :func:`load` builds on first use (2-3 minutes on 16 cores: one nvcc process per
``csrc/fwd_*.cu``, run in parallel by ninja; the ``fwd_sm90_*`` files only on compute capability 9.0) for the GPU
in hand only, into
``<cache>/sm<XY>-<key>/`` where ``<cache>`` is ``$FLASH_ATTENTION_CACHE``, else ``$XDG_CACHE_HOME/flash_attention``,
else ``~/.cache/flash_attention``, and ``<key>`` hashes the sources' contents, the flags, the torch and CUDA versions
and the arch. Later processes load the cached library in a fraction of a second. Two processes building at once
serialise on a file lock. A finished build records the library's size and sha256; a cached library that does not
match (truncated, corrupt) is wiped and rebuilt before it is loaded, and one that fails to load is rebuilt once.
"""

from __future__ import annotations

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

CSRC = Path(__file__).resolve().parent / "csrc"
REPO = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "flash_attention_cuda"
_OK_MARKER = "BUILD_OK"

HOST_FLAGS = ["-O3", "-std=c++17"]
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

_loaded: dict[str, Path] = {}  # arch -> library loaded into this process
_lock = threading.Lock()


# ----------------------------------------------------------------------------------------------- finding things
def cache_root() -> Path:
    if os.environ.get("FLASH_ATTENTION_CACHE"):
        return Path(os.environ["FLASH_ATTENTION_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "flash_attention"


def find_cutlass_include() -> Path | None:
    """CUTLASS headers: $CUTLASS_PATH/include, else third_party/cutlass, else the nvidia-cutlass wheel."""
    env = os.environ.get("CUTLASS_PATH")
    if env:
        include = Path(env).expanduser() / "include"
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
    env = os.environ.get("CUTLASS_PATH")
    if env:
        return f"CUTLASS_PATH={env} has no include/cute/tensor.hpp"
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


def has_sm90_kernels(arch: str) -> bool:
    """The wgmma/TMA kernel family runs on compute capability 9.0 only (sm_90a code is not forward compatible)."""
    return arch == "90"


def arch_flags(arch: str) -> list[str]:
    # Only the GPU in hand. On 9.0 everything builds as sm_90a, the architecture-specific target that wgmma and
    # setmaxnreg need (the SM80 kernels run there unchanged, for the head dims the SM90 family does not cover).
    if has_sm90_kernels(arch):
        return ["-gencode=arch=compute_90a,code=sm_90a"]
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def host_flags(arch: str) -> list[str]:
    """The binding (the only host-compiled unit) learns here whether the SM90 units are in the build."""
    if not has_sm90_kernels(arch):
        return HOST_FLAGS
    return HOST_FLAGS + ["-DFLASH_ATTENTION_SM90"]


def source_files(arch: str) -> list[Path]:
    """Translation units for `arch`: the SM80 kernel files, the SM90 ones on 9.0, and the torch binding."""
    kernels = [p for p in sorted(CSRC.glob("*.cu")) if has_sm90_kernels(arch) or not p.name.startswith("fwd_sm90_")]
    return kernels + sorted(CSRC.glob("*.cpp"))


@functools.lru_cache(maxsize=None)
def cache_key(arch: str) -> str:
    """Hash of everything that changes the built library: sources and headers, flags, torch, CUDA, Python, arch.
    Computed once per process: `is_built` asks on every `auto` call until the library is loaded."""
    h = hashlib.sha256()
    for path in sorted(p for p in CSRC.rglob("*") if p.is_file()):
        h.update(path.relative_to(CSRC).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (host_flags(arch), NVCC_FLAGS, arch_flags(arch)):
        h.update(" ".join(part).encode() + b"\0")
    h.update(f"torch={torch.__version__} cuda={torch.version.cuda} py={sys.version_info[:2]} arch={arch}".encode())
    return h.hexdigest()[:16]


def build_dir(arch: str) -> Path:
    return cache_root() / f"sm{arch}-{cache_key(arch)}"


def library_path(arch: str) -> Path:
    return build_dir(arch) / f"{EXTENSION_NAME}.so"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_marker(directory: Path) -> None:
    library = directory / f"{EXTENSION_NAME}.so"
    record = {"size": library.stat().st_size, "sha256": _digest(library), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    (directory / _OK_MARKER).write_text(json.dumps(record) + "\n")


def _marker_matches(directory: Path, *, check_digest: bool) -> bool:
    """The cached library is the one a finished build wrote: same size (and sha256 if asked). A truncated library
    must never reach dlopen: mapping past the end of a short file kills the process with SIGBUS, not an OSError."""
    library = directory / f"{EXTENSION_NAME}.so"
    try:
        record = json.loads((directory / _OK_MARKER).read_text())
        if library.stat().st_size != record["size"]:
            return False
        return not check_digest or _digest(library) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def is_built(arch: str) -> bool:
    """True if this process has the library loaded, or a complete build sits in the cache (no build needed)."""
    return arch in _loaded or _marker_matches(build_dir(arch), check_digest=False)


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


def _build(arch: str, directory: Path, verbose: bool) -> None:
    from torch.utils import cpp_extension

    nvcc = find_nvcc()
    if nvcc is None:
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
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))  # ninja: all translation units in parallel
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(p) for p in source_files(arch)],
        extra_cflags=host_flags(arch),
        extra_cuda_cflags=NVCC_FLAGS + arch_flags(arch),
        extra_include_paths=[str(include), str(CSRC)],
        build_directory=str(directory),
        is_python_module=False,  # the library registers flash_attention::cuda_fwd with the dispatcher
        verbose=verbose,
    )


def load(device=None, *, verbose: bool = False) -> Path:
    """Load the extension for `device`'s GPU, building it first if no complete build is cached. Returns its path."""
    if not torch.cuda.is_available():
        raise RuntimeError("flash_attention cuda backend: CUDA is not available (no GPU, or a CPU-only torch build)")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise ValueError(
            f"flash_attention cuda backend needs a GPU with compute capability >= 8.0, got {major}.{minor} "
            f"({torch.cuda.get_device_name(device)})"
        )
    arch = f"{major}{minor}"
    with _lock:
        if arch in _loaded:
            return _loaded[arch]
        directory = build_dir(arch)
        library = directory / f"{EXTENSION_NAME}.so"
        with _file_lock(directory.parent / f"{directory.name}.lock"):
            for attempt in range(2):
                if not _marker_matches(directory, check_digest=True):
                    # No finished build, or a truncated / altered library: start from a clean directory.
                    shutil.rmtree(directory, ignore_errors=True)
                    _build(arch, directory, verbose)
                    _write_marker(directory)
                try:
                    torch.ops.load_library(str(library))  # no-op if cpp_extension.load already loaded it
                    break
                except (OSError, RuntimeError):
                    if attempt == 1:
                        raise
                    # Intact but unloadable (e.g. a system library changed under it): rebuild once.
                    shutil.rmtree(directory, ignore_errors=True)
        _loaded[arch] = library
        return library
