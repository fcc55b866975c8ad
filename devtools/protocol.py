"""A simulated visitor that speaks Streamlit's own protocol, for bench/ and tests/e2e.

A visit makes the static requests of a first visit (index.html, the JS/CSS/font files it names,
/_stcore/health and /_stcore/host-config), opens the websocket /_stcore/stream, and sends a
BackMsg `rerun_script` (query string, widget states, page hash) per interaction, reading
ForwardMsgs until `script_finished`, as the browser's frontend does. Each visitor then checks
that the numbers it is shown are its own: the loss core computed for its text in this process.

Simplifications, on purpose: no cached-message hashes are sent (so the server sends every
message in full), each request uses a fresh connection, and the JS chunks a browser loads later
for a given element (e.g. the Plotly bundle of a chart page) are not fetched.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.NumberInput_pb2 import NumberInput
from streamlit.proto.WidgetStates_pb2 import WidgetState

from devtools.harness import HOSTILE_LINES, LOSS_LABEL

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

    kind: str  # fresh | text | extra (a text visitor left out of the figures) | seed | hostile | minimal-*
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
    from core import build_untrained_model
    from core.errors import LossLensError
    from core.lessons.loss import compute_loss
    from ui.sidebar import split_texts

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
    for plan in plans:
        if plan.kind.startswith("minimal"):
            text = plan.edits.get("text", BOOK_TEXT)
            plan.expected, plan.open_expected = float(len(text)), float(len(BOOK_TEXT))
        else:
            plan.open_expected = book
            if plan.kind == "fresh":
                plan.expected = book
    for i, plan in sorted(((i, p) for i, p in enumerate(plans) if p.kind in {"text", "extra", "hostile"})):
        plan.expected = loss(texts[i], BOOK_SEED)
    for i, plan in sorted(
        ((i, p) for i, p in enumerate(plans) if p.kind == "seed"), key=lambda x: seeds[x[0]]
    ):
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
        self.run_on_save: bool | None = None  # the server's server.runOnSave, from its first message

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
                if fm.new_session.HasField("initialize"):
                    self.run_on_save = fm.new_session.initialize.session_status.run_on_save
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
    except Exception as e:
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
