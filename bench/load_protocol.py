"""A room of visitors at protocol level: N simulated visitors against one LossLens server.

Each visitor makes the static requests of a first visit (index.html, the JS/CSS/font files it
names, /_stcore/health and /_stcore/host-config), opens Streamlit's websocket /_stcore/stream
and speaks its protocol with Streamlit's own protobuf messages: a BackMsg `rerun_script`
(query string, widget states, page hash) per interaction, ForwardMsgs back until
`script_finished`. A visitor then types its own text (or picks its own seed) as a widget
state, and checks that the loss the server shows is the one core computed for that text in
this process beforehand: a wrong number, an exception box or a missing number is an error.

The clients are a few coroutines in one process, so their CPU (reported) is small beside the
server's: the figures measure the server, not the browsers. The same run measures a minimal
Streamlit app (bench/minimal_app.py: a title, 4 metrics, a text area) as the floor.

    python bench/load_protocol.py                        # every scenario, N = 30
    python bench/load_protocol.py --scenarios burst --visitors 10
    python bench/load_protocol.py --sweep 1,10,30,60 --plot docs/load-protocol.png
    python bench/load_protocol.py --flags "--runner.postScriptGC true"   # e.g. Streamlit's default GC

Loopback only; every wait is bounded (--timeout per interaction).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: core and devtools live at the root

import websockets  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from streamlit.proto.NumberInput_pb2 import NumberInput  # noqa: E402
from streamlit.proto.WidgetStates_pb2 import WidgetState  # noqa: E402

from devtools.harness import (  # noqa: E402
    HOSTILE_LINES,
    LOSS_LABEL,
    StreamlitServer,
    cpu_seconds,
    proc_kib,
    server_env,
    tree_cpu_seconds,
    tree_rss_kib,
)

HOST = "127.0.0.1"
BOOK_TEXT = "every effort moves you\nI really like chocolate"
BOOK_SEED = 123
MINIMAL_LABEL = "Characters"  # bench/minimal_app.py's first metric: len(text)
ASSET = re.compile(r'(?:src|href)="\./((?:static/|favicon)[^"]+)"')
DONE = {
    ForwardMsg.FINISHED_SUCCESSFULLY,
    ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
    ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
}
SUBJECTS = ["The old painter", "A quiet river", "My neighbour", "The tired engineer", "Every student",
            "The small cat", "Our teacher", "The night train", "A bright comet", "The baker"]  # fmt: skip
VERBS = ["paints", "carries", "counts", "forgets", "reads", "watches", "builds", "finds", "hears", "sells"]
OBJECTS = ["the morning light", "seven stones", "a long letter", "the blue door", "every cloud",
           "warm bread", "the last map", "an open window", "the silver key", "two red apples"]  # fmt: skip


def visitor_text(i: int) -> str:
    """A distinct sentence for visitor i (distinct texts give distinct losses)."""
    n = len(SUBJECTS)
    return f"{SUBJECTS[i % n]} {VERBS[(i // n + i) % n]} {OBJECTS[(i * 3 + i // n) % n]} ({i})."


def hostile_texts() -> list[str]:
    """The hostile pastes: 100 KB of text, each hostile line alone, and all of them at once."""
    big = ("Paste " + "every effort moves you, " * 5000)[:100_000]
    return [big, *HOSTILE_LINES, "\n".join(HOSTILE_LINES)]


# --- what a visitor does and expects ---------------------------------------------------


@dataclass
class Plan:
    """One visitor: open the page, then set widgets (by key) and expect a metric or an error."""

    kind: str  # fresh | text | seed | hostile | minimal-fresh | minimal-text
    edits: dict = field(default_factory=dict)  # widget key -> value
    label: str = LOSS_LABEL
    expected: float | None = None  # the metric's value; None: a clear error message instead
    open_expected: float | None = None  # the metric right after opening (the book example)


@dataclass
class Outcome:
    kind: str
    t_open: float | None = None  # s from arrival until the first page's numbers
    t_own: float | None = None  # s from arrival until this visitor's own numbers
    error: str | None = None


_MODELS: dict = {}
_LOSSES: dict = {}


def expected_numbers(plans: list[Plan], texts: dict[int, str], seeds: dict[int, int]) -> None:
    """Fill in each plan's expectation with core, in this process, before any visitor starts."""
    from components.sidebar import split_texts
    from core.errors import LossLensError
    from core.loss import compute_loss
    from core.model import build_untrained_model

    def loss(text: str, seed: int) -> float | None:
        if (text, seed) not in _LOSSES:
            if seed not in _MODELS:
                _MODELS.clear()  # one 124M model at a time (~650 MB each)
                _MODELS[seed] = build_untrained_model(seed)
            try:
                _LOSSES[text, seed] = float(compute_loss(_MODELS[seed], list(split_texts(text))).loss)
            except LossLensError:
                _LOSSES[text, seed] = None
        return _LOSSES[text, seed]

    book = loss(BOOK_TEXT, BOOK_SEED)
    for i, plan in enumerate(plans):
        if plan.kind.startswith("minimal"):
            text = plan.edits.get("text", BOOK_TEXT)
            plan.expected, plan.open_expected = float(len(text)), float(len(BOOK_TEXT))
        else:
            plan.open_expected = book
            if plan.kind == "fresh":
                plan.expected = book
    for i, plan in sorted(((i, p) for i, p in enumerate(plans) if p.kind in {"text", "hostile"})):
        plan.expected = loss(texts[i], BOOK_SEED)
    for i, plan in sorted(((i, p) for i, p in enumerate(plans) if p.kind == "seed"), key=lambda x: seeds[x[0]]):
        plan.expected = loss(BOOK_TEXT, seeds[i])


