"""The server and browser harness that tests/e2e and bench/ share: a real `streamlit run`
on loopback, Chromium's path and flags, the page waits, and process CPU/RSS from /proc.

Plain functions with no pytest import, so benchmarks can use them without the test suite."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICT_PATH = ROOT / "core" / "models" / "data" / "the-verdict.txt"  # the copy LossLens ships
ARTIFACTS = ROOT / "test-artifacts"
BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SERVER_START_TIMEOUT = 120  # s: import torch + streamlit on a busy 2-core machine
APP_TIMEOUT = 120_000  # ms: first run builds the 124M model
# Page checks every 100 ms, not on every animation frame: the renderer's CPU is the tests' scarcest.
POLL_MS = 100
DONE_STATES = ("notRunning", "compilationError")
_BASE_PATH_PROBE = re.compile(r"^http://127\.0\.0\.1:\d+/[^?#]+/_stcore/(health|host-config)$")


def find_chromium() -> str | None:
    """$LOSSLENS_CHROMIUM, else Debian's /usr/bin/chromium, else chromium(-browser) on PATH."""
    candidates = [os.environ.get("LOSSLENS_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which("chromium"), shutil.which("chromium-browser")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> str:
    # No proxy: the server is on loopback and the machine may have a proxy for registries.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read().decode()


class StreamlitServer:
    """`streamlit run app.py` on a free loopback port, with its own environment and log."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        port: int | None = None,
        script: str = "app.py",
        flags: tuple[str, ...] = (),
    ):
        """`script` is relative to the repository root; `flags` are extra `--section.option value`
        pairs (they override .streamlit/config.toml, as on the command line)."""
        self.env = env
        self.log_path = log_dir / "streamlit.log"
        self.port = port or free_port()
        self.script = script
        self.flags = tuple(flags)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> StreamlitServer:
        cmd = [
            sys.executable, "-m", "streamlit", "run", self.script,
            "--server.headless", "true",
            "--server.port", str(self.port),
            "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false",
            # Otherwise .streamlit/config.toml decides, as in production (no file watcher there).
            *self.flags,
        ]  # fmt: skip
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http_get(f"{self.url}/_stcore/health", timeout=2).strip() == "ok":
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit not healthy after {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def restart(self) -> StreamlitServer:
        """Stop and start again on the same port, so the same URLs reopen."""
        self.stop()
        return self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def proc_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process in KiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and its children (a training child counts towards the server)."""
    total = proc_kib(pid, "VmRSS")
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            try:
                total += tree_rss_kib(int(cpid))
            except (FileNotFoundError, KeyError, ProcessLookupError):
                pass
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (a training child counts towards the server)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            try:
                total += tree_cpu_seconds(int(cpid))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def server_env(cache_dir: Path, verdict: Path | None = None) -> dict[str, str]:
    """The server's environment: its own cache; The Verdict from `verdict`, else the packaged copy."""
    env = dict(os.environ)
    env["LOSSLENS_CACHE_DIR"] = str(cache_dir)
    env.pop("LOSSLENS_VERDICT_PATH", None)
    if verdict is not None:
        env["LOSSLENS_VERDICT_PATH"] = str(verdict)
    env["PYTHONUNBUFFERED"] = "1"
    return env


_IDLE_JS = """(states) => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !!app && app.getAttribute('data-test-connection-state') === 'CONNECTED'
        && states.includes(app.getAttribute('data-test-script-state'))
        && !document.querySelector('[data-testid="stAppSkeleton"], [data-testid="stSkeleton"]')
        && !document.querySelector(
            '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]');
}"""


# Counts the changes of the app's run state in the page, so that a wait can tell that a run came and
# went before it began (a fast rerun ends before the test's next call reaches the browser).
RUN_WATCH_JS = """(() => {
  window.__llChanges = 0;
  new MutationObserver((records) => { window.__llChanges += records.length; }).observe(document,
    {attributes: true, subtree: true, attributeFilter: ['data-test-script-state']});
})();"""


def watch_runs(context) -> None:
    """Install the run-state counter in every page of a browser context (wait_for_app uses it)."""
    context.add_init_script(RUN_WATCH_JS)


def _changes(page) -> int | None:
    return page.evaluate("() => window.__llChanges ?? null")


def wait_for_app(page, timeout: float = APP_TIMEOUT, settle: float = 500) -> None:
    """Wait until Streamlit is connected, its script run has finished and nothing is pending.

    After an input the rerun may not have started yet, and a page load can chain a second
    run, so the idle state must hold for `settle` ms before it counts. In a page with the
    run-state counter (watch_runs), a run already seen since the last wait needs no waiting
    for, and the settle is half as long: any change of state during it is counted.
    """
    seen = _changes(page)
    if seen is None or seen == getattr(page, "_ll_changes", None):
        try:
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=500)
        except Exception:
            pass
    deadline = time.monotonic() + timeout / 1000
    while True:
        remaining = max(1.0, (deadline - time.monotonic()) * 1000)
        page.wait_for_function(_IDLE_JS, arg=list(DONE_STATES), timeout=remaining, polling=POLL_MS)
        before = _changes(page)
        page.wait_for_timeout(settle if before is None else settle / 2)
        if page.evaluate(_IDLE_JS, list(DONE_STATES)) and _changes(page) == before:
            page._ll_changes = before
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Streamlit did not settle within {timeout / 1000:.0f} s")


def metric_value(page, label: str, timeout: float = APP_TIMEOUT) -> str:
    """The text of the st.metric whose label contains `label` (first match)."""
    metric = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label)
    )
    metric.first.wait_for(timeout=timeout)
    return metric.first.locator('[data-testid="stMetricValue"]').inner_text().strip()


