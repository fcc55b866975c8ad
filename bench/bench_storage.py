"""The disk and namespace attacks on a shared server, tried in Chromium as a careless or hostile
visitor would (loopback only, bounded in count and time): what the visitor saw, the disk the
saved models took, and the peak RSS of the server and of its training children.

    python bench/bench_storage.py [--cycles 4] [--quota-mb 400]

Each attack gets its own `streamlit run app.py` (LOSSLENS_SHARED=1, LOSSLENS_MEMORY_LIMIT=2.7GB):
  cycles     train-then-stop of the quick preset, again and again, under a quota of --quota-mb;
  namespace  visitor B types the name of visitor A's stopped run, then trains under it;
  read-only  the cache folder on a read-only tmpfs;
  full-disk  the cache on a 20 MB tmpfs (refused before training), and on a 300 MB one that
             fills while the run trains (refused at the save).
The tmpfs mounts need root. Results go to docs/shared-server.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.harness import (  # noqa: E402
    APP_TIMEOUT,
    CHROMIUM_ARGS,
    StreamlitServer,
    metric_value,
    proc_kib,
    server_env,
    tree_rss_kib,
    wait_for_app,
)

RUN_TIMEOUT = 300_000  # ms: a quick run's first evaluation on two busy cores


class Peaks:
    """Peak RSS of the server alone and of the server with its children, every 0.1 s."""

    def __init__(self, pid: int):
        self.pid, self.server, self.tree = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.server = max(self.server, proc_kib(self.pid, "VmRSS"))
                self.tree = max(self.tree, tree_rss_kib(self.pid))
            except (OSError, KeyError):
                pass
            time.sleep(0.1)

    def line(self) -> str:
        self._stop.set()
        self._thread.join()
        return f"peak RSS: server {self.server / 1024:,.0f} MB, server + children {self.tree / 1024:,.0f} MB"


@contextmanager
def tmpfs(options: str):
    where = Path(tempfile.mkdtemp(prefix="losslens-bench-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@contextmanager
def served(cache: Path, **env):
    work = Path(tempfile.mkdtemp(prefix="losslens-bench-log-"))
    e = server_env(cache)
    e.update({"LOSSLENS_SHARED": "1", "LOSSLENS_MEMORY_LIMIT": "2.7GB", **env})
    srv = StreamlitServer(e, work).start()
    peaks = Peaks(srv.pid)
    try:
        yield srv, peaks
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6 if folder.exists() else 0.0


def training_page(browser, url: str, name: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(APP_TIMEOUT)
    page.goto(f"{url}/training")
    wait_for_app(page)
    field = page.get_by_label("Save as")
    field.fill(name)
    field.press("Enter")
    wait_for_app(page)
    return page


def alerts(page) -> str:
    return " | ".join(t.strip() for t in page.locator('[data-testid="stAlert"]').all_inner_texts())


def train_then_stop(page) -> str:
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator('[data-testid="stProgress"]').wait_for(timeout=RUN_TIMEOUT)
    page.get_by_role("button", name="Stop", exact=True).click()
    page.locator('[data-testid="stAlert"]', has_text="Stopped after").or_(
        page.locator('[data-testid="stAlert"]', has_text="Error")
    ).or_(page.locator('[data-testid="stAlert"]', has_text="disk")).first.wait_for(timeout=RUN_TIMEOUT)
    wait_for_app(page)
    return alerts(page)


def cycles(browser, n: int, quota_mb: int) -> None:
    cache = Path(tempfile.mkdtemp(prefix="losslens-bench-cache-"))
    with served(cache, LOSSLENS_MODELS_MAX_MB=str(quota_mb)) as (srv, peaks):
        page = training_page(browser, srv.url, "cycle-0")
        worst = 0.0
        for i in range(n):
            if i:
                field = page.get_by_label("Save as")
                field.fill(f"cycle-{i}")
                field.press("Enter")
                wait_for_app(page)
            saw = train_then_stop(page)
            used = disk_mb(cache / "models")
            worst = max(worst, used)
            print(f"  cycle {i + 1}: models {used:,.0f} MB on disk; saw: {saw[:160]}", flush=True)
        print(
            f"cycles: {n} train-then-stop, quota {quota_mb} MB, most on disk {worst:,.0f} MB; {peaks.line()}"
        )
    shutil.rmtree(cache, ignore_errors=True)


def namespace(browser) -> None:
    cache = Path(tempfile.mkdtemp(prefix="losslens-bench-cache-"))
    with served(cache) as (srv, peaks):
        a = training_page(browser, srv.url, "workshop")
        train_then_stop(a)
        (a_file,) = (cache / "models").glob("*/workshop.safetensors")
        before = hashlib.sha256(a_file.read_bytes()).hexdigest()
        b = training_page(browser, srv.url, "workshop")  # B types A's name
        resume_off = b.get_by_role("button", name="Resume", exact=True).is_disabled()
        b.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        b_sees = b.get_by_role("option", name="Trained: workshop", exact=False).count()
        b.keyboard.press("Escape")
        saw = train_then_stop(b)  # B trains under the same name: its own model
        after = hashlib.sha256(a_file.read_bytes()).hexdigest()
        folders = sorted(p.parent.name[:6] + "…" for p in (cache / "models").glob("*/workshop.safetensors"))
        field = a.get_by_label("Save as")  # A's page, still open, asked again (a rerun)
        for name in ("other", "workshop"):
            field.fill(name)
            field.press("Enter")
            wait_for_app(a)
        a_resume = a.get_by_role("button", name="Resume", exact=True).is_enabled()
        print(
            f"namespace: B's Resume disabled={resume_off}, A's model in B's picker={b_sees}, B's run saw: "
            f"{saw[:120]}; A's weights unchanged={before == after}; 'workshop' saved in folders {folders}; "
            f"A's Resume still enabled={a_resume}; {peaks.line()}"
        )
    shutil.rmtree(cache, ignore_errors=True)


def read_only(browser) -> None:
    with tmpfs("ro,size=1m") as ro, served(ro / "losslens") as (srv, peaks):
        page = browser.new_context().new_page()
        page.set_default_timeout(APP_TIMEOUT)
        page.goto(f"{srv.url}/figure-5-7")
        wait_for_app(page)
        loss = metric_value(page, "Loss (cross entropy)")
        page.goto(f"{srv.url}/training")
        wait_for_app(page)
        print(
            f"read-only: figure 5.7 loss {loss}; Training says: {alerts(page)[:200]}; Train disabled="
            f"{page.get_by_role('button', name='Train', exact=True).is_disabled()}; {peaks.line()}"
        )


def full_disk(browser) -> None:
    with tmpfs("size=20m") as disk, served(disk) as (srv, peaks):
        page = training_page(browser, srv.url, "no-room")
        page.get_by_role("button", name="Train", exact=True).click()
        wait_for_app(page)
        print(
            f"full disk (20 MB): saw: {alerts(page)[:260]}; "
            f"models on disk {disk_mb(disk / 'models'):.1f} MB; {peaks.line()}"
        )
    with tmpfs("size=300m") as disk, served(disk) as (srv, peaks):
        page = training_page(browser, srv.url, "fills-up")
        page.get_by_role("button", name="Train", exact=True).click()
        page.locator('[data-testid="stProgress"]').wait_for(timeout=RUN_TIMEOUT)
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 100 * 1024**2))  # another writer fills the disk
        page.get_by_role("button", name="Stop", exact=True).click()
        page.locator('[data-testid="stAlert"]', has_text="disk").first.wait_for(timeout=RUN_TIMEOUT)
        wait_for_app(page)
        left = sorted(p.name for p in (disk / "models").rglob("*") if p.is_file())
        print(
            f"full disk (300 MB, filled while training): saw: {alerts(page)[:260]}; "
            f"files left {left}; {peaks.line()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--quota-mb", type=int, default=400)
    parser.add_argument("--only", choices=["cycles", "namespace", "read-only", "full-disk"])
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        if args.only in (None, "read-only"):
            read_only(browser)
        if args.only in (None, "full-disk"):
            full_disk(browser)
        if args.only in (None, "namespace"):
            namespace(browser)
        if args.only in (None, "cycles"):
            cycles(browser, max(1, min(args.cycles, 10)), args.quota_mb)
        browser.close()


if __name__ == "__main__":
    main()