# --- the protocol ----------------------------------------------------------------------


@dataclass
class Run:
    """What one script run sent back."""

    metrics: dict = field(default_factory=dict)  # label -> shown value
    errors: list = field(default_factory=list)  # alert bodies with format ERROR
    alerts: list = field(default_factory=list)  # every alert body
    exceptions: int = 0
    labels: list = field(default_factory=list)  # button labels


async def http_get(port: int, path: str, timeout: float) -> int:
    """GET over a fresh connection as a browser would (gzip accepted); returns the body size."""

    async def go() -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            f"GET /{path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept-Encoding: gzip\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()  # to EOF: the server closes after the response
        writer.close()
        status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"?"
        if status != b"200":
            raise RuntimeError(f"GET /{path}: HTTP {status.decode(errors='replace')}")
        return len(data)

    return await asyncio.wait_for(go(), timeout)


async def static_visit(port: int, timeout: float) -> None:
    """index.html, then what it names and the two probes, six connections at a time."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    page = (await asyncio.wait_for(reader.read(), timeout)).decode(errors="replace")
    writer.close()
    if not page.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"GET /: {page[:40]!r}")
    paths = sorted(set(ASSET.findall(page))) + ["_stcore/health", "_stcore/host-config"]
    gate = asyncio.Semaphore(6)  # a browser's connections per host

    async def one(path: str) -> None:
        async with gate:
            await http_get(port, path, timeout)

    await asyncio.gather(*(one(p) for p in paths))


class Session:
    """One browser tab's websocket: rerun requests out, ForwardMsgs in."""

    def __init__(self, ws, timeout: float):
        self.ws = ws
        self.timeout = timeout
        self.widgets: dict[str, tuple[str, str, object]] = {}  # key -> (id, element type, proto)
        self.pages: dict[str, str] = {}  # url path -> page_script_hash
        self.page_hash = ""
        self.auto_rerun: tuple[float, str] | None = None  # (interval, fragment_id)

    @classmethod
    async def open(cls, port: int, timeout: float) -> Session:
        ws = await websockets.connect(
            f"ws://{HOST}:{port}/_stcore/stream",
            subprotocols=["streamlit"],
            max_size=None,
            compression=None,
            open_timeout=timeout,
            ping_interval=None,
        )
        return cls(ws, timeout)

    async def close(self) -> None:
        await self.ws.close()

    def state(self, key: str, value) -> WidgetState:
        """The widget state a browser sends when the widget keyed `key` takes `value`."""
        if key not in self.widgets:
            raise RuntimeError(f"no widget keyed {key!r} on the page (have {sorted(self.widgets)})")
        wid, kind, proto = self.widgets[key]
        s = WidgetState(id=wid)
        if kind == "button":
            s.trigger_value = bool(value)
        elif kind == "number_input":
            if proto.data_type == NumberInput.INT:
                s.int_value = int(value)
            else:
                s.double_value = float(value)
        else:
            s.string_value = str(value)
        return s

    async def rerun(
        self, edits: dict | None = None, query: str = "", page: str | None = None, fragment_id: str = ""
    ) -> Run:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = query
        cs.page_script_hash = self.pages.get(page, "") if page is not None else self.page_hash
        if fragment_id:
            cs.fragment_id = fragment_id
            cs.is_auto_rerun = True
        for key, value in (edits or {}).items():
            cs.widget_states.widgets.append(self.state(key, value))
        await self.ws.send(msg.SerializeToString())
        return await asyncio.wait_for(self._until_finished(), self.timeout)

    async def _until_finished(self) -> Run:
        run = Run()
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(await self.ws.recv())
            kind = fm.WhichOneof("type")
            if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                self._element(fm.delta.new_element, run)
            elif kind == "new_session":
                self.page_hash = fm.new_session.page_script_hash or self.page_hash
            elif kind == "navigation":
                self.page_hash = fm.navigation.page_script_hash or self.page_hash
                self.pages = {p.url_pathname: p.page_script_hash for p in fm.navigation.app_pages}
            elif kind == "page_info_changed" or kind == "session_status_changed":
                pass
            elif kind == "auto_rerun":
                self.auto_rerun = (fm.auto_rerun.interval, fm.auto_rerun.fragment_id)
            elif kind == "script_finished" and fm.script_finished in DONE:
                return run

    def _element(self, el, run: Run) -> None:
        kind = el.WhichOneof("type")
        if kind == "metric":
            run.metrics[el.metric.label] = el.metric.body
        elif kind == "alert":
            run.alerts.append(el.alert.body)
            if el.alert.format == el.alert.ERROR:
                run.errors.append(el.alert.body)
        elif kind == "exception":
            run.exceptions += 1
        elif kind in {"text_area", "text_input", "number_input", "button", "selectbox", "radio"}:
            proto = getattr(el, kind)
            key = proto.id.rsplit("-", 1)[-1]  # "$$ID-<hash>-<user key>"
            self.widgets[key] = (proto.id, kind, proto)
            if kind == "button":
                run.labels.append(proto.label)


