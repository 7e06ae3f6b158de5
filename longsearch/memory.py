"""Peak extra memory of a block of work: the CUDA allocator's peak on a GPU, the process's resident set on a CPU.

On a CPU there is no allocator counter, so a thread samples the resident set size (every millisecond) while
the block runs, after asking glibc to return freed memory (``malloc_trim``) so that memory kept from earlier
work does not hide the block's own. The result is the peak minus the size at the start: a measurement, with
the sampling interval's blind spot, not an exact count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

_INTERVAL_S = 0.001


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """``with PeakMemory(device) as p: ...`` → ``p.bytes`` (peak extra bytes) and ``p.how`` (what was measured)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.bytes = 0.0
        self.how = ""
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.how = "cuda allocator"
            return self
        import psutil

        _malloc_trim()
        proc = psutil.Process()
        self._base = proc.memory_info().rss
        self._peak = self._base
        self.how = "process RSS"

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                self._stop.wait(_INTERVAL_S)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = float(torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        import psutil

        self._peak = max(self._peak, psutil.Process().memory_info().rss)
        self.bytes = float(self._peak - self._base)


class AllocatorPeak:
    """``with AllocatorPeak() as p: ...`` → ``p.bytes``: the peak of CPU tensor memory allocated inside the block and
    alive at once (above what was alive at its start), and ``p.largest``: the largest single allocation.

    Counted from the PyTorch profiler's memory records: every allocation and free of the CPU tensor allocator,
    attributed to the operator that made it (its own allocations less its frees) and replayed in time order. Unlike
    the resident set it is exact and repeatable (no sampling, no allocator caching), which is what a test wants; an
    operator's scratch that it frees before returning is netted out. Slower than the block alone: every operator is
    recorded. CPU work only (on a GPU, :class:`PeakMemory` reads the CUDA allocator's own peak).
    """

    def __init__(self) -> None:
        self.bytes = 0.0
        self.largest = 0.0
        self._profile: Any = None

    def __enter__(self) -> AllocatorPeak:
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        prof = self._profile
        prof.__exit__(*exc)
        if exc and exc[0] is not None:
            return
        changes = sorted(
            ((e.time_range.start, int(e.self_cpu_memory_usage)) for e in prof.events() if e.self_cpu_memory_usage),
            key=lambda item: item[0],
        )
        live = peak = largest = 0
        for _, delta in changes:
            live += delta
            peak = max(peak, live)
            largest = max(largest, delta)
        self.bytes = float(peak)
        self.largest = float(largest)
