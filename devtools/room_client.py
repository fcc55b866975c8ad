"""A protocol visitor that keeps its cookies, as a browser tab does, for a room behind a proxy.

devtools/protocol.py's visitor opens each request on its own and sends no cookie: right for one
server, wrong behind deploy/'s nginx, which keeps a visitor on one process by the cookie its
first response sets. This visitor makes the same requests (index.html, the files it names, the
probes, the websocket) through a `Target` with one cookie jar per visitor, and can upload a
corpus the way the frontend does: ask the session for upload URLs over the websocket, PUT the
file (with Streamlit's XSRF token from its cookie), then rerun with the uploader's state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

from devtools.harness import free_port
from devtools.protocol import ASSET, DONE, Outcome, Plan, Run, Session, check

ROUTE_COOKIE = "losslens_route"
XSRF_COOKIE = "_streamlit_xsrf"
TRAIN_LOSS, VAL_LOSS = "Training loss", "Validation loss"


def free_block(n: int) -> int:
    """A port p such that p .. p+n are free on loopback now (the proxy, then n processes)."""
    import socket

    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for k in range(n + 1):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


@dataclass
class Target:
    """Where visitors go: one server or a proxy, host and port."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        hostport = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        return cls(host or "127.0.0.1", int(port or 80))


@dataclass
class Jar:
    """One visitor's cookies (name -> value); Set-Cookie headers update it."""

    cookies: dict = field(default_factory=dict)

    def take(self, headers: list[tuple[str, str]]) -> None:
        for name, value in headers:
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0].strip()

    def header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items() if v)

    @property
    def route(self) -> str | None:
        return self.cookies.get(ROUTE_COOKIE) or None


async def request(
    target: Target, method: str, path: str, jar: Jar, timeout: float, body: bytes = b"", headers=None
) -> tuple[int, bytes]:
    """One HTTP/1.0 request on a fresh connection (the server closes after it, no chunking)."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        lines = [f"{method} /{path.lstrip('/')} HTTP/1.0", f"Host: {target.host}:{target.port}"]
        if jar.header():
            lines.append(f"Cookie: {jar.header()}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in {"PUT", "POST"}:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, content = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode(errors="replace").split("\r\n")
        jar.take([tuple(h.split(":", 1)) for h in header_lines if ":" in h])
        parts = status_line.split(" ", 2)
        return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), content

    return await asyncio.wait_for(go(), timeout)


async def static_visit(target: Target, jar: Jar, timeout: float) -> None:
    """index.html, then what it names and the two probes, six connections at a time."""
    status, page = await request(target, "GET", "/", jar, timeout)
    if status != 200:
        raise RuntimeError(f"GET /: HTTP {status}")
    paths = sorted(set(ASSET.findall(page.decode(errors="replace")))) + [
        "_stcore/health",
        "_stcore/host-config",
    ]
    gate = asyncio.Semaphore(6)  # a browser's connections per host

    async def one(path: str) -> None:
        async with gate:
            code, _ = await request(target, "GET", path, jar, timeout)
            if code != 200:
                raise RuntimeError(f"GET /{path}: HTTP {code}")

    await asyncio.gather(*(one(p) for p in paths))


class RoomSession(Session):
    """Session with the uploader widget, the session id and upload URLs."""

    def __init__(self, ws, timeout: float):
        super().__init__(ws, timeout)
        self.session_id = ""
        self.files: dict[str, tuple] = {}  # uploader key -> (name, size, file_id, upload_url, delete_url)

    @classmethod
    async def open_via(cls, target: Target, jar: Jar, timeout: float) -> RoomSession:
        ws = await websockets.connect(
            f"ws://{target.host}:{target.port}/_stcore/stream",
            subprotocols=["streamlit"],
            additional_headers={"Cookie": jar.header()} if jar.header() else None,
            max_size=None,
            compression=None,
            open_timeout=timeout,
            ping_interval=None,
        )
        jar.take(list(ws.response.headers.raw_items()))  # the proxy may name another process
        return cls(ws, timeout)

    def state(self, key: str, value) -> WidgetState:
        if key in self.files and self.widgets.get(key, (None, ""))[1] == "file_uploader":
            wid = self.widgets[key][0]
            s = WidgetState(id=wid)
            name, size, file_id, upload_url, delete_url = self.files[key]
            info = s.file_uploader_state_value.uploaded_file_info.add()
            info.name, info.size, info.file_id = name, size, file_id
            info.file_urls.file_id, info.file_urls.upload_url = file_id, upload_url
            info.file_urls.delete_url = delete_url
            return s
        return super().state(key, value)

    async def _until_finished(self) -> Run:
        run = Run()
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(await self.ws.recv())
            kind = fm.WhichOneof("type")
            if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                el = fm.delta.new_element
                if el.WhichOneof("type") == "file_uploader":
                    key = el.file_uploader.id.rsplit("-", 1)[-1]
                    self.widgets[key] = (el.file_uploader.id, "file_uploader", el.file_uploader)
                else:
                    self._element(el, run)
            elif kind == "new_session":
                self.page_hash = fm.new_session.page_script_hash or self.page_hash
                if fm.new_session.HasField("initialize"):
                    self.session_id = fm.new_session.initialize.session_id or self.session_id
                    self.run_on_save = fm.new_session.initialize.session_status.run_on_save
            elif kind == "navigation":
                self.page_hash = fm.navigation.page_script_hash or self.page_hash
                self.pages = {p.url_pathname: p.page_script_hash for p in fm.navigation.app_pages}
            elif kind == "auto_rerun":
                self.auto_rerun = (fm.auto_rerun.interval, fm.auto_rerun.fragment_id)
            elif kind == "script_finished" and fm.script_finished in DONE:
                return run

    async def upload(self, target: Target, jar: Jar, key: str, name: str, data: bytes) -> int:
        """Upload `data` for the uploader keyed `key` as the frontend does; returns the PUT's status."""
        msg = BackMsg()
        req = msg.file_urls_request
        req.request_id, req.session_id = uuid.uuid4().hex, self.session_id
        req.file_names.append(name)
        await self.ws.send(msg.SerializeToString())

        async def urls():
            while True:
                fm = ForwardMsg()
                fm.ParseFromString(await self.ws.recv())
                if fm.WhichOneof("type") == "file_urls_response":
                    return fm.file_urls_response

        resp = await asyncio.wait_for(urls(), self.timeout)
        if resp.error_msg or not resp.file_urls:
            raise RuntimeError(f"no upload URL: {resp.error_msg!r}")
        u = resp.file_urls[0]
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{quote(name)}"; '
                f'filename="{quote(name)}"\r\nContent-Type: text/plain\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if jar.cookies.get(XSRF_COOKIE):
            headers["X-Xsrftoken"] = jar.cookies[XSRF_COOKIE]
        status, _ = await request(target, "PUT", u.upload_url, jar, self.timeout, body, headers)
        if status in (200, 204):
            self.files[key] = (name, len(data), u.file_id, u.upload_url, u.delete_url)
        return status


