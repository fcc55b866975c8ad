"""The memory and training-slot attacks on a shared server, tried as a careless visitor would
(loopback only, bounded in count and time), with the server's and the training child's peak RSS.

    python bench/bench_attacks.py --peaks            # each preset's training child, start to saved stop
    python bench/bench_attacks.py --attacks          # a real server with LOSSLENS_MEMORY_LIMIT=2.7GB

--peaks runs each preset's training child (TrainingRun, as the app does) through its first epoch:
evaluations, the epoch's sample, then a Stop, which saves the weights and the resume state. It
prints the child's VmHWM: core/models/presets.py's CHILD_PEAK_MB.

--attacks starts `streamlit run app.py` (LOSSLENS_SHARED=1, LOSSLENS_MEMORY_LIMIT=2.7GB, its own
cache) and drives it with Chromium: the book preset's estimate and training, the quick preset's
estimate, a 100-epoch run whose visitor closes the tab, and train-then-stop cycles. For each it
prints what the visitor saw and the peak RSS of the server and of its children, sampled every
0.1 s. Results go to docs/shared-server.md by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peaks(names: list[str]) -> None:
    os.environ["LOSSLENS_CACHE_DIR"] = tempfile.mkdtemp(prefix="losslens-peaks-")
    from core.models.corpus import load_verdict
    from core.models.presets import get_preset
    from core.serving.background import TrainingRun

    text = load_verdict()
    for name in names:
        preset = replace(get_preset(name), num_epochs=2)
        t0 = time.perf_counter()
        run = TrainingRun(preset, text, f"peak-{name}").start()
        hwm = 0
        while run.running:
            snap = run.snapshot()
            if snap["total_steps"] and snap["step"] >= snap["total_steps"] // 2:
                run.stop()  # the first epoch's last step: its sample comes, then the saved stop
            pid = run.pid
            try:
                hwm = max(hwm, _kib(pid, "VmHWM"))
            except (OSError, KeyError):
                pass
            time.sleep(0.2)
        snap = run.snapshot()
        print(
            f"{name}: child peak {snap['peak_mb']:.0f} MB (VmHWM at its end; sampled {hwm / 1024:.0f} MB), "
            f"{snap['step']} steps, stopped={snap['stopped']}, error={snap['error']}, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Sampler:
    """Peak RSS of a server and, apart, of its children, sampled every 0.1 s."""

    def __init__(self, pid: int):
        self.pid, self.server, self.children, self.total = pid, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        from core.runtime.memory import process_rss, tree_rss

        while not self._stop.is_set():
            server = process_rss(self.pid)
            total = tree_rss(self.pid)
            self.server = max(self.server, server)
            self.children = max(self.children, total - server)
            self.total = max(self.total, total)
            time.sleep(0.1)

    def line(self) -> str:
        mb = 2**20
        return (
            f"server {self.server / mb:.0f} MB, children {self.children / mb:.0f} MB, "
            f"together {self.total / mb:.0f} MB"
        )


def attacks(limit: str, grace: int, cycles: int) -> None:
    from playwright.sync_api import sync_playwright

    from devtools.harness import CHROMIUM_ARGS, StreamlitServer, find_chromium, server_env, wait_for_app

    work = Path(tempfile.mkdtemp(prefix="losslens-attacks-"))
    env = server_env(work / "cache")
    env.update(LOSSLENS_SHARED="1", LOSSLENS_MEMORY_LIMIT=limit, LOSSLENS_ORPHAN_GRACE_S=str(grace))
    server = StreamlitServer(env, work).start()
    print(f"server on {server.url}, LOSSLENS_MEMORY_LIMIT={limit}, grace {grace} s", flush=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)

            def training_page():
                page = browser.new_page()
                page.goto(f"{server.url}/training")
                wait_for_app(page)
                page.get_by_role("heading", name="Training").wait_for()
                return page

            def alerts(page) -> str:
                return " | ".join(
                    t.strip() for t in page.locator('[data-testid="stAlert"]').all_inner_texts() if t.strip()
                )

            def choose(page, preset: str) -> None:
                page.locator('[data-testid="stRadio"] label', has_text=preset).first.click()
                wait_for_app(page)

            # Warm the server: the lesson model is loaded, as after the first visitor.
            page = training_page()
            home = browser.new_page()
            home.goto(server.url)
            wait_for_app(home)
            time.sleep(2)
            from core.runtime.memory import tree_rss

            print(f"idle server with a visitor: {tree_rss(server.pid) / 2**20:.0f} MB", flush=True)

            # 1. The book preset: its estimate and its Train button.
            with Sampler(server.pid) as s:
                choose(page, "book")
                est = page.get_by_role("button", name="Estimate the time on this server")
                train = page.get_by_role("button", name="Train", exact=True)
                seen = f"Estimate enabled={est.is_enabled()}, Train enabled={train.is_enabled()}; "
                seen += alerts(page)
            print(f"book preset: {seen}\n  {s.line()}", flush=True)

            # 2. The quick preset's estimate: real steps, in a child.
            with Sampler(server.pid) as s:
                choose(page, "quick")
                page.get_by_role("button", name="Estimate the time on this server").click()
                page.get_by_text("Measured on this machine").wait_for(timeout=300_000)
                seen = alerts(page)
            print(f"quick estimate: {seen}\n  {s.line()}", flush=True)

            # 3. A 100-epoch run, its tab closed: the slot is free again after the grace period.
            with Sampler(server.pid) as s:
                epochs = page.get_by_label("Epochs")
                epochs.fill("100")
                epochs.press("Enter")
                wait_for_app(page)
                page.get_by_role("button", name="Train", exact=True).click()
                page.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
                page.close()
                closed = time.monotonic()
                other = training_page()
                seen_busy = ""
                while time.monotonic() - closed < grace + 120:
                    other.get_by_role("button", name="Train", exact=True).click()
                    wait_for_app(other)
                    text = alerts(other)
                    if "Another visitor" in text:
                        seen_busy = seen_busy or text
                        other.reload()
                        wait_for_app(other)
                        time.sleep(5)
                        continue
                    break
                freed = time.monotonic() - closed
                other.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
                other.get_by_role("button", name="Stop").click()
                other.get_by_text("Stopped after").wait_for(timeout=300_000)
            print(
                f"abandoned 100-epoch run: another visitor saw {seen_busy!r}; the slot was free "
                f"{freed:.0f} s after the tab closed (grace {grace} s)\n  {s.line()}",
                flush=True,
            )

            # 4. Train, then stop, again and again: the server's memory stays flat.
            page = other
            before = tree_rss(server.pid)
            with Sampler(server.pid) as s:
                for i in range(cycles):
                    name = page.get_by_label("Save as")
                    name.fill(f"cycle-{i}")
                    name.press("Enter")
                    wait_for_app(page)
                    page.get_by_role("button", name="Train", exact=True).click()
                    page.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
                    page.get_by_role("button", name="Stop").click()
                    page.get_by_text("Stopped after").wait_for(timeout=300_000)
                    wait_for_app(page)
            after = tree_rss(server.pid)
            print(
                f"{cycles} train-then-stop cycles: server tree {before / 2**20:.0f} MB before, "
                f"{after / 2**20:.0f} MB after\n  {s.line()}",
                flush=True,
            )
            browser.close()
    finally:
        server.stop()
        log = server.log_tail(200_000)
        print(f"'missing ScriptRunContext' in the server's log: {log.count('missing ScriptRunContext')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peaks", action="store_true")
    ap.add_argument("--presets", nargs="+", default=["quick", "book"])
    ap.add_argument("--attacks", action="store_true")
    ap.add_argument("--limit", default="2.7GB")
    ap.add_argument("--grace", type=int, default=30, help="LOSSLENS_ORPHAN_GRACE_S for the server")
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()
    if args.peaks:
        peaks(args.presets)
    if args.attacks:
        attacks(args.limit, args.grace, args.cycles)


if __name__ == "__main__":
    main()