def number(shown: str) -> float:
    return float(shown.replace(",", "").split()[0])


def check(run: Run, plan: Plan, expected: float | None, label: str) -> str | None:
    """None if the run shows `expected` under `label` (or a clear error where None is expected)."""
    if run.exceptions:
        return f"{run.exceptions} exception box(es)"
    if expected is None:
        return None if run.errors else f"no error message (metrics {run.metrics})"
    if run.errors:
        return f"error message: {run.errors[0][:120]}"
    if label not in run.metrics:
        return f"no {label!r} metric (got {sorted(run.metrics)})"
    shown = number(run.metrics[label])
    return None if abs(shown - expected) <= 1.5e-4 else f"{label} {shown} != own {expected:.4f}"


async def visit(port: int, plan: Plan, timeout: float) -> Outcome:
    out = Outcome(plan.kind)
    t0 = time.perf_counter()
    session = None
    try:
        await static_visit(port, timeout)
        session = await Session.open(port, timeout)
        run = await session.rerun()
        out.error = check(run, plan, plan.open_expected, plan.label)
        out.t_open = time.perf_counter() - t0
        if out.error is None and plan.edits:
            run = await session.rerun(plan.edits)
            out.error = check(run, plan, plan.expected, plan.label)
        if out.error is None:
            out.t_own = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - every failure of a visitor is counted and reported
        out.error = f"{type(e).__name__}: {str(e)[:160]}"
    finally:
        if session is not None:
            await session.close()
    return out


async def crowd(port: int, plans: list[Plan], ramp: float, timeout: float) -> list[Outcome]:
    """All visitors, arriving evenly over `ramp` seconds."""

    async def arrive(i: int, plan: Plan) -> Outcome:
        await asyncio.sleep(ramp * i / max(1, len(plans) - 1) if len(plans) > 1 else 0)
        return await visit(port, plan, timeout)

    return await asyncio.gather(*(arrive(i, p) for i, p in enumerate(plans)))


