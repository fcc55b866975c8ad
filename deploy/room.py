"""A LossLens room: N Streamlit processes on loopback ports and nginx in front of them on one port.

    python deploy/room.py start                      # one process per core, proxy on :8500 (foreground)
    python deploy/room.py start -n 2 --port 8500 --detach
    python deploy/room.py status
    python deploy/room.py stop

`start` stays in the foreground and supervises (Ctrl-C or `stop` ends the room cleanly); with
--detach it returns once every process answers Streamlit's health check. The supervisor polls each
process's `/_stcore/health`: a process that exits, or stops answering for --hung seconds, is taken
out of nginx's upstreams (`down`, then a graceful reload), started again on its port and put back
once healthy. nginx itself is restarted if it exits. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
NGINX = os.environ.get("LOSSLENS_NGINX", "/usr/sbin/nginx")
START_TIMEOUT = 180.0  # s: import torch + streamlit on a busy 2-core machine
STATE_FILE = "room.json"


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if `url` answers 200 "ok" (Streamlit's health endpoint). No proxy: loopback or LAN."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return False


@dataclass
class Process:
    """One Streamlit server of the room, on its own port; `proc` is None for another machine's."""

    index: int
    host: str
    port: int
    local: bool = True
    proc: subprocess.Popen | None = None
    state: str = "starting"  # starting | up | down
    since: float = field(default_factory=time.monotonic)  # when `state` began
    failing_since: float | None = None  # first failed health check of a run of failures
    restarts: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def route(self) -> str:
        return f"p{self.index}"

    def health(self, timeout: float = 2.0) -> bool:
        return http_ok(f"http://{self.address}/_stcore/health", timeout)


@dataclass
class RoomConfig:
    processes: int = max(1, os.cpu_count() or 1)
    port: int = 8500
    first_port: int = 8501
    listen: str = "127.0.0.1"  # the proxy's address; 0.0.0.0 for a room on a network
    address: str = "127.0.0.1"  # the processes' address; a LAN address when another machine proxies
    run_dir: Path | None = None
    shared: bool = True  # LOSSLENS_SHARED=1: each visitor's models and runs are their own
    shared_weights: bool = True  # LOSSLENS_SHARED_WEIGHTS=1: the book's model mapped from one file
    affinity: bool = True  # False only to show what breaks without it (docs/deploy.md)
    proxy: bool = True  # False on a machine whose processes another machine's nginx serves
    remote: tuple[str, ...] = ()  # host:port of processes on other machines, behind this proxy
    hung: float = 30.0  # s without a health answer before a live process is restarted
    interval: float = 1.0
    max_body: str = "21m"  # Streamlit's server.maxUploadSize (20 MB) plus the multipart frame
    flags: tuple[str, ...] = ()  # extra `streamlit run` flags
    env: dict | None = None  # the processes' environment (default: this one's)

    def __post_init__(self) -> None:
        if self.run_dir is None:
            self.run_dir = Path(tempfile.gettempdir()) / f"losslens-room-{self.port}"
        self.run_dir = Path(self.run_dir)


def default_run_dir(port: int) -> Path:
    return RoomConfig(port=port).run_dir


