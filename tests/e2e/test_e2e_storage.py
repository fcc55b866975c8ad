"""What a visitor sees when the server's cache folder cannot be written (a real read-only tmpfs):
the lessons work, with their sidebar, and the Training page says why saving is off; and what a
link with invalid values shows."""

from __future__ import annotations

import pytest
from test_checkpoints import _mounted

from devtools.harness import StreamlitServer, metric_value, server_env, wait_for_app

from .e2e_helpers import open_from_sidebar, open_url


@pytest.fixture(scope="module")
def read_only_server(tmp_path_factory, chromium_path, verdict_file):
    with _mounted("ro,size=1m") as where:  # a real read-only filesystem: root cannot write it either
        srv = StreamlitServer(server_env(where / "losslens"), tmp_path_factory.mktemp("e2e-ro")).start()
        yield srv
        srv.stop()


def test_a_read_only_cache_keeps_the_lessons_and_says_why_saving_is_off(new_page, read_only_server):
    page = new_page()
    open_url(page, read_only_server, "figure-5-7")
    assert metric_value(page, "Loss (cross entropy)") == "10.7940"
    page.locator('[data-testid="stSidebar"]').get_by_text("Model", exact=True).wait_for()
    open_from_sidebar(page, "training")
    wait_for_app(page)
    warning = page.locator('[data-testid="stAlert"]', has_text="cannot be written")
    warning.wait_for()
    text = warning.inner_text()
    assert "Read-only file system" in text and "only training is off" in text
    assert page.get_by_role("button", name="Train").is_disabled()


def test_a_link_with_invalid_values_says_what_was_corrected(new_page, read_only_server):
    page = new_page()
    page.goto(f"{read_only_server.url}/figure-5-7?seed=-5&top_k=1000000000&temperature=nan&model=..%2Fx")
    wait_for_app(page)
    notice = page.locator('[data-testid="stSidebar"] [data-testid="stAlert"]', has_text="link was corrected")
    notice.wait_for()
    text = notice.inner_text()
    for said in ("Seed “-5”", "Top-k “1000000000”", "Temperature “nan”", "Model “../x”"):
        assert said in text, text
    assert metric_value(page, "Loss (cross entropy)") == "10.7940"
