"""Build the CUDA backend ahead of time for the current GPU: ``python -m flash_attention.cuda.build``.

Builds the binding and every kernel library for the GPU in hand, ``MAX_JOBS`` at once (default: one per core), so
that no later call waits for a build; ``--kernels`` limits it to some (file stems such as ``fwd_sm90_hdim128_fp16``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import _loader


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=int, default=None, help="CUDA device index (default: current)")
    parser.add_argument("--kernels", default=None, help="comma-separated kernel stems (default: all for this GPU)")
    parser.add_argument("--verbose", action="store_true", help="show the ninja/nvcc command lines")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("flash_attention.cuda.build: CUDA is not available; nothing to build", file=sys.stderr)
        return 1
    arch = _loader.device_arch(args.device)
    every = _loader.kernel_stems(arch)
    kernels = every if args.kernels is None else [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(every))
    if unknown:
        print(f"flash_attention.cuda.build: no such kernel for sm_{arch}: {', '.join(unknown)} "
              f"(choose from {', '.join(every)})", file=sys.stderr)
        return 2
    cached = _loader.is_built(arch, kernels)
    start = time.perf_counter()
    try:
        path = _loader.load(args.device, kernels=kernels, verbose=args.verbose)
    except (RuntimeError, ValueError) as error:
        print(f"flash_attention.cuda.build: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    what = "loaded cached build" if cached else "built"
    print(f"flash_attention.cuda: {what} of the binding and {len(kernels)} kernels for sm_{arch} in {seconds:.1f} s: "
          f"{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
