"""How decode-shaped calls are planned, for every kernel backend: which calls take a decode kernel, and into how many
key ranges (splits) their keys are cut. One place, so that the backends differ only in their kernels' constants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._device import device_index
from ._validation import MAX_NUM_SPLITS

# A call whose packed rows (query heads per K/V head x query rows) fit this many rows takes a decode kernel, also
# through plain `attention`: one program then reads each K/V tile once for the whole group.
DECODE_MAX_PACKED_ROWS = 64


@dataclass(frozen=True)
class SplitCosts:
    """What a backend's decode kernel costs, for choosing its split count: the K/V bytes per second one program
    streams when memory is not the limit (its loads in flight over their latency), what a split call costs more
    than an unsplit one (float32 partials, the combine's launch and its kernel, programs too short to reach their
    rate), and the fewest keys a split takes (its kernel's key tile)."""

    program_bytes_per_s: float
    split_overhead_s: float
    min_keys_per_split: int


# The share of the DRAM's peak rate (bus width x clock) that a decode kernel's reads reach: 2.6-2.9 TB/s of an
# H100's 3.35 (results/NOTES.md, "The split count").
ACHIEVED_BANDWIDTH_SHARE = 0.85
# Where the device does not say its memory's bus and clock: an H100's peak.
DEFAULT_PEAK_BANDWIDTH = 3.35e12


def decode_shaped(seqlen_q: int, group: int) -> bool:
    return seqlen_q * group <= DECODE_MAX_PACKED_ROWS


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def memory_bandwidth(device_index: int) -> float:
    """Bytes per second the device's DRAM delivers to a streaming kernel (ACHIEVED_BANDWIDTH_SHARE of its peak)."""
    properties = torch.cuda.get_device_properties(device_index)
    bus_bits, clock_khz = getattr(properties, "memory_bus_width", 0), getattr(properties, "memory_clock_rate", 0)
    peak = 2 * bus_bits / 8 * clock_khz * 1e3 if bus_bits and clock_khz else DEFAULT_PEAK_BANDWIDTH  # double data rate
    return ACHIEVED_BANDWIDTH_SHARE * peak


def predicted_seconds(*, splits: int, sequences: int, keys: int, key_bytes: int, bandwidth: float,
                      costs: SplitCosts) -> float:
    """The split model's time of a decode call whose `sequences` (batch x K/V heads) of `keys` keys each are cut into
    `splits` ranges: the longer of one program's stream (its keys x key_bytes at its own rate) and the whole read at
    the memory's rate, plus the split's overhead. A few programs that each reach their full rate can saturate memory
    alone (batch 4 x 8 K/V heads of 4k keys: 32 CUDA programs read at 2.1 TB/s, and 128 split ones were slower),
    while a batch of one with 8 programs reads at a tenth of that unsplit."""
    program_bytes = keys * key_bytes
    memory_time = sequences * program_bytes / bandwidth
    stream_time = program_bytes / splits / costs.program_bytes_per_s
    return max(stream_time, memory_time) + (costs.split_overhead_s if splits > 1 else 0.0)


def choose_num_splits(*, programs: int, sequences: int, keys: int, key_bytes: int, multiprocessors: int,
                      programs_per_sm: int, bandwidth: float, costs: SplitCosts) -> tuple[int, float]:
    """(splits, predicted seconds): split the keys of `programs` (batch x K/V heads x row blocks; `sequences` =
    batch x K/V heads of them read distinct K/V) into as many ranges as fit one wave of `programs_per_sm` per
    multiprocessor (a second, partial wave would leave most SMs idle while it runs), each at least
    costs.min_keys_per_split keys long; or not at all, where predicted_seconds says that is faster."""
    most = min(programs_per_sm * multiprocessors // max(programs, 1), keys // costs.min_keys_per_split,
               MAX_NUM_SPLITS)
    model = dict(sequences=sequences, keys=keys, key_bytes=key_bytes, bandwidth=bandwidth, costs=costs)
    unsplit = predicted_seconds(splits=1, **model)
    if most <= 1:
        return 1, unsplit
    split = predicted_seconds(splits=most, **model)
    return (most, split) if split < unsplit else (1, unsplit)


def num_splits_for(query, *, heads_kv: int, keys: int, programs: int, programs_per_sm: int,
                   costs: SplitCosts) -> int:
    """choose_num_splits for a decode call of `query` (B, Hq, Nq, D) on its GPU: `programs` programs (CTAs) of a
    backend's kernel over batch x heads_kv sequences of `keys` cached keys each, every key a K and a V row."""
    device = device_index(query)
    return choose_num_splits(programs=programs, sequences=query.shape[0] * heads_kv, keys=keys,
                             key_bytes=2 * query.shape[-1] * query.element_size(),
                             multiprocessors=multiprocessors(device), programs_per_sm=programs_per_sm,
                             bandwidth=memory_bandwidth(device), costs=costs)[0]
