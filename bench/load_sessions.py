"""Concurrent sessions: N real browser sessions against one LossLens server.

Each session opens the app in its own browser context, replaces the text with its own
sentence and waits until the loss metric shows the value that core computes for that
sentence, so cross-talk between sessions (a shared cache or model answering for the wrong
text) counts as an error. Prints p50/p95 of the times, the error count and the server's RSS
before, between and after the rounds, and its peak (VmHWM).

    python bench/load_sessions.py                    # starts its own server, 10 sessions x 2 rounds
    python bench/load_sessions.py --sessions 20 --rounds 3
    python bench/load_sessions.py --url http://127.0.0.1:8501   # an already running server

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: core and devtools live at the root

from devtools.harness import (  # noqa: E402
    CHROMIUM_ARGS,
    DONE_STATES,
    StreamlitServer,
    cpu_seconds,
    find_chromium,
    proc_kib,
    server_env,
    tree_rss_kib,
)

SUBJECTS = ["The old painter", "A quiet river", "My neighbour", "The tired engineer", "Every student",
            "The small cat", "Our teacher", "The night train", "A bright comet", "The baker"]  # fmt: skip
VERBS = ["paints", "carries", "counts", "forgets", "reads", "watches", "builds", "finds", "hears", "sells"]
OBJECTS = ["the morning light", "seven stones", "a long letter", "the blue door", "every cloud",
           "warm bread", "the last map", "an open window", "the silver key", "two red apples"]  # fmt: skip
TIMEOUT_MS = 120_000


def session_text(i: int) -> str:
    """A distinct sentence for session i (distinct texts give distinct losses)."""
    n = len(SUBJECTS)
    return f"{SUBJECTS[i % n]} {VERBS[(i // n + i) % n]} {OBJECTS[(i * 3 + i // n) % n]} ({i})."


def descendants_cpu_seconds(pid: int, exclude: int | None = None) -> float:
    """CPU time of every live descendant of `pid` (here: the browser), but not `exclude`'s tree."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
        except (OSError, ValueError, IndexError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        for child, (ppid, ticks) in parents.items():
            if ppid == p and child != exclude:
                total += ticks
                todo.append(child)
    return total / os.sysconf("SC_CLK_TCK")


async def wait_done(page) -> None:
    app = '[data-testid="stApp"]'
    await page.wait_for_selector(f'{app}[data-test-connection-state="CONNECTED"]', timeout=TIMEOUT_MS)
    await page.wait_for_function(
        """(states) => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && states.includes(app.getAttribute('data-test-script-state'));
        }""",
        arg=list(DONE_STATES),
        timeout=TIMEOUT_MS,
    )


async def loss_shown(page, expected: str) -> None:
    """Wait until the loss metric's value reads `expected` (4 decimals, as the app shows it)."""
    await page.wait_for_function(
        """(expected) => [...document.querySelectorAll('[data-testid="stMetric"]')].some(m => {
            const label = m.querySelector('[data-testid="stMetricLabel"]');
            const value = m.querySelector('[data-testid="stMetricValue"]');
            return label && value && label.innerText.includes('Loss')
                && value.innerText.replace(/,/g, '').includes(expected);
        })""",
        arg=expected,
        timeout=TIMEOUT_MS,
    )


async def run_session(browser, url: str, i: int, text: str, expected: str, out: dict) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    try:
        t0 = time.perf_counter()
        await page.goto(url, timeout=TIMEOUT_MS)
        await wait_done(page)
        out["open"] = time.perf_counter() - t0
        box = page.locator("textarea").first
        await box.fill(text)
        t1 = time.perf_counter()
        await box.press("Control+Enter")
        await loss_shown(page, expected)
        out["result"] = time.perf_counter() - t1
        if await page.locator('[data-testid="stException"]').count():
            errors.append("Streamlit exception box")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        await context.close()
    out["errors"] = errors


async def run_round(browser, url: str, texts: list[str], expected: list[str]) -> list[dict]:
    outs = [{} for _ in texts]
    await asyncio.gather(
        *(
            run_session(browser, url, i, t, e, o)
            for i, (t, e, o) in enumerate(zip(texts, expected, outs, strict=True))
        )
    )
    return outs


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def expected_losses(texts: list[str]) -> list[str]:
    from core import build_untrained_model
    from core.lessons.loss import compute_loss

    model = build_untrained_model(123)
    return [f"{float(compute_loss(model, [t]).loss):.4f}" for t in texts]


async def main_async(args) -> int:
    from playwright.async_api import async_playwright

    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found: install it (apt-get install chromium) or set LOSSLENS_CHROMIUM")
        return 2
    texts = [session_text(i) for i in range(args.sessions)]
    assert len(set(texts)) == len(texts)
    expected = expected_losses(texts)
    if len(set(expected)) != len(expected):
        print("warning: two session texts give the same 4-decimal loss; cross-talk may go unseen")

    server = None
    url = args.url
    if url is None:
        work = Path(tempfile.mkdtemp(prefix="losslens-load-"))
        server = StreamlitServer(server_env(work / "cache"), work).start()
        url = server.url
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            # Warm-up: one session loads the model into the server's cache.
            warm = await run_round(
                browser, url, [session_text(10_000)], expected_losses([session_text(10_000)])
            )
            rss = []
            if server:
                rss.append(("after warm-up", tree_rss_kib(server.pid)))
            rounds = []
            for r in range(args.rounds):
                cpu0 = cpu_seconds(server.pid) if server else float("nan")
                browser0 = descendants_cpu_seconds(os.getpid(), exclude=server.pid if server else None)
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                outs = await run_round(browser, url, texts, expected)
                wall = time.perf_counter() - t0
                cpu = (cpu_seconds(server.pid) if server else float("nan")) - cpu0
                browser_cpu = (
                    descendants_cpu_seconds(os.getpid(), exclude=server.pid if server else None) - browser0
                )
                rounds.append((outs, wall, cpu, browser_cpu, max(load0, os.getloadavg()[0])))
                if server:
                    rss.append((f"after round {r + 1}", tree_rss_kib(server.pid)))
            await browser.close()
    finally:
        peak = proc_kib(server.pid, "VmHWM") if server else None
        if server:
            server.stop()

    from machine import describe_cpu

    print(describe_cpu())
    print(f"LossLens load: {args.sessions} concurrent browser sessions x {args.rounds} rounds against {url}")
    print(f"warm-up session: open {warm[0].get('open', float('nan')):.2f} s, errors {len(warm[0]['errors'])}")
    total_errors = 0
    all_results = []
    for r, (outs, wall, cpu, browser_cpu, load) in enumerate(rounds, 1):
        opens = [o["open"] for o in outs if "open" in o]
        results = [o["result"] for o in outs if "result" in o]
        errors = [e for o in outs for e in o["errors"]]
        total_errors += len(errors)
        all_results += results
        print(
            f"round {r}: wall {wall:.2f} s | page open p50 {percentile(opens, 0.5):.2f} s "
            f"p95 {percentile(opens, 0.95):.2f} s | own result after edit p50 "
            f"{percentile(results, 0.5):.2f} s p95 {percentile(results, 0.95):.2f} s "
            f"max {max(results, default=float('nan')):.2f} s | sessions with own number "
            f"{len(results)}/{len(outs)} | errors {len(errors)}"
        )
        print(
            f"         server CPU {cpu:.1f} s ({cpu / len(outs):.2f} s per session: page run + edit rerun) "
            f"on {os.cpu_count()} cores; the browsers on the same machine {browser_cpu:.1f} s; "
            f"machine load average {load:.1f}"
        )
        for e in errors[:10]:
            print("   ", e)
    if all_results:
        print(
            f"all rounds: result p50 {statistics.median(all_results):.2f} s, "
            f"p95 {percentile(all_results, 0.95):.2f} s, errors {total_errors}"
        )
    if server:
        for label, kib in rss:
            print(f"server RSS {label}: {kib / 1024:.0f} MiB")
        print(f"server peak RSS (VmHWM): {peak / 1024:.0f} MiB")
        if len(rss) >= 3:
            growth = (rss[-1][1] - rss[1][1]) / 1024
            per = growth / (args.sessions * (args.rounds - 1))
            print(
                f"RSS growth from round 1 to round {args.rounds}: {growth:+.0f} MiB "
                f"({per:+.1f} MiB per session)"
            )
    target = total_errors == 0 and all_results and percentile(all_results, 0.95) < args.target_p95
    print(f"target (0 errors, p95 < {args.target_p95:g} s): {'met' if target else 'NOT met'}")
    return 0 if target else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help="concurrent browser sessions (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of sessions, to see RSS growth (default 2)"
    )
    parser.add_argument("--url", help="an already running server (default: start one on loopback)")
    parser.add_argument("--target-p95", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 100 or not 1 <= args.rounds <= 10:
        parser.error("--sessions must be 1..100 and --rounds 1..10")
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("--url must be a loopback address")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
