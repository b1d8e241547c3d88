#!/usr/bin/env python
"""Run NVIDIA compute-sanitizer over every kernel backend on small shapes.

    python scripts/sanitize.py                                    # memcheck + racecheck, every backend that runs here
    python scripts/sanitize.py --tools memcheck,racecheck,synccheck,initcheck --backends triton

For each backend that can run on this GPU, a plain (unsanitized) worker runs first: it builds and caches the kernels
outside the sanitizer, and a wrong result there is reported as such. Then, for each tool,
`compute-sanitizer --tool TOOL --error-exitcode 1 python scripts/sanitize.py --worker --backend NAME` runs the same
calls. One summary line per (tool, backend); the exit status is non-zero if any run failed. Without a GPU or without
compute-sanitizer it prints why, says "skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
KERNEL_BACKENDS = ("triton", "cuda")
WORKER_ENV = {
    "FLASH_ATTENTION_AUTOTUNE": "0",  # one fixed tile per head_dim: autotuning would multiply the sanitized launches
    "PYTORCH_NO_CUDA_MEMORY_CACHING": "1",  # real cudaMalloc per tensor, so memcheck sees each allocation's bounds
}
# Per tool, on top of WORKER_ENV. racecheck reports hazards in the triton backend's Gluon kernel between accesses
# that Triton's own warp-specialization dispatch makes to its per-warp state bytes (written by the default warps,
# read by the workers, each side of a `bar.sync 1` of all the CTA's threads), and none on the kernel's buffers
# (H100, Triton 3.6, results/NOTES.md "Triton on Hopper: a Gluon kernel"): its racecheck run takes the portable
# kernel, memcheck runs the Gluon one.
TOOL_ENV = {"racecheck": {"FLASH_ATTENTION_TRITON_KERNEL": "portable"}}
# (batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype, causal, layout): fp16 and bf16, causal or not,
# seqlen_q != seqlen_k both ways (causal rows that see no key), GQA and MQA, odd lengths, decode, a BSHD view; on
# a Hopper GPU the cuda backend runs its SM90 family for head dims 40/64/128/256 and its SM80 family for 96.
WORKER_CASES = [
    (1, 2, 2, 64, 64, 64, "float16", False, "bhsd"),
    (1, 2, 2, 77, 77, 64, "bfloat16", True, "bhsd"),
    (2, 4, 1, 33, 77, 128, "float16", True, "bhsd"),
    (1, 6, 2, 77, 40, 40, "bfloat16", True, "bshd"),
    (1, 4, 2, 77, 129, 128, "bfloat16", False, "bshd"),
    (1, 2, 1, 1, 77, 40, "float16", False, "bhsd"),
    (1, 2, 2, 65, 130, 96, "float16", True, "bhsd"),
    (1, 2, 1, 100, 100, 256, "bfloat16", True, "bhsd"),
    # SM90 causal tiles end at the last query: here shifted by 128 rows, so the first tile's upper warpgroups have
    # no rows and the others skip key tiles their rows do not see.
    (1, 4, 2, 1000, 1000, 64, "float16", True, "bhsd"),
    # More tiles than an H100 has SMs, so CTAs of the SM90 family's persistent grid run several: causal (tiles drawn
    # from the counter, which the last CTA resets for the next call; rows that see no key), no mask with a partial
    # 192-row tile per head (drawn too), and no mask with equal tiles (dealt).
    (1, 16, 4, 2100, 257, 64, "float16", True, "bhsd"),
    (2, 16, 8, 1100, 200, 64, "bfloat16", False, "bhsd"),
    (2, 8, 8, 1100, 200, 128, "bfloat16", False, "bhsd"),
    # Rows of >= 8192 keys at head dim 128: 176-key tiles, O staged in Q's buffer (causal; pairs without a mask).
    (1, 2, 1, 200, 8300, 128, "bfloat16", True, "bhsd"),
    (1, 2, 2, 256, 8192, 128, "float16", False, "bhsd"),
    # Head dim 128 without a mask, query tiles even in number per head, rows of >= 4096 keys: pairs of CTAs share
    # each K/V tile (TMA multicast into both, releases from both), more pairs of tiles than an H100 has pairs of
    # SMs; a partial last key tile; GQA. Causal chunked prefill: both walk the later tile's key tiles, and the first
    # CTA of each pair draws pairs of tiles and hands them to the second through distributed shared memory (176-key
    # tiles; more pairs of tiles than an H100 has pairs of SMs).
    (2, 8, 2, 2304, 4100, 128, "float16", False, "bhsd"),
    (1, 4, 1, 1024, 8200, 128, "float16", True, "bhsd"),
    # The triton backend's Gluon kernel on Hopper (calls of at least 2^32 FLOPs): causal GQA with partial tiles and
    # 144 work tiles, so its persistent CTAs draw tiles from the stream's counter and carry the Q buffers and the
    # K/V ring from tile to tile.
    (2, 8, 2, 1100, 1500, 128, "bfloat16", True, "bhsd"),
    (2, 8, 2, 2048, 4096, 128, "bfloat16", True, "bhsd"),
]


# attention_with_kvcache, for backends with a KV-cache kernel: (batch, heads_q, heads_kv, seqlen_q, capacity,
# head_dim, page_size or None, new tokens, causal, num_splits, cache_seqlens before the append). Split and unsplit,
# paged and contiguous, an empty sequence, more packed rows than one CTA holds; the last two carry values a caller
# must not pass (lengths past the capacity or negative, a page index past the cache): the kernels must stay inside
# the cache.
KVCACHE_CASES = [
    (2, 8, 2, 1, 300, 128, None, 1, False, None, [0, 299]),
    (3, 4, 1, 3, 256, 64, 16, 2, True, 5, [10, 254, 100]),
    (2, 8, 8, 1, 1024, 128, 64, 0, False, None, [1024, 513]),
    (2, 16, 2, 5, 320, 128, 64, 1, True, None, [150, 299]),  # 40 packed rows: a full and a partial 32-row CTA
    (2, 16, 2, 5, 300, 128, None, 0, False, 3, [299, 17]),  # split: 16-row CTAs, the last partial
    (2, 4, 2, 2, 200, 64, None, 4, True, 3, [1 << 30, -7]),
    (2, 4, 2, 1, 256, 64, 64, 2, False, 2, [255, 1 << 20]),
    # 64 K/V sequences: narrow CTAs (four warps), 16 and 32 rows (flash_attention.cuda.decode_launch)
    (8, 32, 8, 1, 512, 128, 64, 1, False, None, [0, 511, 300, 1, 17, 256, 511, 100]),
    (8, 64, 8, 4, 384, 64, None, 2, True, None, [382, 5, 200, 0, 64, 381, 90, 33]),
]


def run_kvcache_cases(backend: str, generator) -> int:
    """The KV-cache cases; the valid ones checked against the naive path on CPU copies. Returns the failures."""
    import torch

    import flash_attention

    failures = 0
    for case in KVCACHE_CASES:
        batch, heads_q, heads_kv, seqlen_q, capacity, head_dim, page_size, new, causal, splits, lengths = case

        def randn(*size):
            return torch.randn(size, generator=generator, device="cuda").to(torch.bfloat16)

        table = None
        if page_size is None:
            key_cache, value_cache = randn(batch, heads_kv, capacity, head_dim), randn(batch, heads_kv, capacity,
                                                                                      head_dim)
        else:
            blocks = capacity // page_size
            key_cache, value_cache = (randn(batch * blocks, heads_kv, page_size, head_dim) for _ in range(2))
            table = torch.randperm(batch * blocks, device="cuda").view(batch, blocks).to(torch.int32)
        valid = all(0 <= n and n + new <= capacity for n in lengths)
        if not valid and table is not None:
            table[-1, -1] = 1 << 24  # a page index past the cache
        seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        query = randn(batch, heads_q, seqlen_q, head_dim)
        key, value = (randn(batch, heads_kv, new, head_dim), randn(batch, heads_kv, new, head_dim)) if new else \
            (None, None)
        cpu = [t.cpu() if t is not None else None for t in (query, key_cache, value_cache, seqlens, table, key, value)]
        kwargs = dict(causal=causal, return_lse=True)
        out, lse = flash_attention.attention_with_kvcache(
            query, key_cache, value_cache, cache_seqlens=seqlens, block_table=table, key=key, value=value,
            num_splits=splits, backend=backend, **kwargs)
        torch.cuda.synchronize()
        if not valid:
            continue  # only that it stayed inside the cache, which the sanitizer judges
        expected, expected_lse = flash_attention.attention_with_kvcache(
            cpu[0], cpu[1], cpu[2], cache_seqlens=cpu[3], block_table=cpu[4], key=cpu[5], value=cpu[6],
            backend="naive", **kwargs)
        error = (out.cpu().float() - expected.float()).abs().max().item()
        caches_match = torch.equal(key_cache.cpu(), cpu[1]) and torch.equal(value_cache.cpu(), cpu[2])
        if not (error <= 2e-2 and caches_match and torch.equal(lse.cpu().isneginf(), expected_lse.isneginf())):
            failures += 1
            print(f"wrong KV-cache result for {case}: max error {error:.3g}, caches match {caches_match}", flush=True)
    return failures


# attention_varlen, for backends with a varlen kernel: (heads_q, heads_kv, head_dim, dtype, causal, query lengths, key
# lengths, cu_seqlens_q override or None). Ragged sequences around the tile heights (a last tile that ends inside
# the tile, whose rows the SM90 epilogue copies out instead of storing by TMA), empty sequences, more tiles than an
# H100 has SMs, causal rows that see no key, one long sequence among many short ones (the Triton kernel's searched
# grid); the last two carry offsets a caller must not pass (decreasing, past the total, negative): the kernels must
# stay inside the tensors.
VARLEN_CASES = [
    (4, 2, 64, "float16", False, [1, 130, 0, 77], [1, 130, 5, 77], None),
    (4, 1, 128, "bfloat16", True, [300, 64, 129, 2], [300, 100, 64, 2], None),
    (8, 8, 128, "bfloat16", True, [2000, 5, 700, 1], [2000, 5, 700, 1], None),
    (2, 2, 256, "float16", True, [90, 10], [50, 10], None),
    (4, 2, 128, "bfloat16", True, [700] + [3, 0, 1] * 10, [650] + [3, 2, 1] * 10, None),
    (4, 2, 64, "bfloat16", True, [60, 60, 60], [60, 60, 60], [0, 60, 1 << 30, -4]),
    (4, 2, 64, "float16", False, [600] + [1] * 20, [600] + [1] * 20, [0, 600, -4, 1 << 30] + list(range(601, 619))),
]


def run_varlen_cases(backend: str, generator) -> int:
    """The varlen cases; the valid ones checked against the naive path on CPU copies. Returns the failures."""
    import torch

    import flash_attention

    failures = 0
    for case in VARLEN_CASES:
        heads_q, heads_kv, head_dim, dtype_name, causal, lengths_q, lengths_k, broken = case
        dtype = getattr(torch, dtype_name)

        def packed(total, heads):
            return torch.randn(total, heads, head_dim, generator=generator, device="cuda").to(dtype)

        def offsets(lengths):
            return torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32,
                                device="cuda")

        query = packed(sum(lengths_q), heads_q)
        key, value = packed(sum(lengths_k), heads_kv), packed(sum(lengths_k), heads_kv)
        cu_q, cu_k = offsets(lengths_q), offsets(lengths_k)
        if broken is not None:
            cu_q = torch.tensor(broken, dtype=torch.int32, device="cuda")
        args = (query, key, value, cu_q, cu_k, max(lengths_q), max(lengths_k))
        out, lse = flash_attention.attention_varlen(*args, causal=causal, return_lse=True, backend=backend)
        torch.cuda.synchronize()
        if broken is not None:
            continue  # only that it stayed inside the tensors, which the sanitizer judges
        cpu = [t.cpu() if isinstance(t, torch.Tensor) else t for t in args]
        expected, expected_lse = flash_attention.attention_varlen(*cpu, causal=causal, return_lse=True,
                                                                  backend="naive")
        rows = int(cu_q[-1])
        error = (out[:rows].cpu().float() - expected[:rows].float()).abs().max().item()
        if not (error <= 2e-2 and torch.equal(lse[:, :rows].cpu().isneginf(), expected_lse[:, :rows].isneginf())):
            failures += 1
            print(f"wrong varlen result for {case}: max error {error:.3g}", flush=True)
    return failures


def find_sanitizer() -> str | None:
    candidates = [shutil.which("compute-sanitizer")]
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root, "bin", "compute-sanitizer")))
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def run_worker(backend: str) -> int:
    """The sanitized program: a few small calls, each checked loosely against float64 (poisoned outputs)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    import flash_attention
    from flash_attention import _validation
    from reference import assert_attention_close

    _validation.POISON_OUTPUTS = True  # NaN-filled outputs: an element the kernel never writes fails the check
    generator = torch.Generator(device="cuda").manual_seed(0)
    failures = 0
    for case in WORKER_CASES:
        batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, dtype_name, causal, layout = case
        dtype = getattr(torch, dtype_name)

        def make(heads, seqlen):
            if layout == "bshd":
                shape = (batch, seqlen, heads, head_dim)
                return torch.randn(shape, generator=generator, device="cuda").to(dtype).transpose(1, 2)
            return torch.randn(batch, heads, seqlen, head_dim, generator=generator, device="cuda").to(dtype)

        query, key, value = make(heads_q, seqlen_q), make(heads_kv, seqlen_k), make(heads_kv, seqlen_k)
        out, lse = flash_attention.attention(query, key, value, causal=causal, return_lse=True, backend=backend)
        torch.cuda.synchronize()
        try:
            # The reference runs on the CPU, so that the sanitizer sees only our kernels (and torch's elementwise
            # ones): racecheck reports hazards inside cuBLAS's own Hopper GEMMs (nvjet_sm90_*), which a GPU
            # reference would launch.
            on_cpu = [tensor.cpu() for tensor in (out, lse, query, key, value)]
            assert_attention_close(*on_cpu, causal=causal, multiple=4.0)
        except AssertionError as error:
            failures += 1
            print(f"wrong result for {case}: {error}", flush=True)
    print(f"worker {backend}: {len(WORKER_CASES) - failures}/{len(WORKER_CASES)} calls correct", flush=True)
    if hasattr(flash_attention._MODULES.get(backend), "run_kvcache_validated"):
        kvcache_failures = run_kvcache_cases(backend, generator)
        print(f"worker {backend}: {len(KVCACHE_CASES) - kvcache_failures}/{len(KVCACHE_CASES)} KV-cache calls "
              f"correct or inside the cache", flush=True)
        failures += kvcache_failures
    if hasattr(flash_attention._MODULES.get(backend), "run_varlen_validated"):
        varlen_failures = run_varlen_cases(backend, generator)
        print(f"worker {backend}: {len(VARLEN_CASES) - varlen_failures}/{len(VARLEN_CASES)} varlen calls correct or "
              f"inside the tensors", flush=True)
        failures += varlen_failures
    return 1 if failures else 0


