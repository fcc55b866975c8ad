"""Offline operation: no request leaves the machine, and The Verdict needs no file or network (the
shared server's downloads go to a dead proxy: tests/e2e/conftest.py)."""

from __future__ import annotations

from devtools.harness import LOSS_LABEL, PERPLEXITY_LABEL, choose_corpus, metric_value, wait_for_app

from .e2e_helpers import block_the_network, open_from_sidebar, open_url

TEXT_VIEWS = ["", "probabilities", "figure-5-7", "cross-entropy", "per-token-loss"]


def test_the_default_path_works_completely_offline(new_page, server):
    page = new_page()
    outside = block_the_network(page)
    open_url(page, server)
    for path in TEXT_VIEWS:
        if path:  # a view's own requests are those of a page switch: the app is loaded once
            open_from_sidebar(page, path)
            wait_for_app(page)
        page.locator('[data-testid="stMainBlockContainer"] h2').first.wait_for()
        if path != "cross-entropy":
            assert metric_value(page, LOSS_LABEL) == "10.7940"
            assert metric_value(page, PERPLEXITY_LABEL) == "48,726"
        if path in ("probabilities", "figure-5-7"):
            page.locator(".js-plotly-plot").first.wait_for()
    assert outside == [], f"the page asked the network for {outside}"


def test_the_verdict_losses_offline_with_no_file_provided(new_page, server):
    """The Verdict ships with the app: no path, no cache, no network, and the book's losses."""
    page = new_page()
    outside = block_the_network(page)
    open_url(page, server, "dataset")
    page.get_by_text("20,479 characters, 5,145 tokens").wait_for()
    compute = page.get_by_role("button", name="Compute", exact=True)
    if compute.count():  # the dataset test's pass on this server is kept for every visitor
        compute.click()
    page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").first.wait_for(timeout=300_000)
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
