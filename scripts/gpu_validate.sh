#!/usr/bin/env bash
# What a change needs on a GPU before it is called done, in one place:
#   scripts/gpu_validate.sh OUTDIR build|tests|sanitize|bench-seed|bench-paper|bench-families|bench-decode|bench-host|memory
# build: from a clean cache, a first cuda call (timed), then every kernel (timed), then a cached first call in a
# fresh process (timed);
# tests: the whole suite on CUDA tensors; sanitize: compute-sanitizer memcheck + racecheck on every kernel;
# bench-*: the repo's benchmark commands, writing their tables under OUTDIR/results (bench-families: the paper
# grid with the cuda backend's two kernel families side by side, cuda_sm90 and cuda_sm80, on a Hopper GPU;
# bench-decode: the decode grid, contiguous and paged caches, against a copy ceiling measured in the same run;
# bench-host: tiny prefill and decode calls with --host, the host time per call beside the kernel time).
# Each step logs to OUTDIR/<step>.log; the exit status is non-zero if any step failed.
set -uo pipefail
out=${1:?usage: scripts/gpu_validate.sh OUTDIR STEP...}; shift
mkdir -p "$out/results"
export PYTHONUNBUFFERED=1
failed=0

step() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || failed=1
}

for what in "$@"; do
  case $what in
    build)  # from a clean cache: a first call (the binding and its one kernel), then every other kernel ahead of
            # time (build.py prints the time), then a cached first call in a fresh process
      rm -rf "${FLASH_ATTENTION_CACHE:?set FLASH_ATTENTION_CACHE to a scratch folder}"
      step first-call python -c "import time, torch, flash_attention as fa; \
q = torch.randn(4, 16, 1024, 128, device='cuda', dtype=torch.float16); t0 = time.perf_counter(); \
fa.attention(q, q, q, backend='cuda'); torch.cuda.synchronize(); \
print(f'first call from a clean cache (builds the binding and one kernel): {time.perf_counter() - t0:.1f} s')"
      step build python -m flash_attention.cuda.build
      step cached-load python -c "import time, torch; q = torch.randn(4, 16, 1024, 128, device='cuda', \
dtype=torch.float16); torch.cuda.synchronize(); t0 = time.perf_counter(); import flash_attention as fa; \
t1 = time.perf_counter(); fa.attention(q, q, q, backend='cuda'); torch.cuda.synchronize(); t2 = time.perf_counter(); \
print(f'fresh process, torch already imported: import flash_attention {t1 - t0:.2f} s, first call (cached) {t2 - t1:.2f} s')" ;;
    tests) step tests python -m pytest tests -q -ra -p no:cacheprovider ;;
    sanitize) step sanitize python scripts/sanitize.py ;;
    bench-seed) step bench-seed python benchmarks/runtime.py --markdown --output "$out/results" ;;
    bench-paper) step bench-paper python benchmarks/runtime.py --grid paper --mask both --markdown \
                   --output "$out/results" ;;
    bench-families) step bench-families python benchmarks/runtime.py --grid paper --mask both --markdown \
                      --methods cuda_sm90,cuda_sm80,triton,sdpa_flash,sdpa_cudnn --output "$out/results/families" ;;
    bench-decode) step bench-decode python benchmarks/runtime.py --grid decode --markdown --output "$out/results" ;;
    bench-host)  # host time per call of tiny calls (issue-level bar: Triton's at most SDPA-flash's), kernel time beside
      step bench-host-prefill python benchmarks/runtime.py --markdown --host --dtype bf16 --batch 1 --heads 8 \
        --head-dims 64 --tokens 128,256 --mask both --output "$out/results/host"
      step bench-host-decode python benchmarks/runtime.py --grid decode --markdown --host --batches 1,8 \
        --keys 256,4096 --heads 32/8 --head-dims 128 --cache both --output "$out/results/host" ;;
    memory) step memory python benchmarks/memory.py --markdown --output "$out/results" ;;
    *) echo "unknown step: $what"; exit 2 ;;
  esac
done
exit $failed
