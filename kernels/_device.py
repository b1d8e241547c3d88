"""The GPU a tensor lives on, and its compute capability, cached: backends ask on every call."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _capability_of_index(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_index(tensor=None) -> int:
    """The CUDA device index of `tensor` (the current device for None or an index-less 'cuda')."""
    if tensor is not None and tensor.device.index is not None:
        return tensor.device.index
    return torch.cuda.current_device()


def capability(tensor=None) -> tuple[int, int]:
    """(major, minor) compute capability of `tensor`'s GPU (or the current one)."""
    return _capability_of_index(device_index(tensor))


@functools.lru_cache(maxsize=None)
def l2_cache_bytes(index: int) -> int:
    """The L2 cache size of GPU `index` (an H100's 50 MiB where the driver does not say)."""
    return getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0) or 50 * 2**20
