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
    python bench/load_protocol.py --scenarios room --room 2 --sweep 30,60 --plot docs/deploy-p95.png
    python bench/load_protocol.py --scenarios kill --room 2 --visitors 30
    python bench/load_protocol.py --scenarios upload --room 2 [--no-affinity]
    python bench/load_protocol.py --scenarios burst --url http://127.0.0.1:8500   # a running room

`room` runs each burst against one process directly and against a room of --room processes behind
deploy/'s nginx (started here, as `deploy/room.py start` does), alternately, in one run; `kill`
kills one room process mid-burst and reloads the visitors it cost. Through a proxy each visitor
keeps its cookies (devtools/room_client.py), as a browser tab does.

Loopback only; every wait is bounded (--timeout per interaction).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: core and devtools live at the root

from deploy.room import Room, RoomConfig  # noqa: E402
from devtools import room_client  # noqa: E402
from devtools.harness import (  # noqa: E402
    StreamlitServer,
    cpu_seconds,
    proc_kib,
    server_env,
    tree_cpu_seconds,
    tree_rss_kib,
)
from devtools.protocol import (  # noqa: E402
    BOOK_TEXT,
    MINIMAL_LABEL,
    Outcome,
    Plan,
    Session,
    crowd,
    expected_numbers,
    hostile_texts,
    visit,
    visitor_text,
)

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
    edit_p50: float = float("nan")
    edit_p95: float = float("nan")
    child_cpu: float = 0.0  # the server's child processes (a training run), included in server_cpu
    rest_p50: float = float("nan")  # the visitors left out by `only` (a storm's seed visitors)
    rest_p95: float = float("nan")
    note: str = ""  # e.g. how a room's proxy spread the visitors

    def line(self) -> str:
        return (
            f"{self.name:<28} N={self.n:<3} own numbers p50 {self.p50:6.2f} s  p95 {self.p95:6.2f} s | "
            f"errors {len(self.errors)} | server CPU {self.server_cpu:6.1f} s "
            f"({self.server_cpu / self.n:.2f} s/visit)"
            f" | client CPU {self.client_cpu:5.1f} s ({self.client_cpu / self.n:.3f} s/visit) "
            f"| wall {self.wall:5.1f} s"
            f" | RSS after {self.rss_mib:5.0f} MiB | load {self.load:.1f}\n"
            f"{'':<28} page open p50 {self.open_p50:.2f} s; "
            f"own result after the edit p50 {self.edit_p50:.2f} s "
            f"p95 {self.edit_p95:.2f} s" + (f"; {self.note}" if self.note else "")
        )


async def measure(name: str, server: StreamlitServer, plans, ramp, timeout, only=None) -> Figures:
    """Run the crowd; figures over all visitors, or over those whose kind is in `only`."""
    own0, cpu0 = cpu_seconds(server.pid), tree_cpu_seconds(server.pid)
    me0, t0 = client_cpu(), time.perf_counter()
    outs = await crowd(server.port, plans, ramp, timeout)
    wall = time.perf_counter() - t0
    cpu, me = tree_cpu_seconds(server.pid) - cpu0, client_cpu() - me0
    child = cpu - (cpu_seconds(server.pid) - own0)
    chosen = [o for o in outs if only is None or o.kind in only]
    own = [o.t_own for o in chosen if o.t_own is not None]
    rest = [o.t_own for o in outs if only is not None and o.kind not in only and o.t_own is not None]
    opens = [o.t_open for o in chosen if o.t_open is not None]
    edits = [o.t_own - o.t_open for o in chosen if o.t_own is not None]
    return Figures(
        name, len(plans), percentile(own, 0.5), percentile(own, 0.95),
        [f"{o.kind}: {o.error}" for o in outs if o.error], cpu, me, wall,
        tree_rss_kib(server.pid) / 1024, os.getloadavg()[0], percentile(opens, 0.5),
        percentile(edits, 0.5), percentile(edits, 0.95), child, percentile(rest, 0.5), percentile(rest, 0.95),
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
        f"  fresh visit, book example: minimal app {med['min-fresh']:.3f} s, "
        f"LossLens {med['app-fresh']:.3f} s "
        f"-> {med['app-fresh'] / med['min-fresh']:.2f}x (goal <= 1.3x)",
        f"  fresh visit + a new text:  minimal app {med['min-text']:.3f} s, LossLens {med['app-text']:.3f} s "
        f"-> {med['app-text'] / med['min-text']:.2f}x (goal <= 2x)",
        "  all runs (s): "
        + ", ".join(f"{k_}: {' '.join(f'{x:.3f}' for x in v)}" for k_, v in results.items()),
    ]
    return lines


