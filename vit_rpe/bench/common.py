"""Timing and peak-memory helpers shared by the benchmarks.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the allocation before the pass.
On CPU there is no allocator counter, so we measure the process: during the pass glibc's mmap
threshold is pinned at 64 KiB (every tensor bigger than that is its own mapping, returned to the OS
when freed), the kernel's resident high-water mark (VmHWM) is reset through /proc/self/clear_refs,
and the peak is VmHWM minus the resident size before the pass. It counts every byte the pass
touches (tensors, autograd buffers, BLAS/FFT workspaces), at page granularity. Timings are taken
outside such passes, with the heap keeping freed blocks for reuse (``steady_malloc``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_EVERY_TENSOR = 64 * 1024  # bytes: every tensor above this gets its own mapping
# Where glibc's dynamic thresholds end up once big blocks have been freed: its upper limit for
# the mmap threshold on 64-bit Linux (and twice that for trimming). Setting a threshold switches
# the dynamic adjustment off, so timings run with these fixed.
_MMAP_USUAL = 32 * 2**20


def _set_mmap_threshold(nbytes: int, trim: bool = False) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        if trim:  # hand the heap's free blocks back, so small tensors count as they are allocated
            libc.malloc_trim(0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * nbytes)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))
    except OSError:
        return False


def steady_malloc() -> bool:
    """Freed blocks up to 32 MiB stay in the heap for reuse, from the first timed call on."""
    return _set_mmap_threshold(_MMAP_USUAL)


@contextmanager
def mmap_every_tensor():
    """Inside, freed tensors leave the process, so resident memory tracks live tensors. Only for
    measuring memory: a fresh mapping per tensor (and its page faults) slows every op, and more so
    the many-small-op kernels, so timings are taken outside with the heap reusing freed blocks."""
    pinned = _set_mmap_threshold(_MMAP_EVERY_TENSOR, trim=True)
    try:
        yield pinned
    finally:
        if pinned:
            steady_malloc()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra memory (MiB) while running ``fn`` once; None if it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with mmap_every_tensor() as pinned:
        if not pinned or not os.path.exists("/proc/self/clear_refs") or not _reset_hwm():
            return None
        before = _status_kib("VmRSS")
        fn()
        return max(_status_kib("VmHWM") - before, 0) / 1024


def time_it(
    fn: Callable[[], object],
    device: torch.device,
    min_time: float = 1.0,
    max_reps: int = 10,
    slow: float = 5.0,
) -> dict:
    """Seconds per call: one warm-up call, then repeats until ``min_time`` has passed.

    A warm-up slower than ``slow`` seconds is itself the one measurement (the first-call
    overhead is noise at that size). Reports min and median; min is the least disturbed by
    other processes sharing the machine.
    """

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()
    times = [first] if first > slow else []
    total = 0.0
    while not times or (total < min_time and len(times) < max_reps):
        times.append(once())
        total += times[-1]
    return {"time_s": min(times), "time_median_s": statistics.median(times), "reps": len(times)}


def multiply_adds(fn: Callable[[], object]) -> int:
    """Multiply-adds in the matrix products of one call of ``fn`` (FlopCounterMode's flops / 2).

    Matmuls, convolutions and attention kernels are counted; elementwise ops and FFTs are not.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def matmul_rate(device: torch.device, size: int = 2048, reps: int = 3) -> float:
    """GMAC/s of one large square fp32 matmul, the best this device's BLAS does: a ceiling for
    what any kernel made of matrix products can sustain."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = time_it(lambda: a @ b, device, min_time=0.0, max_reps=reps)["time_s"]
    return size**3 / seconds / 1e9


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def compose_train(overrides: list[str], output_dir: Path):
    """The train config as the CLI composes it, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vit_rpe.utils.run import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg
