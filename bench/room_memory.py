"""Memory of a room: proportional set size (PSS) per LossLens process for N = 1, 2, 4.

PSS (/proc/PID/smaps_rollup) counts a page shared by k processes as 1/k in each, so the PSS of
all processes adds up to what the room really holds; RSS counts shared pages in full in each.
Each room is started as `deploy/room.py start` does (processes only: memory needs no proxy), every
process gets one visit that builds the book's model and computes a text, then /proc is read.

    python bench/room_memory.py                          # N = 1, 2, 4
    python bench/room_memory.py --processes 1,2 --env LOSSLENS_SHARED_WEIGHTS=0

Loopback only; each wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.room import Room, RoomConfig  # noqa: E402
from devtools.harness import server_env  # noqa: E402
from devtools.protocol import Plan, expected_numbers, visit, visitor_text  # noqa: E402
from devtools.room_client import free_block  # noqa: E402

FIELDS = (
    "Rss",
    "Pss",
    "Shared_Clean",
    "Shared_Dirty",
    "Private_Clean",
    "Private_Dirty",
    "Pss_File",
    "Pss_Anon",
)


def smaps_rollup(pid: int) -> dict[str, int]:
    """KiB per field of /proc/PID/smaps_rollup (Linux 4.14+)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in FIELDS:
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


async def warm(room: Room, timeout: float) -> list[str | None]:
    plans = []
    for p in room.processes:
        plan = Plan("text", {"text": visitor_text(60_000 + p.index)})
        plans.append(plan)
    expected_numbers(plans, {i: p.edits["text"] for i, p in enumerate(plans)}, {})
    # One after another: the figure is memory, and a build at a time keeps the peak honest.
    return [(await visit(p.port, plan, timeout)).error for p, plan in zip(room.processes, plans, strict=True)]


def measure(n: int, work: Path, env: dict, timeout: float) -> list[dict]:
    base = free_block(n)
    config = RoomConfig(
        processes=n, port=base, first_port=base + 1, run_dir=work / f"room-{n}", proxy=False, env=env
    )
    room = Room(config).start()
    try:
        errors = asyncio.run(warm(room, timeout))
        if any(errors):
            raise RuntimeError(f"warm-up visits failed: {errors}")
        time.sleep(2)
        return [smaps_rollup(p.proc.pid) for p in room.processes]
    finally:
        room.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the processes")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="losslens-room-memory-"))
    env = server_env(work / "cache")  # one cache for every N: what the processes may share on disk
    env["LOSSLENS_SHARED"] = "1"
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    print(f"room memory, {os.cpu_count()} cores, env {args.env or '(default)'}; MiB")
    one_rss = None
    for n in args.processes:
        rows = measure(n, work, env, args.timeout)
        mib = [{k: v / 1024 for k, v in r.items()} for r in rows]
        total_pss = sum(r["Pss"] for r in mib)
        total_rss = sum(r["Rss"] for r in mib)
        one_rss = one_rss or (mib[0]["Rss"] if n == 1 else None)
        per = ", ".join(
            f"PSS {r['Pss']:.0f} (file {r.get('Pss_File', 0):.0f}, anon {r.get('Pss_Anon', 0):.0f}) "
            f"RSS {r['Rss']:.0f} shared {r['Shared_Clean'] + r['Shared_Dirty']:.0f} "
            f"private {r['Private_Clean'] + r['Private_Dirty']:.0f}"
            for r in mib
        )
        against = f"; N x RSS(N=1) = {n * one_rss:.0f}" if one_rss else ""
        print(f"N={n}: total PSS {total_pss:.0f}, total RSS {total_rss:.0f}{against}\n  per process: {per}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