# --- measuring -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Figures:
    name: str
    n: int
    p50: float
    p95: float
    errors: list
    server_cpu: float
    client_cpu: float
    wall: float
    rss_mib: float
    load: float
    open_p50: float = float("nan")

    def line(self) -> str:
        return (
            f"{self.name:<28} N={self.n:<3} own numbers p50 {self.p50:6.2f} s  p95 {self.p95:6.2f} s | "
            f"errors {len(self.errors)} | server CPU {self.server_cpu:6.1f} s ({self.server_cpu / self.n:.2f} s/visit)"
            f" | client CPU {self.client_cpu:5.1f} s ({self.client_cpu / self.n:.3f} s/visit) | wall {self.wall:5.1f} s"
            f" | RSS after {self.rss_mib:5.0f} MiB | load {self.load:.1f}"
        )


async def measure(name: str, server: StreamlitServer, plans, ramp, timeout, only=None) -> Figures:
    """Run the crowd; figures over all visitors, or over those whose kind is in `only`."""
    cpu0, me0, t0 = tree_cpu_seconds(server.pid), client_cpu(), time.perf_counter()
    outs = await crowd(server.port, plans, ramp, timeout)
    wall = time.perf_counter() - t0
    cpu, me = tree_cpu_seconds(server.pid) - cpu0, client_cpu() - me0
    chosen = [o for o in outs if only is None or o.kind in only]
    own = [o.t_own for o in chosen if o.t_own is not None]
    opens = [o.t_open for o in chosen if o.t_open is not None]
    return Figures(
        name, len(plans), percentile(own, 0.5), percentile(own, 0.95),
        [f"{o.kind}: {o.error}" for o in outs if o.error], cpu, me, wall,
        tree_rss_kib(server.pid) / 1024, os.getloadavg()[0], percentile(opens, 0.5),
    )  # fmt: skip


def text_plans(n: int, start: int = 0) -> tuple[list[Plan], dict[int, str]]:
    texts = {i: visitor_text(start + i) for i in range(n)}
    return [Plan("text", {"text": texts[i]}) for i in range(n)], texts


async def per_visit_cpu(server: StreamlitServer, plan: Plan, visits: int, timeout: float) -> float:
    """Server CPU seconds per visit, visitors one after the other (no queueing in the figure)."""
    cpu0 = cpu_seconds(server.pid)
    for _ in range(visits):
        out = await visit(server.port, plan, timeout)
        if out.error:
            raise RuntimeError(f"reference visit failed: {out.error}")
    return (cpu_seconds(server.pid) - cpu0) / visits


# --- scenarios -------------------------------------------------------------------------


async def reference(app: StreamlitServer, minimal: StreamlitServer, args) -> list[str]:
    """CPU per visit, LossLens against the minimal app, alternately; medians of --repeats."""
    k = args.reference_visits
    fresh_plan, min_plan = Plan("fresh"), Plan("minimal-fresh", label=MINIMAL_LABEL)
    expected_numbers([fresh_plan, min_plan], {}, {})
    results = {key: [] for key in ("min-fresh", "app-fresh", "min-text", "app-text")}
    counter = 0
    for _ in range(args.repeats):
        results["min-fresh"].append(await per_visit_cpu(minimal, min_plan, k, args.timeout))
        results["app-fresh"].append(await per_visit_cpu(app, fresh_plan, k, args.timeout))
        # A new text per visit: each visitor types a sentence nobody typed before (no cache hit).
        cpu_min = cpu_app = 0.0
        for _ in range(k):
            counter += 1
            text = visitor_text(50_000 + counter)
            mplan = Plan("minimal-text", {"text": text}, label=MINIMAL_LABEL)
            aplan = Plan("text", {"text": text})
            expected_numbers([mplan, aplan], {1: text}, {})
            cpu_min += await per_visit_cpu(minimal, mplan, 1, args.timeout)
            cpu_app += await per_visit_cpu(app, aplan, 1, args.timeout)
        results["min-text"].append(cpu_min / k)
        results["app-text"].append(cpu_app / k)
    med = {key: statistics.median(v) for key, v in results.items()}
    lines = [
        f"reference, server CPU per visit (median of {args.repeats} x {k} visits one after another; "
        f"load {os.getloadavg()[0]:.1f}):",
        f"  fresh visit, book example: minimal app {med['min-fresh']:.3f} s, LossLens {med['app-fresh']:.3f} s "
        f"-> {med['app-fresh'] / med['min-fresh']:.2f}x (goal <= 1.3x)",
        f"  fresh visit + a new text:  minimal app {med['min-text']:.3f} s, LossLens {med['app-text']:.3f} s "
        f"-> {med['app-text'] / med['min-text']:.2f}x (goal <= 2x)",
        "  all runs (s): " + ", ".join(f"{k_}: {' '.join(f'{x:.3f}' for x in v)}" for k_, v in results.items()),
    ]
    return lines


