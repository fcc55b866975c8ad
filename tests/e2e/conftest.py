"""End-to-end fixtures: a real `streamlit run app.py` server driven by the system Chromium.

Playwright's own browser download cannot work here, so the PyPI `playwright` package drives
Debian's Chromium through `executable_path`. Every page records console errors, uncaught
page errors and dialogs; a test fails if any occurred or a Streamlit exception box is on the
page, and leaves a screenshot in test-artifacts/ (every test's with LOSSLENS_E2E_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from devtools.harness import (
    APP_TIMEOUT,
    ARTIFACTS,
    CHROMIUM_ARGS,
    VERDICT_PATH,
    PageProblems,
    StreamlitServer,
    server_env,
    watch_runs,
)

from .e2e_helpers import PLAY_SECONDS, open_url, require_chromium

# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return require_chromium()


@pytest.fixture(scope="session")
def playwright_instance(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the browser tests need `pip install playwright` (requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance, chromium_path):
    browser = playwright_instance.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def verdict_file() -> Path:
    if not VERDICT_PATH.is_file():
        pytest.fail(f"The packaged corpus is missing at {VERDICT_PATH}")
    return VERDICT_PATH


# A failed test leaves its pages' screenshots; LOSSLENS_E2E_SCREENSHOTS=1 keeps every test's.
SCREENSHOTS = os.environ.get("LOSSLENS_E2E_SCREENSHOTS") == "1"

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every download fails at once


@pytest.fixture(scope="session")
def server(tmp_path_factory, chromium_path, verdict_file):
    """The app as a user starts it (no flags, The Verdict from the packaged copy) with an empty
    cache, shared by the browser tests; every download goes to a dead loopback proxy, so the
    network is down for the server even on a machine that has one."""
    work = tmp_path_factory.mktemp("e2e-server")
    env = server_env(work / "cache")
    env["LOSSLENS_PLAY_SECONDS"] = str(PLAY_SECONDS)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env[name] = DEAD_PROXY
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    srv = StreamlitServer(env, work).start()
    yield srv
    srv.stop()


def _artifact_name(request) -> str:
    # Parameters like "**" or "$" must not collapse to the same name: spell them in hex.
    name = request.node.name.replace("[", "_").rstrip("]")
    return re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"x{ord(m.group(0)):x}", name)[:120] + ".png"


VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="session")
def shared_context(browser):
    """One browser context for the tests' pages: its cache keeps the compiled scripts of
    Streamlit and Plotly from page to page, where a fresh context spends seconds of CPU compiling
    them again. Each page is still a Streamlit session of its own: a visitor of its own."""
    context = browser.new_context(viewport=VIEWPORT)
    watch_runs(context)
    yield context
    context.close()


@pytest.fixture(scope="session")
def idle_tabs() -> list:
    """Tabs of the shared context that a finished test left on about:blank, for the next test.
    A new tab costs Chromium 3-6 s of CPU more than a new document in a tab it already has."""
    return []


def _hand_on(page, problems: PageProblems, idle_tabs: list) -> None:
    """Leave a tab as a new one is: its Streamlit session ended (about:blank), and nothing
    of the test kept (listeners, routes, media emulation, sessionStorage, the run counter)."""
    if page.is_closed():
        return
    try:
        problems.detach(page)
        page.unroute_all(behavior="ignoreErrors")
        page.emulate_media(reduced_motion="null")
        page.evaluate("() => { try { sessionStorage.clear() } catch (e) {} }")
        page.goto("about:blank")
        page.__dict__.pop("_ll_changes", None)
    except Exception:
        page.close()
        return
    idle_tabs.append(page)


@pytest.fixture
def new_page(browser, shared_context, idle_tabs, request):
    """Factory: a fresh page (a new document, so a new Streamlit session, in a tab another test
    may have used) whose problems are checked after the test; in a context of its own where the
    test asks for context options (a device scale, say).

    Several pages (or pages of different servers) can be opened in one test.
    """
    opened = []

    def make(viewport=None, **options):
        own = browser.new_context(viewport=viewport or VIEWPORT, **options) if options else None
        if own:
            watch_runs(own)
        page = own.new_page() if own else (idle_tabs.pop() if idle_tabs else shared_context.new_page())
        page.set_viewport_size(viewport or VIEWPORT)
        page.set_default_timeout(APP_TIMEOUT)
        problems = PageProblems()
        problems.attach(page)
        page.problems = problems
        opened.append((own, page, problems))
        return page

    yield make

    failures = []
    for n, (context, page, problems) in enumerate(opened):
        found = []
        try:
            exceptions = page.locator('[data-testid="stException"]')
            if exceptions.count():
                found.append("Streamlit exception box: " + exceptions.first.inner_text()[:2000])
        except Exception:
            pass
        found += problems.report()
        if SCREENSHOTS or found or getattr(request.node, "_e2e_failed", False):
            name = _artifact_name(request)
            if n:
                name = name[:-4] + f"-{n + 1}.png"
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / name), full_page=True)
            except Exception as error:
                found.append(f"screenshot failed: {error}")
        failures += found
        if context:
            context.close()
        else:
            _hand_on(page, problems, idle_tabs)
    if failures:
        message = "browser problems:\n" + "\n".join(failures)
        if getattr(request.node, "_e2e_failed", False):
            print(message, file=sys.stderr)  # the test already failed: add context, not an error
        else:
            pytest.fail(message, pytrace=False)


@pytest.fixture
def page(new_page, server):
    """A page of the default server, opened on the Tokens view (the lesson's first) and waited for."""
    page = new_page()
    open_url(page, server, "tokens")
    return page


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        item._e2e_failed = True  # the call already failed: don't pile a teardown error on it
    return report


# The one test that must find The Verdict not yet computed on the shared server (results are kept
# for every visitor): it runs first, and the tests after it reuse its result instead of a pass of their own.
FIRST = "test_e2e_dataset.py::test_the_verdict_losses_with_progress"


# Under pytest-xdist each worker has a server of its own: the tests that need The Verdict's losses
# on theirs share one worker (--dist loadgroup), so that it is computed once, by FIRST.
VERDICT_GROUP = (
    "test_e2e_dataset.py::",
    "test_e2e_offline.py::",
    "test_e2e_a11y.py::test_axe_dataset_result",
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            if any(part in item.nodeid for part in VERDICT_GROUP):
                item.add_marker(pytest.mark.xdist_group("the-verdict"))
    items.sort(key=lambda item: not item.nodeid.endswith(FIRST))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def core_model(model):
    """The app's default model (tests/conftest.py's seed-123 124M), for expected numbers."""
    return model
