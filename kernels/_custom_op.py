"""When a kernel call goes through its registered torch custom op, and when it may launch directly.

The op (with its fake implementation and a backward that raises) is what torch.compile traces and what autograd
sees. Its Python dispatch (autograd wrapper, redispatch, dynamo-disable wrapper) cost about 270 us of host time per
call on the H100 machine (504 vs 230 us, results/NOTES.md), more than a small attention takes on the GPU, so an eager
call that needs no autograd launches the kernel directly: the same result, without the dispatch.
"""

from __future__ import annotations

import torch


def use_registered_op(*inputs: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
