"""How long a call takes: CUDA events around interleaved calls (the kernel time), a back-to-back loop (the host time,
--host), a device-to-device copy (the decode grid's ceiling), and the rates made of those times."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB)
HOST_LEAD_US = 300  # the GPU's spin before each timed call, µs (HostLead)
MIN_ROUNDS = 10
CPU_REPS = 3
HOST_LOOP_CALLS = 200
HOST_HELP = (f"also report host time: µs per call of a back-to-back loop of {HOST_LOOP_CALLS} calls per method (no "
             f"events, no flush, one synchronisation after the loop), what a model's layer loop pays per call when "
             f"the GPU keeps up")
HOST_TEXT = (f"Host time (--host): the wall-clock time per call of a back-to-back loop of {HOST_LOOP_CALLS} calls of "
             f"one method, best of 3 loops, synchronised only around the loop: what a model pays per call where the "
             f"GPU keeps up.")


class L2Flush:
    """Called before a timed call: evicts its inputs from L2 by reading L2_FLUSH_BYTES, which leaves L2 holding clean
    lines. A flush that writes (zero_, as do_bench's) leaves them dirty, and the timed call then pays their write-back
    to memory: on an H100, 9-100 µs more for every method on decode calls of 0.1-0.5 ms (3-22%), where the best peer
    then reads at 72-97% of the copy ceiling instead of 92-104% (results/NOTES.md, "The L2 flush")."""

    def __init__(self, device: torch.device | str = "cuda"):
        self._lines = torch.ones(L2_FLUSH_BYTES // 8, dtype=torch.int64, device=device)

    def __call__(self) -> None:
        self._lines.sum()


class HostLead:
    """Called after the flush, before a timed call's start event: keeps the GPU busy (a spin of HOST_LEAD_US) so that
    the host has enqueued the event and the whole call before the GPU reaches them, and the events time the kernels
    only, however slow the host is. Without it a call's host time counted wherever it outran the flush's ~90 µs: on
    an H100 host that slowed down during a session, every method's 12-20 µs decode calls read 40-200 µs
    (results/NOTES.md, "A lead for the host"). What the host costs is the --host column's to say."""

    def __init__(self, device: torch.device | str = "cuda"):
        clock_khz = torch.cuda.get_device_properties(torch.device(device)).clock_rate
        self._cycles = int(clock_khz * 1e3 * HOST_LEAD_US * 1e-6)

    def __call__(self) -> None:
        torch.cuda._sleep(self._cycles)


@dataclass(frozen=True)
class Rate:
    """A figure of work per time: TFLOPS of a prefill, TB/s of a decode's K/V read."""

    key: str  # the records' column
    title: str
    definition: str

    @staticmethod
    def of(work: float, median_ms: float) -> float:
        return work / (median_ms * 1e-3) / 1e12


def timing_text(device: torch.device, warmup_ms: float, rep_ms: float) -> str:
    if device.type != "cuda":
        return f"Timing: wall-clock median of {CPU_REPS} calls on CPU (smoke run: the numbers mean nothing)"
    return (f"Timing: CUDA events around each call after {warmup_ms:g} ms of warm-up, with the L2 cache flushed "
            f"before each call (a read of {L2_FLUSH_BYTES // 2**20} MiB, which leaves no dirty lines for the call to "
            f"write back) and then the GPU held in a {HOST_LEAD_US} µs spin while the host enqueues the call (the "
            f"events time its kernels, not its host time); the methods of a shape timed interleaved (one call of "
            f"each per round, the order rotated each round), for about {rep_ms:g} ms per method and at least "
            f"{MIN_ROUNDS} rounds; median and quartiles")


def time_calls(calls: dict[str, Callable], device: torch.device, warmup_ms: float, rep_ms: float) -> dict[str, dict]:
    """Per call (by name): median and quartiles of its runtime in ms, and the number of timed calls.

    GPU: CUDA events around each call, with L2 flushed before every one, so that no method is timed on cache-resident
    inputs, and the GPU held in a spin after the flush (HostLead), so that the events time kernels, not the host; after
    warm-up, the calls are timed interleaved, one of each per round (each round in an order rotated by
    one), for about rep_ms per call but at least MIN_ROUNDS rounds (do_bench's scheme, interleaved, plus the minimum,
    so slow methods get a spread too). Interleaving puts every method under the same clocks: timed one after the
    other, a cell moved 4-7% with its position among the methods (results/NOTES.md, SM90 v10), as the GPU's clock
    and temperature drift under load. CPU (--smoke only): a wall-clock median of a few calls each; the numbers mean
    nothing, but the whole path runs.
    """
    if device.type == "cuda":
        times = _cuda_event_times(calls, warmup_ms, rep_ms)
    else:  # the checked call before this one was the warm-up
        times = {name: [] for name in calls}
        for name, fn in calls.items():
            for _ in range(CPU_REPS):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    timings = {}
    for name, samples in times.items():
        q25, median, q75 = statistics.quantiles(samples, n=4, method="inclusive")
        timings[name] = {"median_ms": median, "q25_ms": q25, "q75_ms": q75, "reps": len(samples)}
    return timings


def interleaved_order(names: list[str], rounds: int) -> list[list[str]]:
    """Round r calls every name once, starting from name r % len(names): each name is timed as often in each
    position, and so as often right after each of the others."""
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def _cuda_event_times(calls: dict[str, Callable], warmup_ms: float, rep_ms: float) -> dict[str, list[float]]:
    flush, lead = L2Flush(), HostLead()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    estimates_ms = {}
    for name, fn in calls.items():
        start.record()
        for _ in range(3):
            flush()
            lead()
            fn()
        end.record()
        torch.cuda.synchronize()
        estimates_ms[name] = max(start.elapsed_time(end) / 3, 1e-3)  # flush and lead included: a round's GPU time
        for _ in range(max(1, round(warmup_ms / estimates_ms[name]))):
            fn()
    rounds = max(MIN_ROUNDS, round(rep_ms / statistics.fmean(estimates_ms.values())))
    # Every event made before the timed loop, which then only enqueues work.
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(rounds)] for name in calls}
    for index, order in enumerate(interleaved_order(list(calls), rounds)):
        for name in order:
            begin, finish = events[name][index]
            flush()
            lead()
            begin.record()
            calls[name]()
            finish.record()
    torch.cuda.synchronize()
    return {name: [begin.elapsed_time(finish) for begin, finish in pairs] for name, pairs in events.items()}


