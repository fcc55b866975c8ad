"""bench/machine.py's bandwidth probe: the roofline that bench/bench_loss.py divides by."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import machine


def test_the_probe_reads_plain_and_huge_page_memory_it_keeps():
    first = machine.read_bandwidth(runs=1, mib=8)
    buffers = machine._probe_buffers(8)
    assert first > 0.1  # GB/s: any machine reads 8 MiB faster than that
    assert [b.numel() for b in buffers] == [8 * 2**18] * len(buffers)
    assert all(float(b[-1]) == 1.0 for b in buffers)  # touched before timing
    if sys.platform.startswith("linux"):  # the weights' kind of memory is probed too
        assert len(buffers) == 2 and buffers[1].data_ptr() % (2 << 20) == 0
    machine.read_bandwidth(runs=1, mib=8)
    # Kept, not mapped again per probe (which slowed the next request by ~2.5 ms).
    assert [b.data_ptr() for b in machine._probe_buffers(8)] == [b.data_ptr() for b in buffers]


def test_the_probe_reports_the_faster_memory():
    mib = 8
    ticks = iter([0.0, 1.0, 0.0, 0.5])  # plain memory: 1 s; huge pages: 0.5 s
    got = machine.read_bandwidth(runs=1, mib=mib, clock=lambda: next(ticks))
    fastest = 0.5 if sys.platform.startswith("linux") else 1.0
    assert got == pytest.approx(mib * 2**20 / fastest / 1e9)


def test_the_sustained_probe_counts_every_matmul_over_the_time_it_ran():
    ticks = iter([10.0, 10.5, 11.0, 11.5, 12.0, 12.5])  # start, then one tick per torch.mm
    got = machine.matmul_sustained(2.0, n=64, clock=lambda: next(ticks))
    assert got == pytest.approx(4 * 2 * 64**3 / 2.0 / 1e9)  # 4 products in 2 s, then it stops
    assert next(ticks) == 12.5  # no product past the time asked for


@pytest.mark.parametrize("threads, words", [(1, "with 1 thread,"), (2, "with 2 threads,")])
def test_the_cpu_line_names_the_cpu_its_isa_amx_and_torch_s_threads(threads, words):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        line = machine.describe_cpu()
    finally:
        torch.set_num_threads(before)
    isa = torch.backends.cpu.get_cpu_capability()
    assert line.startswith(f"CPU: {machine.cpu_model()} ({machine.cpu_vendor()}), ISA {isa}, AMX ")
    assert f"torch {torch.__version__} {words} load average " in line
