"""How fast the app answers: rerun time after a text edit (AppTest), cold start and RSS (real server).

    python bench/bench_app.py            # reruns per view, against core alone
    python bench/bench_app.py --server   # also: process start -> first complete page, server RSS
    python bench/bench_app.py --views temperature units confidence gradient   # only these views

Prints figures; the target is a median rerun <= 300 ms once the model is cached. On a busy
machine wall times swing widely: compare the core-alone reference measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BOOK = "every effort moves you\nI really like chocolate"
WORDS = ["today", "again", "slowly", "here", "now", "too", "well", "first", "later", "fast", "soon", "once"]
VIEWS = [
    "tokens",
    "probabilities",
    "figure57",
    "cross_entropy",
    "per_token",
    "temperature",
    "units",
    "confidence",
    "gradient",
]


def edits(n: int, start: int = 0) -> list[str]:
    """Texts that differ from each other, like a learner typing: every one a cache miss."""
    w = len(WORDS)  # two added words: w * w different texts of about the same length
    return [BOOK.replace("you", f"you {WORDS[i % w]} {WORDS[(i // w) % w]}") for i in range(start, start + n)]


def bench_reruns(n: int, views: list[str] = VIEWS) -> None:
    from machine import describe_cpu
    from streamlit.testing.v1 import AppTest

    from core.lessons.report import summarize
    from core.serving.requests import compute_loss
    from ui.cache import get_model

    print(describe_cpu())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    t = time.perf_counter()
    at.run()
    print(f"first run (builds the model): {time.perf_counter() - t:.1f} s")
    model = get_model("untrained-124m", 123)  # the app's own cached model

    def core_alone(texts: list[str]) -> float:
        """compute_loss + summarize on new texts, in a worker thread as Streamlit runs scripts
        (a loaded machine treats the main thread's OpenMP pool very differently)."""
        times: list[float] = []

        def work():
            for text in texts:
                t = time.perf_counter()
                summarize(compute_loss(model, text.split("\n"), 10, 1.0))
                times.append(time.perf_counter() - t)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        return 1000 * statistics.median(times)

    for k, view in enumerate(views):
        at.switch_page(f"components/{view}.py").run()
        times, cpu = [], []
        for text in edits(n, start=2 * k * n):
            at.text_area(key="text").set_value(text)
            t, c = time.perf_counter(), time.process_time()
            at.run()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            assert not at.exception, at.exception
        same = []
        for _ in range(5):
            t = time.perf_counter()
            at.run()
            same.append(time.perf_counter() - t)
        ref = core_alone(edits(n, start=(2 * k + 1) * n))  # measured right after, on the same model
        med = 1000 * statistics.median(times)
        print(
            f"{view}: rerun after a text edit median {med:.0f} ms (max {1000 * max(times):.0f} ms); "
            f"core alone {ref:.0f} ms, so the page adds {med - ref:+.0f} ms ({med / ref:.2f}x); "
            f"rerun with nothing changed {1000 * statistics.median(same):.0f} ms; "
            f"CPU time per edit {1000 * statistics.median(cpu):.0f} ms (all threads; steadier than wall time "
            "on a busy machine)"
        )


def bench_server() -> None:
    """Cold start and RSS of a real server, driven by Chromium (the shared devtools.harness)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    from devtools.harness import (
        CHROMIUM_ARGS,
        LOSS_LABEL,
        StreamlitServer,
        find_chromium,
        metric_value,
        proc_kib,
        server_env,
    )

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("--server needs Chromium (apt-get install chromium, or set LOSSLENS_CHROMIUM)")
    work = Path(tempfile.mkdtemp(prefix="losslens-bench-app-"))
    t0 = time.perf_counter()
    server = StreamlitServer(server_env(work / "cache"), work).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{server.url}/")
            loss = metric_value(page, LOSS_LABEL, timeout=300_000)
            cold = time.perf_counter() - t0
            print(f"cold start (process start -> the book's loss {loss} on the page): {cold:.1f} s")
            print(f"server RSS after the first page: {proc_kib(server.pid, 'VmRSS') / 1024:.0f} MB")
            page.goto(f"{server.url}/figure-5-7?step=6")
            page.get_by_text("Step 6 of 6").first.wait_for(timeout=60_000)
            t = time.perf_counter()
            page.goto(f"{server.url}/")
            metric_value(page, LOSS_LABEL, timeout=60_000)
            print(f"warm page load in a new visit: {time.perf_counter() - t:.2f} s")
            print(f"server RSS after visiting two views: {proc_kib(server.pid, 'VmRSS') / 1024:.0f} MB")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=12, help="text edits per view (at most 14)")
    ap.add_argument(
        "--server", action="store_true", help="also measure cold start and RSS with a real server"
    )
    ap.add_argument(
        "--views", nargs="+", default=VIEWS, choices=VIEWS, metavar="VIEW", help="only these views"
    )
    args = ap.parse_args()
    bench_reruns(args.n, args.views)
    if args.server:
        bench_server()
