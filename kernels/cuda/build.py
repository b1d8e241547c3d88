"""Build the CUDA extension ahead of time for the current GPU: ``python -m flash_attention.cuda.build``."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import _loader


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", type=int, default=None, help="CUDA device index (default: current)")
    parser.add_argument("--verbose", action="store_true", help="show the ninja/nvcc command lines")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("flash_attention.cuda.build: CUDA is not available; nothing to build", file=sys.stderr)
        return 1
    arch = _loader.device_arch(args.device)
    cached = _loader.is_built(arch)
    start = time.perf_counter()
    try:
        path = _loader.load(args.device, verbose=args.verbose)
    except (RuntimeError, ValueError) as error:
        print(f"flash_attention.cuda.build: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    what = "loaded cached build" if cached else "built"
    print(f"flash_attention.cuda: {what} for sm_{arch} in {seconds:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
