"""CUDA backend: loader, cache key, errors and the op's fake implementation. Needs no GPU (and no build)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import flash_attention
import flash_attention.cuda as fa_cuda
from flash_attention import _settings
from flash_attention.cuda import _loader, _registry


def test_finds_cutlass_headers():
    include = _loader.find_cutlass_include()
    if include is None:
        pytest.skip(_loader.cutlass_missing_reason())
    assert (include / "cute" / "tensor.hpp").is_file()


def test_cutlass_path_setting_wins(settings, tmp_path):
    (tmp_path / "include" / "cute").mkdir(parents=True)
    (tmp_path / "include" / "cute" / "tensor.hpp").write_text("// stub\n")
    settings(cutlass_path=tmp_path)
    assert _loader.find_cutlass_include() == tmp_path / "include"
    settings(cutlass_path=tmp_path / "nowhere")
    assert _loader.find_cutlass_include() is None
    assert "CUTLASS_PATH" in _loader.cutlass_missing_reason()


def test_cache_key_is_stable_and_arch_specific():
    assert _loader.cache_key("80") == _loader.cache_key("80")
    assert _loader.cache_key("80") != _loader.cache_key("90")
    assert len(_loader.cache_key("80")) == 16


def test_cache_dir_follows_the_environment(settings, tmp_path):
    settings(cache_dir=tmp_path / "fa")
    assert _loader.build_dir("80").parent == tmp_path / "fa"
    assert _settings.from_environment({"FLASH_ATTENTION_CACHE": str(tmp_path / "fa")}).cache_dir == tmp_path / "fa"
    xdg = _settings.from_environment({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert xdg.cache_dir == tmp_path / "xdg" / "flash_attention"


def test_settings_refuse_values_outside_their_choices():
    assert _settings.from_environment({}) == _settings.from_environment({"FLASH_ATTENTION_SM90_SCHEDULER": "auto"})
    for name, value in (("FLASH_ATTENTION_CUDA_KERNEL", "sm70"), ("FLASH_ATTENTION_SM90_SCHEDULER", "greedy"),
                        ("FLASH_ATTENTION_SM90_CLUSTER", "on"), ("FLASH_ATTENTION_TMA", "no"),
                        ("FLASH_ATTENTION_TRITON_KERNEL", "gluon"), ("MAX_JOBS", "0")):
        with pytest.raises(ValueError, match=name):
            _settings.from_environment({name: value})


def test_the_environment_is_read_in_one_module_only():
    """Every option has one reader: flash_attention._settings, at import (the CUDA sources read none at all)."""
    package = Path(flash_attention.__file__).parent
    readers = sorted(path.relative_to(package).as_posix() for path in package.rglob("*.py")
                     if re.search(r"os\.environ|os\.getenv", path.read_text()))
    assert readers == ["_settings.py"]
    for path in (package / "cuda" / "csrc").iterdir():
        assert "getenv" not in path.read_text(), path.name


def test_every_registered_kernel_is_one_library_of_its_family_source():
    for arch in ("80", "86", "89", "90", "100"):
        stems = _loader.kernel_stems(arch)
        assert len(set(stems)) == len(stems)
        for d in (32, 64, 96, 128, 160, 192, 256):
            for t in ("fp16", "bf16"):
                for mask in ("", "_causal"):
                    assert f"fwd_hdim{d}_{t}{mask}" in stems
                    # The wgmma family is sm_90a code: built for compute capability 9.0 and nowhere else.
                    sm90 = f"fwd_sm90_hdim{d}_{t}{mask}" in stems
                    assert sm90 == (arch == "90" and d in (64, 128, 256)), (arch, d)
        assert sorted(stem for stem in stems if stem.startswith("decode_")) == sorted(
            f"decode_hdim{d}_{t}" for d in (64, 128, 256) for t in ("fp16", "bf16"))
        assert len(stems) == 28 + (12 if arch == "90" else 0) + 6
        assert len({_loader.library_path(arch, stem) for stem in [None, *stems]}) == len(stems) + 1
    assert "-gencode=arch=compute_90a,code=sm_90a" in _loader.arch_flags("90")
    # One translation unit per family, each built with the kernel's -D flags (no file per instantiation), and a
    # handle per kernel: its index, which the binding files its entry under.
    for handle, kernel in enumerate(_registry.KERNELS):
        assert kernel.handle == handle and _registry.by_stem(kernel.stem) is kernel
        assert (_loader.CSRC / kernel.family.source).is_file()
        assert f"-DFLASH_HEAD_DIM={kernel.head_dim}" in kernel.defines
        assert any(flag.startswith("-DFLASH_CAUSAL") for flag in kernel.defines) == (kernel.causal is not None)
    assert sorted(path.name for path in _loader.CSRC.glob("*.cu")) == ["decode.cu", "fwd_sm80.cu", "fwd_sm90.cu"]
    # Kernel translation units must compile without torch (CI builds them with nvcc + CUTLASS only).
    for path in _loader.CSRC.iterdir():
        if path.suffix in (".cu", ".h", ".cuh") and path.name != "binding.cpp":
            text = path.read_text()
            assert "#include <torch" not in text and "#include <ATen" not in text, path.name


def test_the_registry_selects_each_calls_kernel():
    assert fa_cuda.kernel_stem((9, 0), 128, torch.float16, False) == "fwd_sm90_hdim128_fp16"
    assert fa_cuda.kernel_stem((9, 0), 40, torch.bfloat16, True) == "fwd_sm90_hdim64_bf16_causal"
    assert fa_cuda.kernel_stem((9, 0), 32, torch.float16, False) == "fwd_hdim32_fp16"
    assert fa_cuda.kernel_stem((8, 0), 72, torch.bfloat16, True) == "fwd_hdim96_bf16_causal"
    assert fa_cuda.kernel_stem((10, 0), 128, torch.float16, False) == "fwd_hdim128_fp16"
    assert fa_cuda.kernel_stem((9, 0), 128, torch.float16, False, "sm80") == "fwd_hdim128_fp16"
    with pytest.raises(ValueError, match="kernel_family='sm90'"):
        fa_cuda.kernel_stem((9, 0), 96, torch.float16, False, "sm90")
    with pytest.raises(ValueError, match="kernel_family='sm90'"):
        fa_cuda.kernel_stem((8, 0), 128, torch.float16, False, "sm90")
    assert _registry.decode_kernel(80, torch.bfloat16).stem == "decode_hdim128_bf16"
    assert _registry.varlen_kernel(40, torch.float16, True).stem == "fwd_sm90_hdim64_fp16_causal"
    for major_minor, arch in (((8, 0), "80"), ((9, 0), "90")):
        stems = set(_loader.kernel_stems(arch))
        for head_dim in range(8, 257, 8):
            for dtype in (torch.float16, torch.bfloat16):
                for causal in (False, True):
                    assert fa_cuda.kernel_stem(major_minor, head_dim, dtype, causal) in stems


def test_build_without_nvcc_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "find_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="nvcc not found"):
        _loader._build("80", "fwd_hdim64_fp16", tmp_path / "build", verbose=False)


def test_build_without_cutlass_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "find_nvcc", lambda: "/usr/bin/true")
    monkeypatch.setattr(_loader, "find_cutlass_include", lambda: None)
    with pytest.raises(RuntimeError, match="CUTLASS"):
        _loader._build("80", None, tmp_path / "build", verbose=False)


def test_unavailable_on_cpu_and_never_builds(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("unavailable_reason must not build")

    monkeypatch.setattr(_loader, "_build", no_build)
    reason = fa_cuda.unavailable_reason(torch.zeros(1, 1, 1, 8, dtype=torch.float16))
    assert isinstance(reason, str) and "CUDA" in reason
    assert fa_cuda.auto_eligible(torch.zeros(1, 1, 1, 8, dtype=torch.float16)) is False


def test_attention_on_cpu_refuses_with_value_error():
    q = torch.randn(1, 2, 3, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        fa_cuda.attention(q, q, q)
    with pytest.raises(TypeError):  # validation first: same messages as every backend
        fa_cuda.attention(q.float(), q.float(), q.float())


def test_load_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _loader.load()


def _fake_gpu(monkeypatch, tmp_path):
    """A pretend SM80 GPU whose builds write a small file and whose loads read it back: (builds, loads) record
    which library was built and what was loaded, in order."""
    monkeypatch.setattr(_settings, "current", dataclasses.replace(_settings.current, cache_dir=tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(_loader, "_loaded", set())
    builds, loads = [], []

    def fake_build(arch, stem, where, verbose):
        builds.append(stem)
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{_loader.library_name(stem)}.so").write_bytes(b"a complete library")

    def fake_load(arch, stem):
        loads.append((stem, _loader.library_path(arch, stem).read_bytes()))
        if loads[-1][1] == b"unloadable":
            raise OSError("undefined symbol")

    monkeypatch.setattr(_loader, "_build", fake_build)
    monkeypatch.setattr(_loader, "_load_into_process", fake_load)
    return builds, loads


KERNEL = "fwd_hdim64_fp16"


def test_a_call_builds_the_binding_and_its_kernel_only_then_loads_from_cache(monkeypatch, tmp_path):
    builds, loads = _fake_gpu(monkeypatch, tmp_path)
    assert not _loader.is_built("80") and not _loader.is_built("80", (KERNEL,))
    _loader.load(kernels=(KERNEL,))
    assert set(builds) == {None, KERNEL} and len(builds) == 2
    assert loads == [(None, b"a complete library"), (KERNEL, b"a complete library")]  # the binding first
    assert _loader.is_built("80", (KERNEL,)) and not _loader.is_built("80", ("fwd_hdim64_fp16_causal",))
    _loader.load(kernels=(KERNEL,))
    assert len(builds) == 2 and len(loads) == 2  # loaded in this process: nothing to do
    _loader.load(kernels=("fwd_hdim64_fp16_causal",))  # another kernel: built and loaded alone
    assert builds[2:] == ["fwd_hdim64_fp16_causal"] and loads[2:] == [("fwd_hdim64_fp16_causal", b"a complete library")]
    monkeypatch.setattr(_loader, "_loaded", set())  # a new process: the cached builds are loaded, not rebuilt
    assert _loader.is_built("80", (KERNEL,))
    _loader.load(kernels=(KERNEL,))
    assert len(builds) == 3 and [stem for stem, _ in loads[3:]] == [None, KERNEL]


def test_missing_libraries_build_in_parallel(monkeypatch, settings, tmp_path):
    _fake_gpu(monkeypatch, tmp_path)
    running, peak = [0], [0]
    lock = threading.Lock()

    def slow_build(arch, stem, where, verbose):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{_loader.library_name(stem)}.so").write_bytes(b"a complete library")
        with lock:
            running[0] -= 1

    monkeypatch.setattr(_loader, "_build", slow_build)
    settings(max_jobs=3)
    _loader.load(kernels=_loader.kernel_stems("80")[:5])
    assert peak[0] == 3  # MAX_JOBS at once, never more
    assert _loader.is_built("80", _loader.kernel_stems("80")[:5])


def test_a_failed_build_is_reported_and_leaves_no_complete_record(monkeypatch, tmp_path):
    _fake_gpu(monkeypatch, tmp_path)

    def failing_build(arch, stem, where, verbose):
        where.mkdir(parents=True, exist_ok=True)
        if stem is not None:
            raise RuntimeError("Error building extension 'flash_attention_fwd_hdim64_fp16'")
        (where / f"{_loader.library_name(stem)}.so").write_bytes(b"a complete library")

    monkeypatch.setattr(_loader, "_build", failing_build)
    with pytest.raises(RuntimeError, match="Error building extension"):
        _loader.load(kernels=(KERNEL,))
    assert _loader.is_built("80") and not _loader.is_built("80", (KERNEL,))


def test_truncated_cached_library_is_rebuilt_before_loading(monkeypatch, tmp_path):
    # dlopen of a truncated library can die with SIGBUS, so the size/sha256 record must catch it first.
    builds, loads = _fake_gpu(monkeypatch, tmp_path)
    _loader.load(kernels=(KERNEL,))
    _loader.library_path("80", KERNEL).write_bytes(b"a compl")
    monkeypatch.setattr(_loader, "_loaded", set())
    assert _loader.is_built("80") and not _loader.is_built("80", (KERNEL,))
    _loader.load(kernels=(KERNEL,))
    assert builds[2:] == [KERNEL] and loads[2:] == [(None, b"a complete library"), (KERNEL, b"a complete library")]


def test_unloadable_cached_library_is_rebuilt_once(monkeypatch, tmp_path):
    builds, loads = _fake_gpu(monkeypatch, tmp_path)
    library = _loader.library_path("80")
    library.parent.mkdir(parents=True)
    library.write_bytes(b"unloadable")
    _loader._write_marker(library)
    _loader.load()
    assert builds == [None] and loads == [(None, b"unloadable"), (None, b"a complete library")]


def test_a_kernel_is_loaded_once_per_process_and_again_when_its_family_switches(monkeypatch):
    """The per-call fast path: after the first call of a kind, the loader (and the capability check) is skipped,
    unless the kernel_family option, which picks the kernel family, changes."""
    from types import SimpleNamespace

    monkeypatch.setattr(fa_cuda, "_ready_kernels", {})
    monkeypatch.setattr(fa_cuda, "capability", lambda query: (9, 0))
    loads = []
    monkeypatch.setattr(_loader, "load", lambda device, kernels: loads.append(kernels))
    query = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float16, shape=(1, 2, 8, 64))
    options = _registry.launch_options()
    for _ in range(3):
        assert fa_cuda._forward_kernel(query, False, options).stem == "fwd_sm90_hdim64_fp16"
    assert loads == [("fwd_sm90_hdim64_fp16",)]
    fa_cuda._forward_kernel(query, True, options)  # another kernel (the causal one)
    fa_cuda._forward_kernel(query, True, _registry.launch_options(kernel_family="sm80"))  # the other family
    assert loads == [("fwd_sm90_hdim64_fp16",), ("fwd_sm90_hdim64_fp16_causal",), ("fwd_hdim64_fp16_causal",)]
    monkeypatch.setattr(fa_cuda, "capability", lambda query: (7, 5))
    with pytest.raises(ValueError, match="compute capability >= 8.0"):
        fa_cuda._forward_kernel(SimpleNamespace(**{**vars(query), "shape": (1, 2, 8, 128)}), False, options)


def test_launch_options_name_what_they_refuse():
    assert _registry.launch_options() is _registry.DEFAULT_OPTIONS
    assert _registry.launch_options(sm90_schedule="per-tile").sm90_schedule == _registry.Sm90Schedule.PER_TILE
    with pytest.raises(ValueError, match="sm90_schedule"):
        _registry.launch_options(sm90_schedule="greedy")
    with pytest.raises(ValueError, match="kernel_family"):
        _registry.launch_options(kernel_family="sm70")
    with pytest.raises(TypeError, match="sm90_cta_pairs"):
        _registry.launch_options(sm90_cta_pairs="off")
    q = torch.randn(1, 2, 3, 16, dtype=torch.float16)
    with pytest.raises(TypeError, match="sm90_schedul"):  # a backend without the option names it
        flash_attention.naive.attention(q, q, q, sm90_schedule="static")


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_fake_impl_shapes_dtypes_and_layout(layout):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        if layout == "bhsd":
            q = torch.empty(2, 8, 33, 72, dtype=torch.bfloat16, device="cuda")
        else:
            q = torch.empty(2, 33, 8, 72, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
        k = torch.empty(2, 2, 50, 72, dtype=torch.bfloat16, device="cuda")
        out, lse = torch.ops.flash_attention.cuda_fwd(q, k, k, True, 0.125, 0, 0, True)
        assert out.shape == q.shape and out.dtype == q.dtype and out.stride() == q.stride()
        assert lse.shape == (2, 8, 33) and lse.dtype == torch.float32


def test_sm90_family_covers_the_head_dims_that_pad_to_its_instantiations():
    covered = [d for d in range(8, 257, 8) if _registry.sm90_covers(d)]
    assert covered == list(range(40, 65, 8)) + list(range(104, 129, 8)) + list(range(200, 257, 8))
    assert not _registry.sm90_covers(264)


def test_op_schema():
    schema = torch.ops.flash_attention.cuda_fwd.default._schema
    assert [a.name for a in schema.arguments] == ["q", "k", "v", "causal", "softmax_scale", "kernel", "sm90_schedule",
                                                  "sm90_cta_pairs"]
    assert len(schema.returns) == 2


def compile_check_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_cuda_compile.py"
    spec = importlib.util.spec_from_file_location("check_cuda_compile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_cuda_compile_script_is_importable():
    module = compile_check_script()
    assert module.short_name(
        "void flash::flash_fwd_sm80_kernel<flash::FwdKernelTraits<64, 128, 128, 4, cutlass::half_t>, true>(x)"
    ) == "d64 fp16 128x128 4w causal"
    assert module.short_name(
        "void flash::flash_fwd_sm90_kernel<flash::Sm90FwdTraits<128, 128, 128, 2, cutlass::half_t, 2>, false, false, "
        "P>(x)") == "sm90 d128 fp16 128x128 2st cluster2"
    assert module.short_name(
        "void flash::flash_fwd_sm90_kernel<flash::Sm90FwdTraits<64, 192, 128, 3, cutlass::bfloat16_t, 1>, true, "
        "false, P>(x)") == "sm90 d64 bf16 192x128 3st causal"
    assert module.short_name(
        "void flash::flash_fwd_sm90_kernel<flash::Sm90FwdTraits<256, 128, 64, 2, cutlass::half_t, 1>, true, true, "
        "P>(x)") == "sm90 d256 fp16 128x64 2st causal varlen"
    assert module.short_name("void flash::varlen_tile_list_kernel<192, 64, false>(flash::FwdParams)") == \
        "varlen tile list 192-row tiles"
    assert module.short_name(
        "void flash::decode::decode_kernel<(flash::DType)1, 128, 3, 32, 8>(flash::DecodeParams)") \
        == "decode d128 bf16 3st 32 rows 8w"
    assert module.short_name("void flash::decode::decode_combine_kernel<(flash::DType)0, 64>(flash::DecodeParams)") \
        == "decode combine d64 fp16"
    assert module.smem_bytes(
        "void flash::decode::decode_kernel<(flash::DType)1, 128, 3, 16, 8>(flash::DecodeParams)") == "196 KiB"
    assert module.smem_bytes(
        "void flash::decode::decode_kernel<(flash::DType)1, 128, 3, 16, 4>(flash::DecodeParams)") == "100 KiB"


def test_compile_check_counts_the_exponentials_before_the_wait_for_p_v():
    """The SASS check behind MIN_EXP2_BEFORE_PV_WAIT: per steady step (a wait for S with P V in flight), the
    exponentials issued before the wait for every MMA; a wait for all MMAs with no S wait before it (the first key
    tile, the last P V) is not a steady step."""
    module = compile_check_script()
    step = ["HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], RZ, !UPT", "WARPGROUP.DEPBAR.LE gsb0, 0x1",
            "FMNMX.FTZ R9, R29, R0, !PT", "MUFU.EX2 R10, R10", "MUFU.EX2 R12, R12", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
            "MUFU.EX2 R14, R14", "FMUL.FTZ R88, R88, R13"]
    first_tile = ["HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], RZ, !UPT", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
                  "MUFU.EX2 R10, R10"]
    assert module.exp2_before_pv_wait(first_tile + step + step[:2] + step[5:]) == [2, 0]
    assert module.exp2_before_pv_wait(first_tile) == []
    line = "        /*2bb0*/                   MUFU.EX2 R10, R10 ;                                /* 0x0000000a000a7308 */"
    assert module.SASS_INSTRUCTION.search(line)[1] == "MUFU.EX2 R10, R10"
    # The floor applies where sm90_kernel_traits.h's rule releases K after the first exponentials, read from there.
    assert module.releases_k_after_first_terms("sm90 d128 bf16 128x176 2st cluster2")
    assert module.releases_k_after_first_terms("sm90 d256 fp16 128x80 2st causal varlen")
    assert not module.releases_k_after_first_terms("sm90 d256 fp16 128x80 2st")
    assert not module.releases_k_after_first_terms("sm90 d64 bf16 192x128 3st causal")
    assert not module.releases_k_after_first_terms("d128 bf16 128x64 4w causal")


_CONCURRENT_LOADER = """
import sys, time, torch
from flash_attention.cuda import _loader
torch.cuda.is_available = lambda: True
torch.cuda.get_device_capability = lambda device=None: (8, 0)
log = sys.argv[1]

