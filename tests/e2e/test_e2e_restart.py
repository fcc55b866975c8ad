"""A server restart during a training run, in the browser: the page that reconnects says the run was
lost and offers to resume it from its last save; the server's log stays free of Streamlit's
"missing ScriptRunContext" warnings over the training starts."""

from __future__ import annotations

import pytest

from devtools.harness import StreamlitServer, server_env, wait_for_app


@pytest.fixture
def own_server(tmp_path, chromium_path, verdict_file):
    """A server of this test's own: it is restarted."""
    srv = StreamlitServer(server_env(tmp_path / "cache"), tmp_path).start()
    yield srv
    srv.stop()


def test_a_restart_during_a_resumed_run_offers_to_resume_from_its_last_save(own_server, new_page):
    page = new_page()
    page.goto(f"{own_server.url}/training")
    wait_for_app(page)
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