def host_times(calls: dict[str, Callable], device: torch.device, loop: int = HOST_LOOP_CALLS,
               repeats: int = 3) -> dict[str, float]:
    """Per call (by name): µs of host time per call, the best of `repeats` back-to-back loops of `loop` calls, each
    timed by the wall clock from its first call to its last launch (the GPU finishes afterwards, outside the loop).
    For calls shorter on the GPU than on the host this is the rate they can be issued at; the interleaved, flushed
    kernel timing of time_calls hides it (each call waits for its events and the L2 flush). On CPU (--smoke) two
    calls, once: the numbers mean nothing, but the path runs."""
    if device.type != "cuda":
        loop, repeats = 2, 1
    host = {}
    for name, fn in calls.items():
        for _ in range(min(loop, 20)):  # warm-up
            fn()
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(loop):
                fn()
            best = min(best, (time.perf_counter() - start) / loop * 1e6)
        if device.type == "cuda":
            torch.cuda.synchronize()
        host[name] = best
    return host


def copy_tbps(device: torch.device) -> float:
    """TB/s of a device-to-device copy of 2 GiB (bytes read + bytes written), the median of 20 copies after 5."""
    source = torch.empty(2**30, dtype=torch.int16, device=device)
    target = torch.empty_like(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for index in range(25):
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        if index >= 5:
            times.append(start.elapsed_time(end))
    return Rate.of(2 * source.numel() * source.element_size(), statistics.median(times))