@dataclass
class RoomOutcome(Outcome):
    route: str | None = None  # the process the proxy's cookie named at the end
    jar: Jar | None = None  # the visitor's cookies, for a reload of the same tab


async def visit(target: Target, plan: Plan, timeout: float, jar: Jar | None = None) -> RoomOutcome:
    """A text visitor through the proxy: the same checks as devtools.protocol.visit, with cookies."""
    out, jar = RoomOutcome(plan.kind), jar if jar is not None else Jar()
    t0 = time.perf_counter()
    session = None
    try:
        await static_visit(target, jar, timeout)
        session = await RoomSession.open_via(target, jar, timeout)
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
        out.route, out.jar = jar.route, jar
        if session is not None:
            await session.close()
    return out


async def crowd(target: Target, plans: list[Plan], ramp: float, timeout: float) -> list[RoomOutcome]:
    """All visitors, arriving evenly over `ramp` seconds, each with its own cookie jar."""

    async def arrive(i: int, plan: Plan) -> RoomOutcome:
        await asyncio.sleep(ramp * i / max(1, len(plans) - 1) if len(plans) > 1 else 0)
        return await visit(target, plan, timeout)

    return await asyncio.gather(*(arrive(i, p) for i, p in enumerate(plans)))


@dataclass
class UploadOutcome:
    status: int = 0  # the PUT's HTTP status
    route_at_open: str | None = None
    losses: dict = field(default_factory=dict)  # metric label -> shown value
    error: str | None = None


async def upload_corpus(
    target: Target, name: str, data: bytes, timeout: float, jar: Jar | None = None
) -> UploadOutcome:
    """Open the dataset view, upload `data` as a corpus, press Compute; the losses it shows."""
    out, jar = UploadOutcome(), jar if jar is not None else Jar()
    session = None
    query = "corpus=" + quote("Upload a file")
    try:
        await static_visit(target, jar, timeout)
        session = await RoomSession.open_via(target, jar, timeout)
        out.route_at_open = jar.route
        await session.rerun()
        await session.rerun(page="dataset", query=query)
        if "corpus_file" not in session.widgets:
            raise RuntimeError(f"no corpus uploader on the dataset view (have {sorted(session.widgets)})")
        out.status = await session.upload(target, jar, "corpus_file", name, data)
        if out.status not in (200, 204):
            raise RuntimeError(f"upload refused: HTTP {out.status}")
        run = await session.rerun({"corpus_file": True}, query=query)
        if run.errors or run.exceptions:
            raise RuntimeError(f"after the upload: {(run.errors or ['an exception box'])[0][:160]}")
        run = await session.rerun({"corpus_file": True, "ds_compute": True}, query=query)
        out.losses = {k: v for k, v in run.metrics.items() if k in (TRAIN_LOSS, VAL_LOSS)}
        if len(out.losses) != 2:
            raise RuntimeError(f"no losses shown (metrics {run.metrics}, alerts {run.alerts[:2]})")
    except Exception as e:
        out.error = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        if session is not None:
            await session.close()
    return out