def first_number(text: str) -> float:
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group(0).replace(",", ""))


class PageProblems:
    """What the browser reported while a test ran: all of it fails the test."""

    def __init__(self):
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page) -> None:
        # The same handler objects for detach: a page handed on to the next test stops reporting here.
        self._handlers = {
            "console": self._on_console,
            "pageerror": self._on_page_error,
            "dialog": self._on_dialog,
        }
        for event, handler in self._handlers.items():
            page.on(event, handler)

    def detach(self, page) -> None:
        for event, handler in self._handlers.items():
            page.remove_listener(event, handler)

    def _on_page_error(self, error) -> None:
        self.page_errors.append(str(error))

    def _on_console(self, message) -> None:
        if message.type == "error" and not self.benign(message.text, message.location.get("url", "")):
            self.console_errors.append(f"{message.text} @ {message.location}")

    @staticmethod
    def benign(text: str, url: str) -> bool:
        """Streamlit's own probe, not an app error: a page opened at /<page> may be served under
        a base path, so the frontend first asks /<page>/_stcore/health (and host-config), gets
        404, then connects at the root. Only that exact 404 is ignored."""
        return "404" in text and bool(_BASE_PATH_PROBE.match(url))

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def clear(self) -> None:
        self.console_errors.clear()
        self.page_errors.clear()
        self.dialogs.clear()

    def report(self) -> list[str]:
        return (
            [f"console error: {e}" for e in self.console_errors]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"dialog opened: {d}" for d in self.dialogs]
        )


def expected_loss(model, texts: list[str]) -> tuple[float, float]:
    from core.lessons.loss import compute_loss

    result = compute_loss(model, texts)
    return float(result.loss), result.perplexity


def tmp_text_file(directory: Path, name: str, data: bytes) -> Path:
    path = Path(tempfile.mkdtemp(dir=directory)) / name
    path.write_bytes(data)
    return path


TEXT_LABEL = "Texts (one per line)"
LOSS_LABEL = "Loss (cross entropy)"
PERPLEXITY_LABEL = "Perplexity"


def text_box(page):
    return page.get_by_role("textbox", name=TEXT_LABEL, exact=True)


