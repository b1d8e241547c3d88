#!/usr/bin/env python
"""Compile the triton backend's Gluon kernel (kernels/triton/_hopper_kernel.py) for sm_90 without a GPU and check it.

    python scripts/check_gluon_compile.py

For head dims 64 and 128, fp16 and bf16, causal or not (rows of 1000 keys; and head dim 64's two-stage K/V ring,
which rows of more than SM90_DEEP_RING_KEYS keys take, in one dtype): it compiles with the installed Triton, fits an
H100's shared memory, spills no register, and its SASS has the warpgroup MMAs of both products (S = Q K^T over
BLOCK_N keys; O += P V with P from registers), the TMA loads, the output's TMA store and, causal, the dynamic deal's
atomic draws. One line per variant; exit status 1 if any fails. The Triton interpreter must be off (TRITON_INTERPRET
unset): it replaces jit functions.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

SHARED_MEMORY_LIMIT = 232448  # an H100's shared memory per block (227 KiB)


def variants() -> list[tuple[int, torch.dtype, bool, int]]:
    """(head dim, dtype, causal, keys a row sees): every head dim, dtype and mask on rows of 1000 keys, and head dim
    64's two-stage ring on rows past SM90_DEEP_RING_KEYS in one dtype."""
    import flash_attention.triton as backend

    long_rows = backend.SM90_DEEP_RING_KEYS + 1
    return [*itertools.product((64, 128), (torch.float16, torch.bfloat16), (False, True), (1000,)),
            *itertools.product((64,), (torch.bfloat16,), (False, True), (long_rows,))]


def compile_for_sm90(head_dim: int, dtype: torch.dtype, causal: bool, seqlen_k: int = 1000):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    import flash_attention.triton as backend

    kernel = backend._hopper_kernel.attention_fwd_sm90_kernel
    query = torch.empty(2, 4, 1000, head_dim, dtype=dtype)  # CPU tensors: only shapes, strides and alignment count
    key = torch.empty(2, 2, seqlen_k, head_dim, dtype=dtype)
    lse = torch.empty(2, 4, 1000, dtype=torch.float32)
    # One CTA for the 16 tiles: a persistent grid, whose causal calls take the dynamic deal.
    args, options, _ = backend.sm90_launch_arguments(query, key, key, query, lse, causal=causal,
                                                     softmax_scale=head_dim ** -0.5, stream=0, ctas=1)
    names = [param.name for param in kernel.params]
    signature = {name: mangle_type(arg) for name, arg in zip(names, args)}
    constexprs = {name: options[name] for name in names[len(args):]}
    signature.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(GluonASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": options["num_warps"], "maxnreg": options["maxnreg"]})
    return compiled, backend.SM90_BLOCK_N


def disassemble(cubin: bytes) -> str:
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True).stdout


def check(head_dim: int, dtype: torch.dtype, causal: bool, seqlen_k: int = 1000) -> list[str]:
    compiled, block_n = compile_for_sm90(head_dim, dtype, causal, seqlen_k)
    sass = disassemble(compiled.asm["cubin"])
    problems = []
    if compiled.metadata.shared > SHARED_MEMORY_LIMIT:
        problems.append(f"{compiled.metadata.shared} bytes of shared memory")
    if "STL" in sass or "LDL" in sass:
        problems.append("register spills (local memory)")
    expected = {f"HGMMA.64x{block_n}x16.F32": "the S product", f"HGMMA.64x{head_dim}x16.F32": "the P V product",
                ".tnspB": "V as a transposed B operand", "UTMALDG.4D": "TMA loads", "UTMASTG.4D": "the TMA store"}
    if causal:  # a persistent grid's causal tiles are drawn from the tile counter
        expected["ATOMG.E.ADD"] = "the dynamic deal's draws"
    problems += [f"no {text} ({pattern})" for pattern, text in expected.items() if pattern not in sass]
    return problems, compiled.metadata.shared, sass.count("HGMMA")


def main() -> int:
    failed = False
    print(f"Gluon kernel for sm_90, Triton {triton.__version__}")
    import flash_attention.triton as backend

    for head_dim, dtype, causal, seqlen_k in variants():
        problems, shared, hgmma = check(head_dim, dtype, causal, seqlen_k)
        name = (f"d{head_dim} {str(dtype).removeprefix('torch.')} {'causal' if causal else 'full'} "
                f"{backend.sm90_stages(head_dim, seqlen_k)} stages")
        verdict = "FAIL" if problems else "ok"
        print(f"{verdict:<4} {name:<31} shared {shared} bytes, {hgmma} HGMMA, {'; '.join(problems) or 'no spills'}",
              flush=True)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
