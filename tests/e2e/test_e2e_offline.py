"""Offline operation and restarts: no request leaves the machine, The Verdict needs no file or
network, and a server restart loses nothing that the URL carries."""

from __future__ import annotations

import urllib.parse

import pytest

from devtools.harness import (
    LOSS_LABEL,
    PERPLEXITY_LABEL,
    StreamlitServer,
    choose_corpus,
    expected_loss,
    metric_value,
    server_env,
    text_box,
    wait_for_app,
    wait_for_metric,
)

LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:", "about:")
TEXT_VIEWS = ["", "probabilities", "figure-5-7", "cross-entropy", "per-token-loss"]
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every download fails at once


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory, chromium_path):
    """No corpus path (the packaged Verdict), an empty cache, and every download routed to a dead
    loopback proxy: the network is "mocked" as down even on a machine that has one."""
    work = tmp_path_factory.mktemp("e2e-offline")
    env = server_env(work / "cache", verdict=None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env[name] = DEAD_PROXY
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    srv = StreamlitServer(env, work).start()
    yield srv
    srv.stop()


def block_the_network(page) -> list[str]:
    """Abort (and record) every browser request that would leave the machine."""
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(LOOPBACK):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.context.route("**/*", route)
    return outside


def test_the_default_path_works_completely_offline(new_page, offline_server):
    page = new_page()
    outside = block_the_network(page)
    for path in TEXT_VIEWS:
        page.goto(f"{offline_server.url}/{path}")
        wait_for_app(page)
        page.locator('[data-testid="stMainBlockContainer"] h2').first.wait_for()
        if path != "cross-entropy":
            assert metric_value(page, LOSS_LABEL) == "10.7940"
            assert metric_value(page, PERPLEXITY_LABEL) == "48,726"
        if path in ("probabilities", "figure-5-7"):
            page.locator(".js-plotly-plot").first.wait_for()
    assert outside == [], f"the page asked the network for {outside}"


def test_the_verdict_losses_offline_with_no_file_provided(new_page, offline_server):
    """The Verdict ships with the app: no path, no cache, no network, and the book's losses."""
    page = new_page()
    outside = block_the_network(page)
    page.goto(f"{offline_server.url}/dataset")
    wait_for_app(page)
    page.get_by_text("20,479 characters, 5,145 tokens").wait_for()
    page.get_by_role("button", name="Compute", exact=True).click()
    page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").wait_for(timeout=300_000)
    wait_for_app(page)
    assert metric_value(page, "Training loss") == "10.9876"  # the book: 10.98758347829183
    assert metric_value(page, "Validation loss") == "10.9811"  # the book: 10.98110580444336
    assert outside == [], f"the page asked the network for {outside}"
    # The alternative sources work offline too: paste a corpus and its counts appear.
    choose_corpus(page, "Paste text")
    box = page.get_by_role("textbox", name="Corpus text")
    box.fill("The painter sold his last picture and moved to the coast. " * 120)
    box.press("Control+Enter")
    wait_for_app(page)
    page.get_by_text("pasted text").first.wait_for()
    page.get_by_text("characters,").first.wait_for()


def test_url_state_survives_a_server_restart(new_page, offline_server, core_model):
    texts = ["Restarts happen in workshops", "the link still opens the same state"]
    loss, _ = expected_loss(core_model, texts)
    query = urllib.parse.urlencode(
        {"text": "\n".join(texts), "step": 3, "top_k": 7}, quote_via=urllib.parse.quote
    )
    page = new_page()
    page.goto(f"{offline_server.url}/figure-5-7?{query}")
    wait_for_app(page)
    page.get_by_role("heading", name="Step 3 of 6").wait_for()
    wait_for_metric(page, LOSS_LABEL, f"{loss:.4f}")
    link = page.url

    page.goto("about:blank")  # leave first: a page left open logs its reconnect attempts
    offline_server.restart()  # same port, new process: every session and cache is gone
    page.goto(link)
    wait_for_app(page)
    page.get_by_role("heading", name="Step 3 of 6").wait_for()
    assert text_box(page).input_value() == "\n".join(texts)
    wait_for_metric(page, LOSS_LABEL, f"{loss:.4f}")
    assert page.get_by_label("Top-k", exact=True).input_value() == "7"

    fresh = new_page()
    fresh.goto(link)
    wait_for_app(fresh)
    fresh.get_by_role("heading", name="Step 3 of 6").wait_for()
    wait_for_metric(fresh, LOSS_LABEL, f"{loss:.4f}")