def slow_build(arch, stem, where, verbose):  # long enough that the other process arrives while this one builds
    with open(log, "a") as handle:
        handle.write(f"build-{stem}\\n")
    time.sleep(2)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{_loader.library_name(stem)}.so").write_bytes(b"a complete library")

def load_into_process(arch, stem):
    assert _loader.library_path(arch, stem).read_bytes() == b"a complete library", "loaded an incomplete library"

_loader._build = slow_build
_loader._load_into_process = load_into_process
_loader.load(kernels=["fwd_hdim64_fp16"])
with open(log, "a") as handle:
    handle.write("loaded\\n")
"""


def test_two_processes_loading_from_a_cold_cache_share_one_build(tmp_path):
    """Two processes start on an empty cache at once: both succeed, and the file locks make the second wait for
    the first's builds and load them instead of building again (or loading a half-written library)."""
    log = tmp_path / "log"
    env = {**os.environ, "FLASH_ATTENTION_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_LOADER, str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sorted(log.read_text().split()) == ["build-None", "build-fwd_hdim64_fp16", "loaded", "loaded"]


def test_auto_says_once_that_it_passes_over_an_unbuilt_kernel_and_can_build_on_first_use(monkeypatch):
    """On a GPU where the cuda backend leads but its kernel is not built, `auto` moves on and says so once per process
    with the build command; BUILD_ON_FIRST_USE lets it take the kernel (the call then builds it)."""
    import warnings

    query = torch.empty(1, 4, 256, 128, dtype=torch.float16)
    monkeypatch.setattr(fa_cuda, "unavailable_reason", lambda query=None: None)
    monkeypatch.setattr(fa_cuda, "capability", lambda query=None: (9, 0))
    monkeypatch.setattr(_loader, "is_built", lambda arch, kernels=(): False)
    monkeypatch.setattr(fa_cuda, "_told_unbuilt", False)
    monkeypatch.setattr(fa_cuda, "BUILD_ON_FIRST_USE", False)
    with pytest.warns(UserWarning, match=r"fwd_sm90_hdim128_fp16 is not built.*python -m flash_attention\.cuda\.build"):
        assert not fa_cuda.auto_eligible(query, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fa_cuda.auto_eligible(query, True)  # said once per process
        monkeypatch.setattr(fa_cuda, "BUILD_ON_FIRST_USE", True)
        assert fa_cuda.auto_eligible(query, False)
    # A head dim the Hopper family does not cover is not the cuda backend's to take: nothing to say.
    monkeypatch.setattr(fa_cuda, "_told_unbuilt", False)
    monkeypatch.setattr(fa_cuda, "BUILD_ON_FIRST_USE", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fa_cuda.auto_eligible(torch.empty(1, 4, 256, 96, dtype=torch.float16), False)
