"""What a fresh visit in a real browser costs the server processes: Chromium (an empty cache per
visit) against the minimal Streamlit app served directly, LossLens served directly, and LossLens
behind deploy/'s nginx, whose cache serves Streamlit's static files. Alternated, medians.

    python bench/room_static.py                  # 8 visits each
    python bench/room_static.py --visits 4

The figure is the server processes' CPU seconds (/proc) from the page's start until it has
settled; nginx's own CPU is printed beside it. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.room import Room, RoomConfig  # noqa: E402
from devtools.harness import (  # noqa: E402
    CHROMIUM_ARGS,
    StreamlitServer,
    find_chromium,
    server_env,
    tree_cpu_seconds,
    wait_for_app,
)
from devtools.room_client import free_block  # noqa: E402

SETTLE_S = 1.0  # after the page is idle: late requests (fonts, the favicon) still count


def visit(browser, url: str, pids: list[int], extra: int | None) -> tuple[float, int, int, float]:
    """One fresh visit: (server CPU s, requests, bytes, nginx CPU s)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sizes = []
    page.on("requestfinished", lambda r: sizes.append(r.sizes()["responseBodySize"] if r.response() else 0))
    cpu0 = sum(tree_cpu_seconds(p) for p in pids)
    ng0 = tree_cpu_seconds(extra) if extra else 0.0
    page.goto(url, timeout=120_000)
    wait_for_app(page)
    time.sleep(SETTLE_S)
    cpu = sum(tree_cpu_seconds(p) for p in pids) - cpu0
    ng = (tree_cpu_seconds(extra) - ng0) if extra else 0.0
    context.close()
    return cpu, len(sizes), sum(sizes), ng


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=8)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("needs Chromium (apt-get install chromium, or set LOSSLENS_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="losslens-room-static-"))
    env = server_env(work / "cache")
    env["LOSSLENS_SHARED"] = "1"
    (work / "minimal").mkdir()
    (work / "app").mkdir()
    minimal = StreamlitServer(env, work / "minimal", script="bench/minimal_app.py").start()
    app = StreamlitServer(env, work / "app").start()
    base = free_block(1)
    room = Room(
        RoomConfig(processes=1, port=base, first_port=base + 1, run_dir=work / "room", env=env)
    ).start()
    rows = {"minimal app, direct": [], "LossLens, direct": [], "LossLens behind nginx": []}
    targets = [
        ("minimal app, direct", minimal.url, [minimal.pid], None),
        ("LossLens, direct", app.url, [app.pid], None),
        ("LossLens behind nginx", room.url, [room.processes[0].proc.pid], room.nginx.pid),
    ]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for _, url, pids, extra in targets:  # warm: the model built, nginx's cache filled
                visit(browser, url, pids, extra)
            for _ in range(args.visits):
                for name, url, pids, extra in targets:
                    rows[name].append(visit(browser, url, pids, extra))
            browser.close()
    finally:
        room.stop()
        app.stop()
        minimal.stop()
    floor = statistics.median(r[0] for r in rows["minimal app, direct"])
    print(
        f"fresh Chromium visits, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"medians of {args.visits}"
    )
    for name, runs in rows.items():
        cpu = statistics.median(r[0] for r in runs)
        print(
            f"  {name:<24} server CPU {cpu:.3f} s ({cpu / floor:.2f}x the minimal app) | "
            f"{statistics.median(r[1] for r in runs):.0f} requests, "
            f"{statistics.median(r[2] for r in runs) / 1e6:.2f} MB | "
            f"nginx CPU {statistics.median(r[3] for r in runs):.3f} s"
            f" | runs {' '.join(f'{r[0]:.3f}' for r in runs)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
