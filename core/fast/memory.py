"""Memory for packed weights and large outputs: huge pages, pages handed back, the heap trimmed."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
import threading

import torch

HUGE_PAGE = 2 << 20  # bytes in an x86-64 huge page
HUGE_OUTPUT = 32 << 20  # bytes from which panel.linear() puts its output on huge pages


def huge_empty(numel: int) -> torch.Tensor | None:
    """`numel` float32 on fresh memory that the OS is asked to back with 2 MB pages (Linux's
    transparent huge pages, madvise); None where there is no such advice.

    Why: the kernel streams every weight once per pass; on 4 KB pages that is a TLB miss every 4 KB
    (two page-table walks in a virtual machine). Pages are only held where something is written."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is None or numel <= 0:
        return None
    try:
        memory = mmap.mmap(-1, numel * 4 + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        memory.madvise(advice)
    except (OSError, ValueError, AttributeError):
        return None
    raw = torch.frombuffer(memory, dtype=torch.uint8)  # holds the mapping until its last view goes
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + numel * 4].view(torch.float32)


_outputs = threading.local()  # .pool while reusing_outputs() is entered on this thread


@contextlib.contextmanager
def reusing_outputs():
    """While inside, on this thread: the kernel's outputs from HUGE_OUTPUT bytes on (a batch's
    logits) reuse the last one's mapping once nothing else holds it, instead of a fresh mapping
    that the OS zeroes as it is first written. For a pass over a data set's batches."""
    if getattr(_outputs, "pool", None) is not None:  # nested: the outer pass keeps its pool
        yield
        return
    _outputs.pool = {}
    try:
        yield
    finally:
        _outputs.pool = None


def large_output(numel: int) -> torch.Tensor | None:
    """huge_empty(numel), or inside reusing_outputs() the pool's last one of that size if it is free."""
    pool = getattr(_outputs, "pool", None)
    kept = None if pool is None else pool.get(numel)
    if kept is not None and unshared(kept):
        return kept
    y = huge_empty(numel)
    if pool is not None and y is not None:
        pool.clear()  # one at a time: a held one stays with its holder and goes with it
        pool[numel] = y
    return y


def unshared(t: torch.Tensor) -> bool:
    """No other tensor uses t's memory (a caller's logits, a state dict, a view): the count is t's
    own reference and the probe's. False where torch's private count is missing: then nothing is
    packed in place or reused, which is slower but safe."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2
    except (AttributeError, RuntimeError, TypeError):
        return False


def discard(t: torch.Tensor) -> None:
    """Hand the whole pages inside t's memory back to the OS (they read as zeros afterwards)."""
    madvise = _libc_madvise()
    if madvise is None:
        return
    start = -(-t.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (t.data_ptr() + t.numel() * t.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        madvise(start, end - start, mmap.MADV_DONTNEED)


@functools.cache
def _libc_madvise():
    if not hasattr(mmap, "MADV_DONTNEED") or not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim); False where there is none.

    Why: packing frees each plain weight after its packed copy is made, and glibc keeps such blocks
    in its heaps, so a process that builds several models would keep growing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to trim with
        return False
    return True