def worker_command(backend: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend]


def run_logged(command: list[str], timeout: float, tool_env: dict | None = None) -> tuple[int, str]:
    env = {**os.environ, **WORKER_ENV, **(tool_env or {})}
    env.pop("TRITON_INTERPRET", None)  # the point is the compiled kernel on the GPU
    try:
        done = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):  # TimeoutExpired keeps bytes even with text=True
            output = output.decode(errors="replace")
        return 124, output + f"\ntimed out after {timeout:.0f} s"
    return done.returncode, done.stdout


def summary_line(log: str) -> str:
    """The sanitizer's last summary ("ERROR SUMMARY: 0 errors", racecheck's "RACECHECK SUMMARY: ...")."""
    summaries = [line.strip("= \t") for line in log.splitlines() if "SUMMARY" in line]
    return summaries[-1] if summaries else "no sanitizer summary in the output"


def print_tail(log: str, lines: int = 40) -> None:
    print("    | " + "\n    | ".join(log.rstrip().splitlines()[-lines:]))


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} takes a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default="memcheck,racecheck",
                        type=lambda text: parse_list(text, TOOLS, "--tools"), help=f"any of {','.join(TOOLS)}")
    parser.add_argument("--backends", default=",".join(KERNEL_BACKENDS),
                        type=lambda text: parse_list(text, KERNEL_BACKENDS, "--backends"),
                        help=f"any of {','.join(KERNEL_BACKENDS)}")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per sanitizer run (default 1800)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the program being sanitized
    parser.add_argument("--backend", choices=KERNEL_BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.backend is None:
            parser.error("--worker needs --backend")
        return run_worker(args.backend)

    import torch

    if not torch.cuda.is_available():
        print("sanitize: skipped: no CUDA GPU (compute-sanitizer checks kernels running on a GPU)")
        return 0
    sanitizer = find_sanitizer()
    if sanitizer is None:
        print("sanitize: skipped: compute-sanitizer not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin")
        return 0

    import flash_attention

    probe = torch.empty(1, device="cuda")
    backends = []
    for name in args.backends:
        reason = flash_attention.backend_unavailable_reason(name, probe)
        if reason is None:
            backends.append(name)
        else:
            print(f"sanitize: backend {name} skipped: {reason}")
    if not backends:
        print("sanitize: skipped: no kernel backend can run on this GPU")
        return 0

    print(f"sanitize: {sanitizer} on {torch.cuda.get_device_name()}; tools {','.join(args.tools)}", flush=True)
    failed = False
    for backend in backends:
        status, log = run_logged(worker_command(backend), args.timeout)  # builds kernels; checks results unsanitized
        if status != 0:
            failed = True
            print(f"FAIL  plain      {backend:<7} worker exited {status} without a sanitizer")
            print_tail(log)
            continue
        for tool in args.tools:
            command = [sanitizer, "--tool", tool, "--error-exitcode", "1", *worker_command(backend)]
            status, log = run_logged(command, args.timeout, TOOL_ENV.get(tool))
            verdict = "PASS" if status == 0 else "FAIL"
            print(f"{verdict}  {tool:<10} {backend:<7} {summary_line(log)}", flush=True)
            if status != 0:
                failed = True
                print_tail(log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