async def burst(app, n, ramp, timeout, name="burst", start=0) -> Figures:
    plans, texts = text_plans(n, start)
    expected_numbers(plans, texts, {})
    return await measure(name, app, plans, ramp, timeout)


def storm_plans(m: int, n_seeds: int, start: int, seeded: bool) -> list[Plan]:
    """A room of m visitors, n_seeds of them spread among the others: each picks a new seed
    (`seeded`), or types a text instead (the same room without model builds, as the reference)."""
    plans, _ = text_plans(m - n_seeds, start)
    for j in range(n_seeds):  # spread over the ramp, not all at its end
        extra = Plan("extra", {"text": visitor_text(start + 500 + j)})
        other = Plan("seed", {"seed": 1000 + j}) if seeded else extra
        plans.insert(round((j + 0.5) * len(plans) / n_seeds), other)
    texts = {i: p.edits["text"] for i, p in enumerate(plans) if p.kind in {"text", "extra"}}
    seeds = {i: p.edits["seed"] for i, p in enumerate(plans) if p.kind == "seed"}
    expected_numbers(plans, texts, seeds)
    return plans


async def seed_storm(app, args, idle: Figures) -> list[str]:
    m = args.visitors
    room = storm_plans(m, args.seeds, 40_000, seeded=False)
    same = await measure("same room, texts only", app, room, args.ramp, args.timeout, only={"text"})
    plans = storm_plans(m, args.seeds, 20_000, seeded=True)
    f = await measure("seed storm (text visitors)", app, plans, args.ramp, args.timeout, only={"text"})
    s = error_note(f)
    return [
        same.line(),
        f.line(),
        f"  {m - args.seeds} text visitors and {args.seeds} seed visitors among them; "
        f"text visitors' p95 {f.p95:.2f} s vs idle {idle.p95:.2f} s "
        f"-> {f.p95 / idle.p95:.2f}x (goal <= 2x){s}; against the same room whose {args.seeds} others "
        f"type a text instead (no builds): {same.p95:.2f} s -> {f.p95 / same.p95:.2f}x",
        f"  seed visitors (builds one at a time, each told its place in the queue): own numbers "
        f"p50 {f.rest_p50:.2f} s, p95 {f.rest_p95:.2f} s",
    ]


def error_note(f: Figures) -> str:
    return "" if not f.errors else f"; errors: {f.errors[:3]}"


async def training(app, args, idle: Figures) -> list[str]:
    """One visitor presses Train on the training page and keeps polling; then a crowd arrives."""
    plans, texts = text_plans(args.visitors, 30_000)
    expected_numbers(plans, texts, {})  # before the trainer connects: this blocks the event loop
    trainer = await Session.open(app.port, args.timeout)
    try:
        await trainer.rerun()
        await trainer.rerun(page="training")
        run = await trainer.rerun({"train_start": True})
        started = "Stop" in run.labels or trainer.auto_rerun is not None
        stop_poll = asyncio.Event()

        async def poll() -> None:  # the fragment's run_every, as the frontend sends it
            while not stop_poll.is_set() and trainer.auto_rerun:
                await asyncio.sleep(trainer.auto_rerun[0])
                await trainer.rerun(fragment_id=trainer.auto_rerun[1])

        poller = asyncio.create_task(poll())
        await asyncio.sleep(3)  # the run is under way before the crowd arrives
        f = await measure("during training", app, plans, args.ramp, args.timeout)
        stop_poll.set()
        await asyncio.wait_for(poller, args.timeout)
        stopped = await stop_training(trainer, args.timeout) if "train_stop" in trainer.widgets else False
    finally:
        await trainer.close()
    return [
        f.line(),
        f"  training started: {started}, stopped by Stop: {stopped}; "
        f"text visitors' p95 {f.p95:.2f} s vs idle "
        f"{idle.p95:.2f} s -> {f.p95 / idle.p95:.2f}x (goal <= 1.5x){error_note(f)}",
        f"  the training child's CPU while the crowd came: {f.child_cpu:.1f} s of the "
        f"{f.server_cpu:.1f} s above",
    ]


