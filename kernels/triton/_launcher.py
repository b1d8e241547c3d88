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

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

try:  # Gluon's descriptor (it carries its shared-memory layout): the Hopper kernel's arguments
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
    DESCRIPTOR_TYPES: tuple = (TensorDescriptor, GluonTensorDescriptor)
except ImportError:
    DESCRIPTOR_TYPES = (TensorDescriptor,)

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


def _rebased(template, base):
    """`template` over another tensor of the same shape, strides and alignment (the plan's key guarantees it), without
    the constructor's validation, which costs more than the launch."""
    descriptor = object.__new__(type(template))
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
        templates = tuple(arg if isinstance(arg, DESCRIPTOR_TYPES) else None for arg in leading_args)
        self._templates = templates if any(template is not None for template in templates) else None

    def __call__(self, stream: int, *tensors) -> None:
        if self._templates is not None:
            tensors = [tensor if template is None else _rebased(template, tensor)
                       for template, tensor in zip(self._templates, tensors)]
        self.launch_with(stream, tensors)

    def launch_with(self, stream: int, leading_args) -> None:
        """Launch with these leading arguments as they are (descriptors already made)."""
        grid_x, grid_y, grid_z = self._grid
        # The launcher's arguments after the function: packed metadata, launch metadata and the two launch hooks
        # (None: direct_launch_available found no hook to run), then every kernel argument in signature order.
        self._launcher(grid_x, grid_y, grid_z, stream, self._function, self._metadata, None, None, None,
                       *leading_args, *self._fixed)


def _argument_class(arg):
    """What Triton specializes a kernel argument on, or finer: a tensor's dtype and 16-byte alignment; an int's
    equality to 1, divisibility by 16 and 32-bit range; a float's type only; a descriptor's every field but its
    base pointer. Two calls whose arguments fall in the same classes run the same compiled kernel."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or arg is None:
        return arg
    if isinstance(arg, int):
        return arg == 1, arg % 16 == 0, -2**31 <= arg < 2**31
    if isinstance(arg, float):
        return float
    if isinstance(arg, DESCRIPTOR_TYPES):
        fields = {name: value for name, value in arg.__dict__.items() if name != "base"}
        return (arg.base.dtype, arg.base.data_ptr() % 16 == 0,
                tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in fields.items()))
    raise TypeError(f"no specialization class for a {type(arg).__name__}")


def _device_of(args) -> int:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device.index
    return torch.cuda.current_device()


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


# Compiled kernels with their constexpr arguments, by (kernel, device, options, argument classes): the launches that
# changing lengths make (each a new exact plan key) find their kernel here instead of in JITFunction.run.
_compiled = PlanCache(capacity=1024)


def launch(kernel, grid: tuple, args: tuple, options: dict, leading: int) -> LaunchPlan | None:
    """`kernel[grid](*args, **options)`, through the compiled kernel when an earlier launch had arguments of the same
    classes (see _argument_class), else through JITFunction.run; returns the plan that repeats this launch with new
    values of the first `leading` arguments, or None where this Triton cannot launch directly."""
    if not direct_launch_available():
        kernel[grid](*args, **options)
        return None
    device = _device_of(args)
    key = (kernel, device, tuple(sorted(options.items())), tuple(_argument_class(arg) for arg in args))
    entry = _compiled.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **options)
        if hasattr(compiled, "result"):  # compiled asynchronously
            compiled = compiled.result()
        if getattr(compiled, "packed_metadata", None) is None:  # not a CompiledKernel (the interpreter's launch)
            return None
        constexprs = []
        for param in kernel.params[len(args):]:
            if param.name in options:
                constexprs.append(options[param.name])
            elif param.default is not inspect.Parameter.empty:
                constexprs.append(param.default)
            else:
                return None
        entry = (compiled, tuple(constexprs))
        _compiled.put(key, entry)
        return LaunchPlan(compiled, grid, args[:leading], args[leading:] + entry[1])
    compiled, constexprs = entry
    plan = LaunchPlan(compiled, grid, args[:leading], args[leading:] + constexprs)
    plan.launch_with(current_stream(device), args[:leading])
    return plan


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
