"""How much memory this server may still use: one place for every memory check.

The ceiling is, in order: $LOSSLENS_MEMORY_LIMIT (for tests, and hosts that hide their limit),
the container's cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), else the machine's
RAM. What counts against it is the cgroup's own usage where there is a cgroup limit, and this
process tree's resident memory (the server and its training child) under the override; without
either, the kernel's MemAvailable is what is free. A container's /proc/meminfo shows the host's
memory, which is why the cgroup comes first.

Sizes: "2.7GB", "2700MB", "2.7G", "2.7GiB" or a number of bytes; GB means 2**30 bytes here, as
everywhere the app prints GB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidParameterError

LIMIT_ENV = "LOSSLENS_MEMORY_LIMIT"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
GB = 1024**3
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
# A cgroup v1 "limit" this large means none was set (the kernel writes LONG_MAX rounded to pages).
_V1_UNLIMITED = 1 << 60


def parse_size(text: str) -> int:
    """Bytes in "2.7GB", "2700MB", "2.7G", "512MiB" or "1000000" (GB = 2**30 bytes)."""
    m = _SIZE.match(str(text))
    if not m:
        raise InvalidParameterError(
            f"{LIMIT_ENV}={text!r} is not a size: write it as 2.7GB, 2700MB or a number of bytes."
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise InvalidParameterError(f"{LIMIT_ENV}={text!r}: the memory limit must be above zero.")
    return size


@dataclass(frozen=True)
class MemoryBudget:
    limit: int  # bytes this server (with its children) must stay under
    used: int  # bytes counted against it now
    free: int  # bytes it may still use
    source: str  # where the limit came from, for messages and the docs

    @property
    def free_gb(self) -> float:
        return self.free / GB

    @property
    def limit_gb(self) -> float:
        return self.limit / GB

    @property
    def used_gb(self) -> float:
        return self.used / GB


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    """One field of a cgroup memory.stat file (0 if absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def meminfo(proc: Path = PROC) -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, ...); empty where it cannot be read."""
    out = {}
    try:
        for line in (Path(proc) / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def cgroup_limit(root: Path = CGROUP_ROOT) -> tuple[int, int, str] | None:
    """(limit, usage, "cgroup v2" | "cgroup v1") of this container, or None without a limit.

    Usage leaves out the inactive page cache, which the kernel drops before it kills anything."""
    root = Path(root)
    v2 = root / "memory.max"
    if v2.exists():
        limit = _read_int(v2)  # "max": no limit
        current = _read_int(root / "memory.current")
        if limit is None or current is None:
            return None
        return limit, max(0, current - _stat(root / "memory.stat", "inactive_file")), "cgroup v2"
    for base in (root / "memory", root):
        limit = _read_int(base / "memory.limit_in_bytes")
        usage = _read_int(base / "memory.usage_in_bytes")
        if limit is not None and usage is not None:
            if limit >= _V1_UNLIMITED:
                return None
            return limit, max(0, usage - _stat(base / "memory.stat", "total_inactive_file")), "cgroup v1"
    return None


def tree_rss(pid: int | None = None, proc: Path = PROC) -> int:
    """Resident bytes of process `pid` (this one by default) and all its descendants."""
    proc = Path(proc)
    pid = os.getpid() if pid is None else pid
    total = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in (proc / str(p) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            for children in (proc / str(p) / "task").glob("*/children"):
                todo.extend(int(c) for c in children.read_text().split())
        except (OSError, ValueError):
            continue  # a process that ended while we looked
    return total


def memory_budget(
    cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC, pid: int | None = None, env: dict | None = None
) -> MemoryBudget:
    """This server's memory ceiling, what counts against it now, and what is left.

    The paths are parameters so that tests can hand it a fake cgroup and /proc."""
    env = os.environ if env is None else env
    info = meminfo(proc)
    host_free = info.get("MemAvailable")
    override = (env.get(LIMIT_ENV) or "").strip()
    if override:
        limit, used, source = parse_size(override), tree_rss(pid, proc), LIMIT_ENV
    elif (cg := cgroup_limit(cgroup_root)) is not None:
        limit, used, source = cg
    elif host_free is not None and "MemTotal" in info:
        total = info["MemTotal"]
        return MemoryBudget(total, total - host_free, host_free, "MemAvailable")
    else:  # neither a cgroup nor /proc (not Linux): a limit only the override can give
        return MemoryBudget(0, 0, 0, "unknown")
    free = max(0, limit - used)
    if host_free is not None:  # a limit above what the machine has left is no help
        free = min(free, host_free)
    return MemoryBudget(limit, used, free, source)


def free_ram_gb() -> float | None:
    """GB this server may still use (None where nothing can be known)."""
    budget = memory_budget()
    return None if budget.source == "unknown" else budget.free_gb


def process_rss(pid: int | None = None, proc: Path = PROC) -> int:
    """Resident bytes of one process (this one by default), without its children."""
    try:
        for line in (
            (Path(proc) / str(os.getpid() if pid is None else pid) / "status").read_text().splitlines()
        ):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
