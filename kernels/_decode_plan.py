"""How decode-shaped calls are planned, for every kernel backend: which calls take a decode kernel, and into how many
key ranges (splits) their keys are cut. One place, so that the backends differ only in their kernels' constants.
"""

from __future__ import annotations

import functools

import torch

from ._validation import MAX_NUM_SPLITS

# A call whose packed rows (query heads per K/V head x query rows) fit this many rows takes a decode kernel, also
# through plain `attention`: one program then reads each K/V tile once for the whole group.
DECODE_MAX_PACKED_ROWS = 64
# A split gets at least this many keys, so that its fixed costs (loading Q, writing a float32 partial, its share of
# the combine) stay small next to its streaming.
MIN_KEYS_PER_SPLIT = 512


def decode_shaped(seqlen_q: int, group: int) -> bool:
    return seqlen_q * group <= DECODE_MAX_PACKED_ROWS


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(programs: int, keys: int, multiprocessors: int, programs_per_sm: int) -> int:
    """Split the keys only when `programs` (batch x K/V heads x row blocks) leave the GPU under-filled: below 80% of
    one wave of `programs_per_sm` per multiprocessor, a split's partials cost less than the idle SMs. Then cut into as
    many splits as fit in that wave (rounded down: a second, partial wave would leave most SMs idle while it runs),
    each at least MIN_KEYS_PER_SPLIT keys long."""
    wave = programs_per_sm * multiprocessors
    if programs * 5 >= 4 * wave:
        return 1
    by_work = max(1, keys // MIN_KEYS_PER_SPLIT)
    return max(1, min(wave // programs, by_work, MAX_NUM_SPLITS))
