"""Server restarts, in the browser: during a training run the page that reconnects says the run was
lost and offers to resume it from its last save (the server's log stays free of Streamlit's
"missing ScriptRunContext" warnings over the training starts), and a link loses nothing that the URL
carries."""

from __future__ import annotations

import urllib.parse

import pytest

from devtools.harness import (
    LOSS_LABEL,
    StreamlitServer,
    expected_loss,
    server_env,
    text_box,
    wait_for_app,
    wait_for_metric,
)

from .e2e_helpers import open_url


@pytest.fixture(scope="module")
def own_server(tmp_path_factory, chromium_path, verdict_file):
    """A server of this module's own: its test restarts it."""
    work = tmp_path_factory.mktemp("e2e-restart")
    srv = StreamlitServer(server_env(work / "cache"), work).start()
    yield srv
    srv.stop()


def test_a_restart_loses_the_run_but_not_what_the_url_carries(own_server, new_page, core_model):
    """One restart (same port, new process: every session, run and cache gone) seen by two pages:
    the page of a resumed run reconnects by itself and offers to resume from its last save; a link
    opened again reopens the same view, step and text, in its old tab and in a new one."""
    texts = ["Restarts happen in workshops", "the link still opens the same state"]
    loss, _ = expected_loss(core_model, texts)
    query = urllib.parse.urlencode(
        {"text": "\n".join(texts), "step": 3, "top_k": 7}, quote_via=urllib.parse.quote
    )
    linked = new_page()
    linked.goto(f"{own_server.url}/figure-5-7?{query}")
    wait_for_app(linked)
    linked.get_by_role("heading", name="Step 3 of 6").wait_for()
    wait_for_metric(linked, LOSS_LABEL, loss)
    link = linked.url
    linked.goto("about:blank")  # leave first: a page left open logs its reconnect attempts

    page = new_page()
    open_url(page, own_server, "training")
    name = page.get_by_label("Save as")
    name.fill("restart-e2e")
    name.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Train").click()
    page.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped after").wait_for(timeout=300_000)
    wait_for_app(page)
    saved = page.get_by_text("Stopped after").inner_text()
    page.get_by_role("button", name="Resume").click()  # this run is the one the restart loses
    page.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
    page.wait_for_function("() => location.search.includes('run=restart-e2e')", timeout=30_000)

    own_server.restart()
    # The page reconnects by itself, to a server that holds neither the run nor the session.
    page.get_by_text("The server restarted while").wait_for(timeout=120_000)
    wait_for_app(page)
    # The browser logged the lost connection while the server was down: expected here.
    down = (
        "WebSocket",
        "ERR_CONNECTION_REFUSED",
        "when disconnected from server",
        "No response received when attempting to reach /_stcore/health",
        "Streamlit server is not responding",
    )
    lost = [e for e in page.problems.console_errors if any(d in e for d in down)]
    page.problems.console_errors[:] = [e for e in page.problems.console_errors if e not in lost]
    text = page.locator('[data-testid="stAlert"]').first.inner_text()
    steps = saved.split("Stopped after ", 1)[1].split(" step", 1)[0]
    assert "“restart-e2e” was training, and the run was lost" in text
    assert f"Its last save, after {steps} step" in text and "can be resumed" in text
    assert page.get_by_label("Save as").input_value() == "restart-e2e"
    assert page.get_by_role("button", name="Resume").is_enabled()
    assert "missing ScriptRunContext" not in own_server.log_path.read_text(errors="replace")

    linked.goto(link)
    wait_for_app(linked)
    linked.get_by_role("heading", name="Step 3 of 6").wait_for()
    assert text_box(linked).input_value() == "\n".join(texts)
    wait_for_metric(linked, LOSS_LABEL, loss)
    assert linked.get_by_label("Top-k", exact=True).input_value() == "7"

    fresh = new_page()
    fresh.goto(link)
    wait_for_app(fresh)
    fresh.get_by_role("heading", name="Step 3 of 6").wait_for()
    wait_for_metric(fresh, LOSS_LABEL, loss)