async def stop_training(trainer: Session, timeout: float) -> bool:
    """Press Stop, then reload until the page says the run stopped (bounded by `timeout`)."""
    await trainer.rerun({"train_stop": True})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = await trainer.rerun()
        if any("Stopped" in a for a in run.alerts):
            return True
        await asyncio.sleep(1)
    return False


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
    return [f.line(), f"  {len(bad)} hostile visitors among them; "
                      f"{refused} refused with a clear message (the 100 KB paste)"
                      f"{error_note(f)}"]  # fmt: skip


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


# --- a room: several processes behind deploy/'s nginx ------------------------------------


def live_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += tree_cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def live_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += tree_rss_kib(pid)
        except (FileNotFoundError, ProcessLookupError, KeyError):
            pass
    return total / 1024


class RoomUnderTest:
    """A room started here (as `deploy/room.py start` does, supervised by a thread), or a URL."""

    def __init__(
        self, work: Path, n: int, env: dict, flags: tuple = (), url: str | None = None, affinity: bool = True
    ):
        self.room = None
        if url is None:
            base = room_client.free_block(n)
            config = RoomConfig(processes=n, port=base, first_port=base + 1, run_dir=work / f"room-{n}",
                                env=env, flags=flags, affinity=affinity)  # fmt: skip
            self.room = Room(config).start()
            url = self.room.url
        self.target = room_client.Target.parse(url)
        self.events: list[tuple[float, str]] = []
        self._supervisor: asyncio.Task | None = None

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.room.processes if p.proc is not None] if self.room else []

    @property
    def nginx_pid(self) -> int | None:
        return self.room.nginx.pid if self.room and self.room.nginx else None

    async def warm(self, timeout: float) -> list[Outcome]:
        """One visit to each process directly: each builds its book model before the bursts."""
        if self.room is None:
            return []
        warm = Plan("fresh")
        expected_numbers([warm], {}, {})
        return list(await asyncio.gather(*(visit(p.port, warm, timeout) for p in self.room.processes)))

    def supervise(self) -> None:
        async def loop() -> None:
            while True:
                for event in await asyncio.to_thread(self.room.check):
                    self.events.append((time.monotonic(), event))
                await asyncio.sleep(self.room.config.interval)

        if self.room is not None:
            self._supervisor = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.room is not None:
            await asyncio.to_thread(self.room.stop)


async def measure_room(name: str, room: RoomUnderTest, plans, ramp, timeout) -> Figures:
    pids = room.pids
    cpu0, me0, t0 = live_cpu(pids), client_cpu(), time.perf_counter()
    ng0 = tree_cpu_seconds(room.nginx_pid) if room.nginx_pid else 0.0  # its workers
    outs = await room_client.crowd(room.target, plans, ramp, timeout)
    wall = time.perf_counter() - t0
    cpu, me = live_cpu(pids) - cpu0, client_cpu() - me0
    ng = (tree_cpu_seconds(room.nginx_pid) - ng0) if room.nginx_pid else float("nan")
    own = [o.t_own for o in outs if o.t_own is not None]
    opens = [o.t_open for o in outs if o.t_open is not None]
    edits = [o.t_own - o.t_open for o in outs if o.t_own is not None]
    routes = {r: sum(str(o.route) == r for o in outs) for r in sorted({str(o.route) for o in outs})}
    return Figures(
        name, len(plans), percentile(own, 0.5), percentile(own, 0.95),
        [f"{o.kind} ({o.route}): {o.error}" for o in outs if o.error], cpu, me, wall,
        live_rss_mib(pids), os.getloadavg()[0], percentile(opens, 0.5),
        percentile(edits, 0.5), percentile(edits, 0.95),
        note=f"visitors per process {routes}; nginx CPU {ng:.2f} s",
    )  # fmt: skip


