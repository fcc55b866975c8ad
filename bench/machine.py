"""What the figures were measured on, and the two ceilings they are compared with.

Every benchmark prints `describe_cpu()` beside its figures, so a reader can tell what to
expect on their own machine: the CPU model, the vector ISA torch dispatches to, whether the
CPU has AMX (Intel's matrix tiles), the thread count and the load at the time.

`clock`: wall time by default; `time.thread_time` with one torch thread counts only the time
this thread ran, which keeps figures readable on a machine shared with other work.

- `read_bandwidth()`: GB/s for streaming a 256 MiB float32 tensor through `sum` (read only,
  as a forward pass reads its weights), median of `runs`; on plain memory and on huge pages
  (as LossLens holds its packed weights), the faster of the two: the floor is the machine's.
- `weight_bytes(model)`: bytes a forward pass must read: every parameter except the
  embeddings (those only gather a few rows per token).
- `matmul_peak()`: float32 GFLOPS of a large square `torch.mm`, median of `runs`.
- `matmul_sustained()`: the same `torch.mm` back to back for a given time: what the CPU holds
  over a pass's seconds.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import torch


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    vendor = _cpuinfo().get("vendor_id", "")
    return {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor or "unknown")


def has_amx() -> bool:
    return "amx_tile" in _cpuinfo().get("flags", "").split()


def load_average() -> str:
    try:
        return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def describe_cpu() -> str:
    """One line: model, vendor, ISA level, AMX, CPUs, torch threads, load."""
    threads = torch.get_num_threads()
    return (
        f"CPU: {cpu_model()} ({cpu_vendor()}), ISA {torch.backends.cpu.get_cpu_capability()}, "
        f"AMX {'yes' if has_amx() else 'no'}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {threads} thread{'s' if threads != 1 else ''}, load average {load_average()}"
    )


def read_bandwidth(runs: int = 5, mib: int = 256, clock=time.perf_counter) -> float:
    """Median GB/s of one read-only pass (sum) over `mib` MiB of float32, on plain memory and on
    huge pages where the OS offers them: the faster. Huge pages read 1.1-1.4x faster here (AMD EPYC
    in a VM: fewer TLB misses), so a probe on plain memory alone would flatter the roofline ratio."""
    best = 0.0
    for big in _probe_buffers(mib):
        times = []
        for _ in range(runs):
            t0 = clock()
            big.sum()
            times.append(clock() - t0)
        best = max(best, big.numel() * 4 / statistics.median(times) / 1e9)
    return best


@functools.cache
def _probe_buffers(mib: int) -> list[torch.Tensor]:
    """Allocated and touched once per process, then kept: mapping and freeing 512 MB at every probe
    slowed the forward pass that came next by ~2.5 ms (32.2 against 34.7 ms here)."""
    from core.fast.memory import huge_empty

    n = mib * 2**20 // 4
    buffers = [torch.ones(n)]
    huge = huge_empty(n)
    if huge is not None:
        buffers.append(huge.fill_(1.0))
    return buffers


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "emb" not in name)


def matmul_peak(runs: int = 5, n: int = 2048, clock=time.perf_counter) -> float:
    """Median float32 GFLOPS of an n x n x n torch.mm."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        t0 = clock()
        torch.mm(a, b)
        times.append(clock() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def matmul_sustained(seconds: float, n: int = 2048, clock=time.perf_counter) -> float:
    """float32 GFLOPS of n x n x n torch.mm run back to back for at least `seconds`: what the CPU
    holds over a pass's length, beside matmul_peak's few tens of ms."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    calls, t0 = 0, clock()
    while True:
        torch.mm(a, b)
        calls += 1
        elapsed = clock() - t0
        if elapsed >= seconds:
            return calls * 2 * n**3 / elapsed / 1e9