class Room:
    def __init__(self, config: RoomConfig):
        self.config = c = config
        self.processes = [Process(i, c.address, c.first_port + i) for i in range(c.processes)]
        for j, hostport in enumerate(c.remote):
            host, port = hostport.rsplit(":", 1)
            self.processes.append(Process(c.processes + j, host, int(port), local=False))
        self.nginx: subprocess.Popen | None = None
        self.nginx_restarts = 0
        self._stopping = False
        self.work_dir = (
            c.run_dir
        )  # nginx's temp files and static cache (elsewhere if root's workers cannot reach it)

    # --- nginx ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.listen in {"0.0.0.0", "127.0.0.1"} else self.config.listen
        return f"http://{host}:{self.config.port}"

    def nginx_config(self) -> str:
        c, run = self.config, self.config.run_dir
        procs = self.processes

        def server(p: Process, backup: bool = False) -> str:
            # A process in a restart is `down` everywhere: its visitors go to a backup at once.
            flags = " backup" if backup else " max_fails=1 fail_timeout=5s"
            return f"        server {p.address}{flags}{'' if p.state == 'up' else ' down'};"

        routes = []
        for p in procs:
            lines = [f"    upstream losslens_{p.route} {{", server(p)]
            lines += [server(o, backup=True) for o in procs if o is not p]
            routes.append("\n".join(lines + ["    }"]))
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        fill = {
            "@@USER@@": user,
            "@@WORKERS@@": "1" if len(procs) <= 2 else "auto",
            "@@RUN@@": str(run),
            "@@WORK@@": str(self.work_dir),
            "@@MAX_BODY@@": c.max_body,
            "@@LISTEN@@": f"{c.listen}:{c.port}",
            "@@ANY_SERVERS@@": "\n".join(server(p) for p in procs),
            "@@ROUTE_UPSTREAMS@@": "\n".join(routes),
            "@@ROUTE_MAP@@": "\n".join(f"        {p.route} losslens_{p.route};" for p in procs),
            "@@SERVED_MAP@@": "\n".join(
                f'        "~(^|, ){p.host.replace(".", chr(92) + ".")}:{p.port}$" {p.route};' for p in procs
            ),
            "@@ROUTE_TARGET@@": "$losslens_upstream" if c.affinity else "losslens_any",
        }
        text = TEMPLATE.read_text()
        for key, value in fill.items():
            text = text.replace(key, value)
        if not c.affinity:  # no cookie either: requests spread round-robin
            text = "\n".join(line for line in text.splitlines() if 'Set-Cookie "losslens_route' not in line)
        return text

    def write_nginx_config(self) -> Path:
        path = self.config.run_dir / "nginx.conf"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.nginx_config())
        tmp.replace(path)
        return path

    def start_nginx(self) -> None:
        if os.geteuid() == 0:  # workers run as nobody: they must reach the temp and cache folders
            if not all(os.stat(d).st_mode & 0o001 for d in [self.work_dir, *self.work_dir.parents]):
                self.work_dir = Path(tempfile.mkdtemp(prefix=f"losslens-nginx-{self.config.port}-"))
            os.chmod(self.work_dir, 0o711)
        for sub in ("tmp", "cache"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(self.work_dir / sub, *_nobody())
        run = self.config.run_dir
        conf = self.write_nginx_config()
        cmd = [NGINX, "-p", str(run), "-c", str(conf), "-e", str(run / "error.log")]
        test = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"nginx refuses the room's config:\n{test.stderr}")
        log = open(run / "nginx.out", "ab")
        self.nginx = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.nginx.poll() is None:
            if http_ok(f"{self.url}/_stcore/health", timeout=2):
                return
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not come up: {(run / 'error.log').read_text()[-2000:]}")

    def reload_nginx(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.write_nginx_config()
            os.kill(self.nginx.pid, signal.SIGHUP)  # graceful: open websockets stay on old workers

    # --- the Streamlit processes ---------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(self.config.env if self.config.env is not None else os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.config.shared:
            env["LOSSLENS_SHARED"] = "1"
        if not self.config.shared_weights:
            env["LOSSLENS_SHARED_WEIGHTS"] = "0"
        env.setdefault("LOSSLENS_SHARED_WEIGHTS", "1")
        return env

    def spawn(self, p: Process) -> None:
        cmd = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(p.port),
            "--server.address",
            p.host,
            "--browser.gatherUsageStats",
            "false",
            *self.config.flags,
        ]
        log = open(self.config.run_dir / f"process-{p.index}.log", "ab")
        p.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        p.state, p.since, p.failing_since = "starting", time.monotonic(), None

    def kill(self, p: Process) -> None:
        if p.proc is None or p.proc.poll() is not None:
            return
        p.proc.terminate()
        try:
            p.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(timeout=10)

    def start(self) -> Room:
        """Start every local process, wait for their health, then start nginx."""
        c = self.config
        c.run_dir.mkdir(parents=True, exist_ok=True)
        if c.proxy and not Path(NGINX).exists():
            raise RuntimeError(f"nginx not found at {NGINX} (Debian: apt-get install nginx-light)")
        if self.other_room_alive():
            raise RuntimeError(f"a room already runs from {c.run_dir} (deploy/room.py stop --port {c.port})")
        try:
            for p in self.processes:
                if p.local:
                    self.spawn(p)
            deadline = time.monotonic() + START_TIMEOUT
            while any(p.state != "up" for p in self.processes if p.local):
                for p in self.processes:
                    if p.local and p.proc.poll() is not None:
                        raise RuntimeError(f"process {p.index} exited:\n{self.log_tail(p)}")
                    if p.state != "up" and p.health():
                        p.state, p.since = "up", time.monotonic()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"processes not healthy after {START_TIMEOUT:.0f} s")
                time.sleep(0.3)
            for p in self.processes:  # another machine's processes: up if they answer now
                if not p.local:
                    p.state = "up" if p.health() else "down"
            if c.proxy:
                self.start_nginx()
            self.save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, p: Process, chars: int = 3000) -> str:
        try:
            return (self.config.run_dir / f"process-{p.index}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- supervision ---------------------------------------------------------------------

    def check(self) -> list[str]:
        """One supervision round; returns what it did (for the log)."""
        events, changed, now = [], False, time.monotonic()
        for p in self.processes:
            exited = p.local and p.proc is not None and p.proc.poll() is not None
            healthy = not exited and p.health(timeout=2.0)
            if p.state == "up":
                if healthy:
                    p.failing_since = None
                    continue
                p.failing_since = p.failing_since or now
                # A busy process answers late: only an exit, or a long silence, takes it out.
                if exited or now - p.failing_since >= self.config.hung:
                    why = (
                        f"exited ({p.proc.returncode})"
                        if exited
                        else f"no health answer for {self.config.hung:.0f} s"
                    )
                    p.state, p.since, changed = "down", now, True
                    events.append(f"process {p.index} on :{p.port} {why}: taken out of the proxy")
            if p.state != "up" and p.local:
                if p.state == "down" or exited or now - p.since > START_TIMEOUT:
                    self.kill(p)
                    self.spawn(p)
                    p.restarts += 1
                    events.append(f"process {p.index} restarted on :{p.port} (restart {p.restarts})")
                elif healthy:
                    p.state, p.since, p.failing_since, changed = "up", now, None, True
                    events.append(f"process {p.index} on :{p.port} healthy again: back in the proxy")
            elif p.state != "up" and healthy:  # another machine's process came back
                p.state, p.since, changed = "up", now, True
                events.append(f"remote process {p.address} healthy: in the proxy")
        if self.config.proxy:
            if self.nginx is not None and self.nginx.poll() is not None and not self._stopping:
                self.nginx_restarts += 1
                events.append(f"nginx exited ({self.nginx.returncode}): started again")
                self.start_nginx()
            elif changed:
                self.reload_nginx()
        if events or changed:
            self.save_state()
        return events

    def supervise(self) -> None:
        """Check every --interval until SIGTERM/SIGINT, then stop everything."""

        def on_signal(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        try:
            while True:
                for event in self.check():
                    print(time.strftime("%H:%M:%S"), event, flush=True)
                time.sleep(self.config.interval)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopping = True
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()  # fast shutdown: websockets close, browsers show "connecting"
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        for p in self.processes:
            if p.local and p.proc is not None and p.proc.poll() is None:
                p.proc.terminate()
        for p in self.processes:
            if p.local:
                self.kill(p)
        (self.config.run_dir / STATE_FILE).unlink(missing_ok=True)
        if self.work_dir != self.config.run_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- state on disk, for `status` and `stop` ------------------------------------------

    def save_state(self) -> None:
        c = self.config
        state = {
            "supervisor": os.getpid(),
            "url": self.url if c.proxy else None,
            "nginx": self.nginx.pid if self.nginx is not None else None,
            "nginx_restarts": self.nginx_restarts,
            "affinity": c.affinity,
            "processes": [
                {
                    "index": p.index,
                    "address": p.address,
                    "pid": p.proc.pid if p.proc is not None else None,
                    "state": p.state,
                    "restarts": p.restarts,
                }
                for p in self.processes
            ],
        }
        path = c.run_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    def other_room_alive(self) -> bool:
        state = read_state(self.config.run_dir)
        return state is not None and pid_alive(state["supervisor"]) and state["supervisor"] != os.getpid()


def _nobody() -> tuple[int, int]:
    import grp
    import pwd

    uid = pwd.getpwnam("nobody").pw_uid
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pwd.getpwnam("nobody").pw_gid
    return uid, gid


def read_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- command line ----------------------------------------------------------------------


def cmd_start(args) -> int:
    config = RoomConfig(
        processes=args.processes,
        port=args.port,
        first_port=args.first_port or args.port + 1,
        listen=args.listen,
        address=args.address,
        run_dir=args.run_dir,
        shared=not args.local,
        shared_weights=not args.private_weights,
        affinity=not args.no_affinity,
        proxy=not args.no_proxy,
        remote=tuple(args.remote),
        hung=args.hung,
        flags=tuple(args.flag),
    )
    if args.detach:
        return detach(args, config)
    room = Room(config).start()
    where = room.url if config.proxy else ", ".join(p.address for p in room.processes)
    print(f"LossLens room: {where} ({config.processes} processes; state in {config.run_dir})", flush=True)
    room.supervise()
    return 0


def detach(args, config: RoomConfig) -> int:
    """Run `start` in its own session in the background; return once the room is up (or failed)."""
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / STATE_FILE).unlink(missing_ok=True)
    log_path = config.run_dir / "room.log"
    log = open(log_path, "ab")
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT + 30
    while time.monotonic() < deadline:
        state = read_state(config.run_dir)
        if state is not None and state["supervisor"] == child.pid:
            print(
                f"LossLens room: {state['url'] or 'processes only'} (supervisor pid {child.pid}; "
                f"log {log_path})"
            )
            return 0
        if child.poll() is not None:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        time.sleep(0.5)
    os.kill(child.pid, signal.SIGTERM)
    print(f"the room did not come up in time; see {log_path}", file=sys.stderr)
    return 1


def cmd_stop(args) -> int:
    run_dir = args.run_dir or default_run_dir(args.port)
    state = read_state(run_dir)
    if state is None or not pid_alive(state["supervisor"]):
        print(f"no room runs from {run_dir}")
        return 0
    os.kill(state["supervisor"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pid_alive(state["supervisor"]):
        time.sleep(0.2)
    if pid_alive(state["supervisor"]):
        print(f"the supervisor (pid {state['supervisor']}) did not stop within 60 s", file=sys.stderr)
        return 1
    print("room stopped")
    return 0


def cmd_status(args) -> int:
    run_dir = args.run_dir or default_run_dir(args.port)
    state = read_state(run_dir)
    if state is None or not pid_alive(state["supervisor"]):
        print(f"no room runs from {run_dir}")
        return 3
    for p in state["processes"]:
        p["healthy"] = http_ok(f"http://{p['address']}/_stcore/health")
    if state["url"]:
        state["proxy_healthy"] = http_ok(f"{state['url']}/_stcore/health")
    if args.json:
        print(json.dumps(state, indent=1))
        return 0
    print(
        f"room {state['url'] or '(no proxy here)'}: supervisor pid {state['supervisor']}, "
        f"nginx pid {state['nginx']} ({'healthy' if state.get('proxy_healthy') else 'not answering'})"
    )
    for p in state["processes"]:
        print(
            f"  process {p['index']} {p['address']}: pid {p['pid']}, {p['state']}, "
            f"{'healthy' if p['healthy'] else 'not answering'}, restarts {p['restarts']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a room and supervise it")
    start.add_argument(
        "-n",
        "--processes",
        type=int,
        default=RoomConfig.processes,
        help="Streamlit processes on this machine (default: one per core)",
    )
    start.add_argument("--first-port", type=int, help="the first process's port (default: --port + 1)")
    start.add_argument("--listen", default="127.0.0.1", help="the proxy's address (0.0.0.0: the network)")
    start.add_argument(
        "--address",
        default="127.0.0.1",
        help="the processes' address (a LAN address when another machine's proxy serves them)",
    )
    start.add_argument("--local", action="store_true", help="a local server (LOSSLENS_SHARED unset)")
    start.add_argument(
        "--private-weights",
        action="store_true",
        help="each process keeps its own copy of the book's model (LOSSLENS_SHARED_WEIGHTS=0)",
    )
    start.add_argument(
        "--no-affinity",
        action="store_true",
        help="spread requests round-robin, no route cookie (to show what breaks)",
    )
    start.add_argument("--no-proxy", action="store_true", help="processes only (another machine proxies)")
    start.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a process on another machine, also behind this proxy (repeatable)",
    )
    start.add_argument(
        "--hung",
        type=float,
        default=30.0,
        help="seconds without a health answer before a process is restarted (default 30)",
    )
    start.add_argument(
        "--flag",
        action="append",
        default=[],
        help="an extra streamlit flag, e.g. --flag=--server.maxUploadSize --flag=20",
    )
    start.add_argument("--detach", action="store_true", help="return once the room is up")
    for p in (start, sub.add_parser("stop", help="stop the room"), sub.add_parser("status", help="health")):
        p.add_argument("--port", type=int, default=8500, help="the proxy's port (default 8500)")
        p.add_argument(
            "--run-dir", type=Path, help="config, logs and state (default: $TMPDIR/losslens-room-PORT)"
        )
    sub.choices["status"].add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "start" and not 1 <= args.processes <= 64:
        parser.error("--processes must be 1..64")
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