async def room_compare(app: StreamlitServer, room: RoomUnderTest, args) -> tuple[list[str], list, list]:
    """Each burst size against one process directly, then against the room, alternately."""
    lines, direct, behind = [], [], []
    for k, n in enumerate(args.sweep):
        ramp = 0 if n == 1 else args.ramp
        d = await burst(app, n, ramp, args.timeout, f"1 process, direct N={n}", 70_000 + 1000 * k)
        plans, texts = text_plans(n, 80_000 + 1000 * k)
        expected_numbers(plans, texts, {})
        r = await measure_room(f"{args.room} processes + nginx N={n}", room, plans, ramp, args.timeout)
        direct.append(d)
        behind.append(r)
        lines += [d.line(), r.line()]
        print("\n".join(lines[-2:]), flush=True)
    return lines, direct, behind


async def kill_one(room: RoomUnderTest, args) -> list[str]:
    """A burst through the room; half-way through the ramp one process is killed (SIGKILL).

    A visitor whose page breaks reloads at once in the same tab (its cookies kept), as a person
    would; the figures say whose pages broke, and how long until they had their numbers again."""
    import signal

    n = args.visitors
    plans, texts = text_plans(n, 90_000)
    expected_numbers(plans, texts, {})
    victim = room.room.processes[0]
    killed_at: list[float] = []
    again: dict[int, room_client.RoomOutcome] = {}
    broke_route: dict[int, str | None] = {}

    async def killer() -> None:
        await asyncio.sleep(args.ramp / 2)
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    async def arrive(i: int, plan: Plan):
        await asyncio.sleep(args.ramp * i / max(1, n - 1))
        out = await room_client.visit(room.target, plan, args.timeout)
        if out.error:
            broke_route[i] = out.route
            again[i] = await room_client.visit(room.target, plan, args.timeout, jar=out.jar)
            again[i].t_own = time.monotonic()  # when the reloaded page had its numbers
        return out

    t0 = time.monotonic()
    outs, _ = await asyncio.gather(asyncio.gather(*(arrive(i, p) for i, p in enumerate(plans))), killer())
    kill_t = killed_at[0]
    healthy = [t for t, e in room.events if "healthy again" in e and t > kill_t]
    own = [o.t_own for o in outs if o.t_own is not None]
    others = [i for i, o in enumerate(outs) if o.error and broke_route.get(i) != victim.route]
    reload_errors = [f"{i}: {a.error}" for i, a in again.items() if a.error]
    recover = [a.t_own - kill_t for a in again.values() if not a.error]
    on_victim = sum(1 for o in outs if o.route == victim.route) + sum(
        1 for i in broke_route if broke_route[i] == victim.route
    )
    return [
        f"kill one of {args.room} processes mid-burst: {n} visitors over {args.ramp:g} s, process "
        f"{victim.index} killed at {kill_t - t0:.1f} s (load {os.getloadavg()[0]:.1f})",
        f"  broken pages: {len(broke_route)} (all on the killed process: {not others}); "
        f"errors of visitors on the other process: {len(others)} {[outs[i].error for i in others][:2]}",
        f"  after a reload in the same tab: {len(recover)} of {len(again)} had their own numbers again "
        f"(errors {reload_errors[:2]}); time from the kill: max {max(recover, default=float('nan')):.1f} s, "
        f"median {statistics.median(recover) if recover else float('nan'):.1f} s",
        f"  visitors who finished without a break: {len(own)} of {n}, p50 {percentile(own, 0.5):.2f} s "
        f"p95 {percentile(own, 0.95):.2f} s; visitors routed to the killed process before or at the kill: "
        f"{on_victim}",
        f"  the killed process healthy again after "
        f"{(healthy[0] - kill_t) if healthy else float('nan'):.1f} s (restarted by the room's supervisor)",
    ]