async def burst(app, n, ramp, timeout, name="burst", start=0) -> Figures:
    plans, texts = text_plans(n, start)
    expected_numbers(plans, texts, {})
    return await measure(name, app, plans, ramp, timeout)


async def seed_storm(app, args, idle: Figures) -> list[str]:
    m = args.visitors
    plans, texts = text_plans(m, 20_000)
    seeds = {}
    for j in range(args.seeds):
        seeds[m + j] = 1000 + j
        plans.append(Plan("seed", {"seed": 1000 + j}))
    expected_numbers(plans, texts, seeds)
    f = await measure("seed storm (text visitors)", app, plans, args.ramp, args.timeout, only={"text"})
    s = await_figures_for(f)
    return [
        f.line(),
        f"  with {args.seeds} seed visitors among them; text visitors' p95 {f.p95:.2f} s vs idle {idle.p95:.2f} s "
        f"-> {f.p95 / idle.p95:.2f}x (goal <= 2x){s}",
    ]


def await_figures_for(f: Figures) -> str:
    return "" if not f.errors else f"; errors: {f.errors[:3]}"


async def training(app, args, idle: Figures) -> list[str]:
    """One visitor presses Train on the training page and keeps polling; then a crowd arrives."""
    trainer = await Session.open(app.port, args.timeout)
    lines = []
    try:
        await trainer.rerun()
        run = await trainer.rerun(page="training")
        run = await trainer.rerun({"train_start": True})
        started = any("Stop" in b for b in run.labels) or trainer.auto_rerun is not None
        stop_poll = asyncio.Event()

        async def poll() -> None:  # the fragment's run_every, as the frontend sends it
            while not stop_poll.is_set() and trainer.auto_rerun:
                await asyncio.sleep(trainer.auto_rerun[0])
                await trainer.rerun(fragment_id=trainer.auto_rerun[1])

        poller = asyncio.create_task(poll())
        await asyncio.sleep(3)  # the run is under way before the crowd arrives
        f = await measure_training(app, args)
        stop_poll.set()
        await asyncio.wait_for(poller, args.timeout)
        final = await trainer.rerun({"train_stop": True}) if "train_stop" in trainer.widgets else None
        stopped = final is not None and any("Stopped" in a for a in final.alerts)
        lines += [
            f.line(),
            f"  training started: {started}, stopped by Stop: {stopped}; text visitors' p95 {f.p95:.2f} s vs idle "
            f"{idle.p95:.2f} s -> {f.p95 / idle.p95:.2f}x (goal <= 1.5x){await_figures_for(f)}",
        ]
    finally:
        await trainer.close()
    return lines


async def measure_training(app, args) -> Figures:
    plans, texts = text_plans(args.visitors, 30_000)
    expected_numbers(plans, texts, {})
    return await measure("during training", app, plans, args.ramp, args.timeout)


async def hostile(app, args) -> list[str]:
    bad = hostile_texts()
    m = args.visitors
    plans, texts = text_plans(m, 40_000)
    for j, t in enumerate(bad):
        texts[m + j] = t
        plans.append(Plan("hostile", {"text": t}))
    plans = plans[::2] + plans[1::2]  # hostile ones mixed in, not all at the end
    texts = {}
    for i, p in enumerate(plans):
        texts[i] = p.edits["text"]
    expected_numbers(plans, texts, {})
    f = await measure("hostile + normal", app, plans, args.ramp, args.timeout)
    refused = sum(p.expected is None for p in plans)
    return [f.line(), f"  {len(bad)} hostile visitors ({refused} get a clear refusal, e.g. the 100 KB paste)"
            f"{await_figures_for(f)}"]  # fmt: skip


