"""A room as a user starts it (`deploy/room.py start -n 2 --detach`): two LossLens processes behind
nginx on loopback. A small burst and corpus uploads go through the proxy; every visitor checks
its own numbers against core's, computed here. Bounded: each wait has its own timeout."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.harness import free_port, http_get
from devtools.protocol import Plan, expected_numbers, visitor_text

# One room (its module fixture) for all its tests: under pytest-xdist the module runs in one worker.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("room")]

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "deploy" / "room.py"
NGINX = os.environ.get("LOSSLENS_NGINX", "/usr/sbin/nginx")
TIMEOUT = 120.0  # s per interaction: a busy 2-core machine builds the 124M model on a first visit


def _nginx() -> str:
    if os.path.exists(NGINX) or shutil.which("nginx"):
        return NGINX if os.path.exists(NGINX) else shutil.which("nginx")
    reason = "the room tests need nginx (Debian: apt-get install nginx-light)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _room(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOM), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _state(port: int, run_dir: Path, env: dict) -> dict:
    out = _room("status", "--json", "--port", str(port), "--run-dir", str(run_dir), env=env, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _run(coro):
    """asyncio.run on a thread of its own: the suite's browser tests may leave an event loop
    running on this one, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    nginx = _nginx()
    work = tmp_path_factory.mktemp("room")
    port = free_port()
    env = dict(os.environ, LOSSLENS_CACHE_DIR=str(work / "cache"), LOSSLENS_NGINX=nginx)
    env["LOSSLENS_DEVICE"] = "cpu"  # the book's numbers are exact on the CPU
    run_dir = work / "run"
    started = _room(
        "start", "-n", "2", "--port", str(port), "--first-port", str(free_port()), "--run-dir", str(run_dir),
        "--detach", env=env,
    )  # fmt: skip
    if started.returncode != 0:
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in run_dir.glob("*.log"))
        pytest.fail(f"the room did not start:\n{started.stdout}{started.stderr}\n{logs}")
    try:
        yield {"port": port, "run_dir": run_dir, "env": env, "url": f"http://127.0.0.1:{port}"}
    finally:
        stopped = _room("stop", "--port", str(port), "--run-dir", str(run_dir), env=env, timeout=90)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _target(room):
    from devtools.room_client import Target

    return Target.parse(room["url"])


def test_one_command_starts_two_healthy_processes_behind_the_proxy(room):
    state = _state(room["port"], room["run_dir"], room["env"])
    assert [p["state"] for p in state["processes"]] == ["up", "up"]
    assert all(p["healthy"] for p in state["processes"])
    assert state["proxy_healthy"] and state["affinity"]
    assert http_get(f"{room['url']}/_stcore/health").strip() == "ok"


def test_a_burst_through_the_proxy_gives_every_visitor_its_own_loss(room):
    from devtools.room_client import crowd

    plans = [Plan("text", {"text": visitor_text(700 + i)}) for i in range(6)]
    expected_numbers(plans, {i: p.edits["text"] for i, p in enumerate(plans)}, {})
    assert len({p.expected for p in plans}) == 6  # distinct texts, distinct losses
    outs = _run(crowd(_target(room), plans, ramp=3.0, timeout=TIMEOUT))
    assert [o.error for o in outs] == [None] * 6
    # Each visitor's cookie names the process that served it; round-robin used both.
    assert {o.route for o in outs} == {"p0", "p1"}


def _corpus_losses(model, text: str) -> dict[str, float]:
    from core.lessons.dataset import evaluate_dataset
    from core.models.loaders import LoaderSettings

    r = evaluate_dataset(model, text, LoaderSettings())
    return {"Training loss": round(r.train_loss, 4), "Validation loss": round(r.val_loss, 4)}


@pytest.fixture(scope="module")
def corpus() -> bytes:
    from core.models.corpus import load_verdict

    return load_verdict().encode()[:12_000]  # both splits get batches with the book's loader


def test_a_corpus_uploaded_through_the_proxy_is_computed_by_its_own_process(room, model, corpus):
    from devtools.room_client import Jar, upload_corpus

    want = _corpus_losses(model, corpus.decode())
    routes = set()
    for k in range(2):  # one visitor on each process (by its cookie: a busy machine skews round robin)
        data = corpus if k == 0 else corpus[:-2000]
        expected = want if k == 0 else _corpus_losses(model, data.decode())
        jar = Jar({"losslens_route": f"p{k}"})
        out = _run(upload_corpus(_target(room), f"corpus-{k}.txt", data, TIMEOUT, jar=jar))
        assert out.error is None and out.status in (200, 204)
        assert {k_: float(v) for k_, v in out.losses.items()} == pytest.approx(expected, abs=1.5e-4)
        routes.add(out.route_at_open)
    assert routes == {"p0", "p1"}


def test_an_upload_that_reaches_the_other_process_is_refused(room, corpus):
    """What a proxy without affinity does to one visitor in two: the websocket on one process,
    the upload on the other, which does not know the session."""
    from devtools.room_client import Jar, RoomSession, static_visit

    async def go() -> tuple[int, str, str]:
        target, jar = _target(room), Jar()
        await static_visit(target, jar, TIMEOUT)
        session = await RoomSession.open_via(target, jar, TIMEOUT)
        try:
            await session.rerun()
            await session.rerun(page="dataset", query="corpus=Upload%20a%20file")
            own = jar.route
            jar.cookies["losslens_route"] = "p1" if own == "p0" else "p0"
            return await session.upload(target, jar, "corpus_file", "corpus.txt", corpus), own, jar.route
        finally:
            await session.close()

    status, own, other = _run(go())
    assert own != other
    assert status == 400  # Streamlit: "Invalid session_id ... without sticky sessions"


def test_a_killed_process_is_restarted_and_its_visitors_are_served_again(room):
    from devtools.room_client import Jar, visit

    state = _state(room["port"], room["run_dir"], room["env"])
    victim = state["processes"][0]
    plan = Plan("text", {"text": visitor_text(900)})
    expected_numbers([plan], {0: plan.edits["text"]}, {})
    os.kill(victim["pid"], signal.SIGKILL)
    # A visitor of the killed process reloads at once: its cookie names p0, a backup answers.
    jar = Jar({"losslens_route": "p0"})
    out = _run(visit(_target(room), plan, TIMEOUT, jar=jar))
    assert out.error is None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p = _state(room["port"], room["run_dir"], room["env"])["processes"][0]
        if p["restarts"] >= 1 and p["state"] == "up" and p["healthy"]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"process 0 not back: {p}")
    assert p["pid"] != victim["pid"]
    # Back in the proxy: a visitor whose cookie names p0 is served by the new process, once nginx's
    # own record of the failed attempt (fail_timeout) has run out.
    deadline = time.monotonic() + 60
    while True:
        out = _run(visit(_target(room), plan, TIMEOUT, jar=Jar({"losslens_route": "p0"})))
        assert out.error is None
        if out.route == "p0" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert out.route == "p0"