async def uploads(room: RoomUnderTest, args) -> list[str]:
    """Visitors upload a corpus each through the proxy and press Compute: is it their own?"""
    from core.lessons.dataset import evaluate_dataset
    from core.models.corpus import load_verdict
    from core.models.loaders import LoaderSettings
    from devtools.protocol import _MODELS, BOOK_SEED

    expected_numbers([Plan("fresh")], {}, {})  # the book's model, kept in _MODELS
    verdict = load_verdict().encode()
    ok, refused, wrong = 0, [], []
    for k in range(args.uploads):
        data = verdict[: 12_000 - 500 * k]  # a corpus of its own per visitor
        r = evaluate_dataset(_MODELS[BOOK_SEED], data.decode(errors="ignore"), LoaderSettings())
        want = {room_client.TRAIN_LOSS: r.train_loss, room_client.VAL_LOSS: r.val_loss}
        out = await room_client.upload_corpus(room.target, f"corpus-{k}.txt", data, args.timeout)
        if out.error:
            refused.append(f"HTTP {out.status}: {out.error[:90]}")
        elif all(abs(float(out.losses[key]) - want[key]) <= 1.5e-4 for key in want):
            ok += 1
        else:
            wrong.append(f"{out.losses} != {want}")
    mode = (
        "with affinity (route cookie)"
        if room.room is None or room.room.config.affinity
        else "WITHOUT affinity"
    )
    return [
        f"uploads through the proxy, {mode}: {ok} of {args.uploads} computed with the visitor's own "
        f"numbers; refused {len(refused)} {refused[:2]}; wrong numbers {len(wrong)}"
    ]


