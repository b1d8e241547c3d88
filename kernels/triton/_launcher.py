"""Launching a compiled Triton kernel again without `JITFunction.run`'s per-call work.

`kernel[grid](*args)` binds and specializes every argument, hashes the specialization into a cache key, checks the
kernel's globals and the launch hooks, and only then calls the compiled kernel's launcher. For the 25-argument
attention kernel with four TMA descriptors that, with the descriptors' own validation, is most of the 108 µs of host
time a call took on an H200 with Triton 3.6 (results/NOTES.md, "Host time"), several times what a small attention
takes on the GPU.

A `LaunchPlan` remembers one call of a kernel: the compiled kernel, its grid, and every argument except the per-call
tensors, exactly. Its owner keys it by every input property those arguments derive from (shapes, strides, dtypes,
pointer alignments, flags), so a plan found under a key launches the kernel `JITFunction.run` would pick: Triton's
specialization is a function of the argument values and the pointers' 16-byte alignment, all of which the key fixes.
"""

from __future__ import annotations

import collections
import inspect

import triton
from triton.tools.tensor_descriptor import TensorDescriptor

_KNOBS = getattr(triton, "knobs", None)  # Triton >= 3.4: the compiled-kernel interface this module calls


def _hook_set(hook) -> bool:
    """Whether a launch hook would run: Triton 3.6+ keeps an always-present chain of hooks, older ones None."""
    return hook is not None and bool(getattr(hook, "calls", True))


def direct_launch_available() -> bool:
    """Whether plans may launch now: not while launch hooks are set (profilers such as Proton set them; they need
    `JITFunction.run`'s launch metadata), and not on Triton versions before 3.4."""
    if _KNOBS is None:
        return False
    runtime = _KNOBS.runtime
    return not (_hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook))


def _rebased(template: TensorDescriptor, base) -> TensorDescriptor:
    """`template` over another tensor of the same shape, strides and alignment (the plan's key guarantees it), without
    the constructor's validation, which costs more than the launch."""
    descriptor = object.__new__(TensorDescriptor)
    descriptor.__dict__.update(template.__dict__)
    descriptor.base = base
    return descriptor


class LaunchPlan:
    """One compiled kernel with its grid and fixed arguments: `plan(stream, *tensors)` launches it on new tensors
    (those of the first call's leading arguments; a tensor whose first-call argument was a TensorDescriptor is
    wrapped in a copy of that descriptor)."""

    __slots__ = ("_launcher", "_function", "_metadata", "_grid", "_fixed", "_templates")

    def __init__(self, compiled, grid, leading_args, fixed_args):
        self._launcher = compiled.run
        self._function = compiled.function
        self._metadata = compiled.packed_metadata
        self._grid = tuple(grid) + (1,) * (3 - len(grid))
        self._fixed = tuple(fixed_args)
        templates = tuple(arg if isinstance(arg, TensorDescriptor) else None for arg in leading_args)
        self._templates = templates if any(template is not None for template in templates) else None

    def __call__(self, stream: int, *tensors) -> None:
        if self._templates is not None:
            tensors = [tensor if template is None else _rebased(template, tensor)
                       for template, tensor in zip(self._templates, tensors)]
        grid_x, grid_y, grid_z = self._grid
        # The launcher's arguments after the function: packed metadata, launch metadata and the two launch hooks
        # (None: direct_launch_available found no hook to run), then every kernel argument in signature order.
        self._launcher(grid_x, grid_y, grid_z, stream, self._function, self._metadata, None, None, None, *tensors,
                       *self._fixed)


def launch_and_plan(kernel, grid: tuple, args: tuple, kwargs: dict, leading: int) -> LaunchPlan | None:
    """Launch `kernel[grid](*args, **kwargs)` as usual (compiling on first use) and return the plan that repeats it
    with new values of the first `leading` arguments; None where this Triton cannot (see direct_launch_available)."""
    compiled = kernel[grid](*args, **kwargs)
    if not direct_launch_available():
        return None
    if hasattr(compiled, "result"):  # compiled asynchronously
        compiled = compiled.result()
    if getattr(compiled, "packed_metadata", None) is None:  # not a CompiledKernel (the interpreter's launch)
        return None
    values = list(args)
    for param in kernel.params[len(args):]:
        if param.name in kwargs:
            values.append(kwargs[param.name])
        elif param.default is not inspect.Parameter.empty:
            values.append(param.default)
        else:
            return None
    return LaunchPlan(compiled, grid, values[:leading], values[leading:])


class PlanCache:
    """Plans by key, the least recently used dropped beyond `capacity` (a model whose lengths change every call makes
    a new key per call: the cache must not grow with them)."""

    def __init__(self, capacity: int = 256):
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._capacity = capacity

    def get(self, key):
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def put(self, key, plan) -> None:
        if plan is None:
            return
        self._plans[key] = plan
        if len(self._plans) > self._capacity:
            self._plans.popitem(last=False)

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


_stream_of_device = None


def current_stream(device_index: int) -> int:
    """The raw handle of the current CUDA stream of a device, as JITFunction.run reads it (Triton's driver)."""
    global _stream_of_device
    if _stream_of_device is None:
        _stream_of_device = triton.runtime.driver.active.get_current_stream
    return _stream_of_device(device_index)


def aligned16(*tensors) -> tuple[bool, ...]:
    """Whether each tensor's data pointer is 16-byte aligned: Triton specializes pointer arguments on it."""
    return tuple(tensor.data_ptr() % 16 == 0 for tensor in tensors)
