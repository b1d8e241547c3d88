"""Tile configurations for the Triton kernel: the autotuning space, its pruning, and the untuned defaults.

The autotune key is (HEAD_DIM_PAD, IS_CAUSAL, IS_BF16, USE_TMA, IS_VARLEN, seqlen_q_bucket, seqlen_k_bucket), and
Triton adds the GPU through its per-device cache, so each (head_dim, causal, dtype, GPU, packed or not) tunes once per
power-of-two length bucket (of the longest sequence, for packed batches).
"""

from __future__ import annotations

import triton

AUTOTUNE_KEY = ["HEAD_DIM_PAD", "IS_CAUSAL", "IS_BF16", "USE_TMA", "IS_VARLEN", "seqlen_q_bucket", "seqlen_k_bucket"]

# Under the interpreter: small tiles keep CPU runs fast, and BLOCK_M != BLOCK_N makes the causal diagonal span
# several key tiles, which is the case that needs testing.
INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)


def set_descriptor_block_shapes(nargs):
    """TMA descriptors carry their box size; make it match the config about to run."""
    block_m, block_n, head_dim_pad = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM_PAD"]
    if not nargs["USE_TMA"]:
        return
    nargs["Q"].block_shape = [1, 1, block_m, head_dim_pad]
    if not nargs["IS_VARLEN"]:  # a packed batch's output is stored with pointers (see _kernel.py)
        nargs["Out"].block_shape = [1, 1, block_m, head_dim_pad]
    nargs["K"].block_shape = [1, 1, block_n, head_dim_pad]
    nargs["V"].block_shape = [1, 1, block_n, head_dim_pad]


def _config(block_m, block_n, num_warps, num_stages):
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=num_warps, num_stages=num_stages,
                         pre_hook=set_descriptor_block_shapes)


# (BLOCK_M, BLOCK_N, num_warps, num_stages), the largest head_dim each suits.
_SPACE = [
    (128, 128, 4, 3, 64), (128, 64, 4, 4, 64), (128, 64, 4, 3, 128),
    (128, 128, 8, 2, 128), (128, 64, 8, 3, 128), (128, 128, 8, 3, 128), (128, 128, 8, 4, 128), (128, 64, 8, 5, 128),
    (64, 64, 4, 3, 256), (128, 64, 8, 2, 256), (64, 32, 4, 2, 256), (128, 32, 8, 2, 256),
]


def autotune_configs():
    return [_config(m, n, w, s) for m, n, w, s, _ in _SPACE]


def prune_configs(configs, named_args, **kwargs):
    """Keep the tiles that fit the head_dim, and no query tile taller than the query (decode-like calls)."""
    head_dim_pad = named_args["HEAD_DIM_PAD"] if "HEAD_DIM_PAD" in named_args else kwargs["HEAD_DIM_PAD"]
    seqlen_q_bucket = named_args["seqlen_q_bucket"]
    max_dim = {(m, n, w, s): d for m, n, w, s, d in _SPACE}
    kept = []
    for config in configs:
        m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if head_dim_pad > max_dim[(m, n, config.num_warps, config.num_stages)]:
            continue
        if m > 64 and seqlen_q_bucket <= 64:
            continue
        kept.append(config)
    return kept or [config for config in configs if config.kwargs["BLOCK_M"] == 64]


def default_config(head_dim_pad: int, seqlen_q: int) -> dict:
    """The untuned choice (FLASH_ATTENTION_AUTOTUNE=0): a tile that is good across the paper grid on an H100."""
    if head_dim_pad > 128:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    if seqlen_q <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    if head_dim_pad > 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