def plot_room(direct: list[Figures], behind: list[Figures], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for figs, style, colour, label in (
        (direct, "o-", "#0072b2", "1 process, direct"),
        (behind, "s-", "#d55e00", f"{n} processes behind nginx"),
    ):
        ax.plot([f.n for f in figs], [f.p95 for f in figs], style, color=colour, label=f"{label}: p95")
        for f in figs:
            ax.annotate(f"{f.p95:.1f}s", (f.n, f.p95), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(5, color="grey", ls=":", lw=1, label="goal: p95 ≤ 5 s")
    ax.set_xlabel(f"visitors arriving within 10 s (each types its own text), {os.cpu_count()} cores")
    ax.set_ylabel("seconds until own numbers arrive (p95)")
    ax.set_title(f"LossLens: one process against {n} behind nginx, same run", fontsize=10)
    ax.set_xticks([f.n for f in direct])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


async def room_main(args) -> int:
    """The room scenarios: `room` (direct against the room, alternately) and `kill`."""
    work = Path(tempfile.mkdtemp(prefix="losslens-room-bench-"))
    env = server_env(work / "cache")
    env["LOSSLENS_SHARED"] = "1"  # a room serves a crowd; the direct process runs the same way
    flags = tuple(shlex.split(args.flags))
    lines = [f"LossLens room load, {os.cpu_count()} cores, load before {os.getloadavg()[0]:.1f}"]
    app = None
    room = RoomUnderTest(work, args.room, env, flags, args.url, affinity=not args.no_affinity)
    try:
        room.supervise()
        if "room" in args.scenarios:
            app = StreamlitServer(env, work, flags=flags).start()
            warm = Plan("fresh")
            expected_numbers([warm], {}, {})
            outs = [await visit(app.port, warm, args.timeout), *await room.warm(args.timeout)]
            lines.append(f"warm-up (each process builds its book model): errors {[o.error for o in outs]}")
            print("\n".join(lines), flush=True)
            more, direct, behind = await room_compare(app, room, args)
            lines += more
            if args.plot:
                plot_room(direct, behind, args.room, Path(args.plot))
            app.stop()
        if "kill" in args.scenarios:
            outs = await room.warm(args.timeout)
            lines.append(f"warm-up: errors {[o.error for o in outs]}")
            lines += await kill_one(room, args)
            print("\n".join(lines[-6:]), flush=True)
        if "upload" in args.scenarios:
            lines += await uploads(room, args)
            print(lines[-1], flush=True)
        if "burst" in args.scenarios and args.url:
            plans, texts = text_plans(args.visitors, 95_000)
            expected_numbers(plans, texts, {})
            f = await measure_room(f"burst through {args.url}", room, plans, args.ramp, args.timeout)
            lines.append(f.line())
            print(lines[-1], flush=True)
        for _t, event in room.events:
            print(f"  supervisor: {event}")
    finally:
        if app is not None:
            app.stop()
        await room.stop()
    return 0


async def main_async(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="losslens-protocol-"))
    flags = tuple(shlex.split(args.flags))
    app = StreamlitServer(server_env(work / "cache"), work, flags=flags).start()
    (work / "minimal").mkdir()
    minimal = StreamlitServer(
        server_env(work / "cache"), work / "minimal", script="bench/minimal_app.py", flags=flags
    )
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
                f = await burst(
                    app, n, 0 if n == 1 else args.ramp, args.timeout, f"sweep N={n}", 10_000 + 100 * n
                )
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
            print("\n".join(lines[-4:]), flush=True)
        if "training" in todo:
            lines += await training(app, args, idle)
            print("\n".join(lines[-2:]), flush=True)
        lines.append(
            f"server RSS now {tree_rss_kib(app.pid) / 1024:.0f} MiB, "
            f"peak (VmHWM) {proc_kib(app.pid, 'VmHWM') / 1024:.0f} MiB"
        )
        print(lines[-1])
    finally:
        minimal.stop()
        app.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=lambda s: s.split(","),
                        default=["reference", "burst", "hostile", "seeds", "training"],
                        help="comma-separated: reference,burst,sweep,hostile,seeds,training; "
                             "with --room or --url: room,kill,upload,burst")  # fmt: skip
    parser.add_argument("--visitors", type=int, default=30, help="visitors per burst (default 30)")
    parser.add_argument(
        "--ramp", type=float, default=10.0, help="seconds over which a burst arrives (default 10)"
    )
    parser.add_argument(
        "--bursts", type=int, default=3, help="bursts in a row, to see RSS growth (default 3)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="seed visitors in the seed storm (default 10)")
    parser.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 30, 60])
    parser.add_argument("--plot", help="write the sweep's p50/p95 plot to this PNG")
    parser.add_argument("--reference-visits", type=int, default=5, help="visits per reference figure")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of the reference")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per interaction (default 180)")
    parser.add_argument("--flags", default="", help='extra server flags, e.g. "--runner.postScriptGC true"')
    parser.add_argument(
        "--room", type=int, default=0, help="processes of a room behind nginx, for the room/kill scenarios"
    )
    parser.add_argument("--url", help="visit this running server or room instead of starting one")
    parser.add_argument("--uploads", type=int, default=4, help="corpus uploads in the upload scenario")
    parser.add_argument("--no-affinity", action="store_true", help="the room spreads requests round-robin")
    args = parser.parse_args()
    if (
        not 1 <= args.visitors <= 100
        or any(not 1 <= n <= 100 for n in args.sweep)
        or not 0 <= args.ramp <= 60
    ):
        parser.error("--visitors and --sweep values must be 1..100, --ramp 0..60 s")
    if not 1 <= args.bursts <= 5 or not 1 <= args.seeds <= min(20, args.visitors - 1):
        parser.error("--bursts must be 1..5 and --seeds 1..20, fewer than --visitors")
    if args.room or args.url:
        if not args.url and not 1 <= args.room <= 16:
            parser.error("--room must be 1..16")
        return asyncio.run(room_main(args))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