def plot(sweep: list[Figures], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [f.n for f in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(ns, [f.p50 for f in sweep], "o-", color="#0072b2", label="p50")
    ax.plot(ns, [f.p95 for f in sweep], "s-", color="#d55e00", label="p95")
    ax.axhline(5, color="grey", ls=":", lw=1, label="goal: p95 ≤ 5 s")
    for f in sweep:
        ax.annotate(f"{f.p95:.1f}s", (f.n, f.p95), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("visitors arriving within the ramp (each types its own text)")
    ax.set_ylabel("seconds until own numbers arrive")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(ns)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


async def main_async(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="losslens-protocol-"))
    flags = tuple(shlex.split(args.flags))
    app = StreamlitServer(server_env(work / "cache"), work, flags=flags).start()
    (work / "minimal").mkdir()
    minimal = StreamlitServer(server_env(work / "cache"), work / "minimal", script="bench/minimal_app.py", flags=flags)
    minimal.start()
    lines = [
        f"LossLens protocol load, {os.cpu_count()} cores, server flags {flags or '(config.toml only)'}; "
        f"load before {os.getloadavg()[0]:.1f}"
    ]
    try:
        warm = Plan("fresh")
        expected_numbers([warm], {}, {})
        out = await visit(app.port, warm, args.timeout)  # builds the seed-123 model once
        await visit(minimal.port, Plan("minimal-fresh", label=MINIMAL_LABEL, open_expected=len(BOOK_TEXT)),
                    args.timeout)  # fmt: skip
        lines.append(f"warm-up visit: {out.t_open or float('nan'):.2f} s, error {out.error}")
        lines.append(f"server RSS after warm-up: {tree_rss_kib(app.pid) / 1024:.0f} MiB")
        print("\n".join(lines), flush=True)
        todo = args.scenarios
        if "reference" in todo:
            lines += await reference(app, minimal, args)
            print("\n".join(lines[-4:]), flush=True)
        minimal.stop()
        idle = None
        if "burst" in todo or "seeds" in todo or "training" in todo:
            for r in range(args.bursts):
                idle = await burst(app, args.visitors, args.ramp, args.timeout, f"burst {r + 1}", 1000 * r)
                lines.append(idle.line())
                print(lines[-1], flush=True)
        if "sweep" in todo:
            sweep = []
            for n in args.sweep:
                f = await burst(app, n, 0 if n == 1 else args.ramp, args.timeout, f"sweep N={n}", 10_000 + 100 * n)
                sweep.append(f)
                lines.append(f.line())
                print(lines[-1], flush=True)
            if args.plot:
                plot(sweep, Path(args.plot), f"LossLens, protocol visitors over {args.ramp:g} s, "
                     f"{os.cpu_count()} cores (load {os.getloadavg()[0]:.1f})")  # fmt: skip
        if "hostile" in todo:
            lines += await hostile(app, args)
            print("\n".join(lines[-2:]), flush=True)
        if "seeds" in todo:
            lines += await seed_storm(app, args, idle)
            print("\n".join(lines[-2:]), flush=True)
        if "training" in todo:
            lines += await training(app, args, idle)
            print("\n".join(lines[-2:]), flush=True)
        lines.append(f"server RSS now {tree_rss_kib(app.pid) / 1024:.0f} MiB, peak (VmHWM) {proc_kib(app.pid, 'VmHWM') / 1024:.0f} MiB")
        print(lines[-1])
    finally:
        minimal.stop()
        app.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=lambda s: s.split(","),
                        default=["reference", "burst", "hostile", "seeds", "training"],
                        help="comma-separated: reference,burst,sweep,hostile,seeds,training")  # fmt: skip
    parser.add_argument("--visitors", type=int, default=30, help="visitors per burst (default 30)")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which a burst arrives (default 10)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts in a row, to see RSS growth (default 3)")
    parser.add_argument("--seeds", type=int, default=10, help="seed visitors in the seed storm (default 10)")
    parser.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 30, 60])
    parser.add_argument("--plot", help="write the sweep's p50/p95 plot to this PNG")
    parser.add_argument("--reference-visits", type=int, default=5, help="visits per reference figure")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of the reference")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per interaction (default 180)")
    parser.add_argument("--flags", default="", help="extra server flags, e.g. \"--runner.postScriptGC true\"")
    args = parser.parse_args()
    if not 1 <= args.visitors <= 100 or any(not 1 <= n <= 100 for n in args.sweep) or not 0 <= args.ramp <= 60:
        parser.error("--visitors and --sweep values must be 1..100, --ramp 0..60 s")
    if not 1 <= args.bursts <= 5 or not 1 <= args.seeds <= 20:
        parser.error("--bursts must be 1..5 and --seeds 1..20")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