def set_text(page, text: str) -> None:
    """Replace the texts in the sidebar and apply them (Ctrl+Enter, as a user would)."""
    box = text_box(page)
    box.fill(text)
    box.press("Control+Enter")
    wait_for_app(page)


def shown_value(shown: str, value: float) -> bool:
    """A number as the page writes it (10.7940, 3.1061e-05, 48,726) is `value` computed in another
    process to within one unit of its last digit: the server may round a float32 the other way.
    wait_for_metric's page-side check is this one in JavaScript."""
    mantissa, _, exponent = shown.replace(",", "").partition("e")
    unit = 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
    return abs(float(mantissa) * 10.0 ** int(exponent or 0) - value) <= 1.0001 * unit


def wait_for_metric(page, label: str, expected: str | float, timeout: float = APP_TIMEOUT) -> None:
    """Wait until the metric `label` reads `expected` (Streamlit reruns asynchronously): a text as
    written, or a value computed in another process as shown_value compares it."""
    page.wait_for_function(
        """([label, expected]) => [...document.querySelectorAll('[data-testid="stMetric"]')].some(m => {
            const l = m.querySelector('[data-testid="stMetricLabel"]');
            const v = m.querySelector('[data-testid="stMetricValue"]');
            if (!l || !v || !l.innerText.includes(label)) return false;
            const shown = v.innerText.replace(/,/g, '');
            if (typeof expected !== 'number') return shown.includes(expected);
            const [mantissa, exponent = '0'] = shown.split('e');
            const unit = 10 ** (Number(exponent) - (mantissa.split('.')[1] || '').length);
            return Math.abs(Number(shown) - expected) <= 1.0001 * unit;
        })""",
        arg=[label, expected if isinstance(expected, str) else float(expected)],
        timeout=timeout,
        polling=POLL_MS,
    )


# The hostile input: HTML, script, style, Markdown/LaTeX control characters, emoji,
# right-to-left text, zero-width characters and the special token, one per line.
HOSTILE_LINES = [
    "<img src=x onerror=alert(1)> tail",
    "<script>window.__pwned = 1; alert(1)</script>",
    "<style>*{display:none}</style> hidden?",
    "**bold** $$x^2$$ # heading `code` _it_ [link](javascript:alert(1))",
    "emoji 😀🙂👍🏽 and café",
    "right to left: שלום עולם مرحبا بالعالم",
    "zero\u200bwidth\u200djoin\ufeffbom",
    "special <|endoftext|> token",
]
INJECTION_MARKERS = ["<img src=x onerror=alert(1)>", "<script>", "<style>*{display:none}</style>"]


def injected(page) -> list[str]:
    """What user text would have added to the page if it were treated as code or style."""
    found = page.evaluate(
        """() => {
        const out = [];
        if (window.__pwned) out.push('a <script> from user text ran');
        if (document.querySelector('img[src="x"]')) out.push('an <img src=x> element exists');
        for (const s of document.querySelectorAll('style'))
            if (s.textContent.includes('*{display:none}')) out.push('a user <style> element exists');
        for (const s of document.querySelectorAll('script'))
            if (s.textContent.includes('__pwned')) out.push('a user <script> element exists');
        for (const a of document.querySelectorAll('a[href^="javascript:"]'))
            out.push('a javascript: link exists');
        const app = document.querySelector('[data-testid="stApp"]');
        if (getComputedStyle(document.body).display === 'none' || !app
            || getComputedStyle(app).display === 'none')
            out.push('the page was hidden by a style');
        return out;
    }"""
    )
    return found


def choose_corpus(page, source: str) -> None:
    """Pick a corpus source in the dataset view ("The Verdict", "Upload a file", "Paste text")."""
    page.get_by_text(source, exact=True).click()
    wait_for_app(page)


def upload(page, path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))
    wait_for_app(page)


def alerts(page) -> str:
    return "\n".join(page.locator('[data-testid="stAlert"]').all_inner_texts())
