"""The Training view in the browser: a run in the background with a live chart, stopped, then in the
picker and in the comparison; axe audits each of those states."""

from __future__ import annotations

from devtools.harness import wait_for_app

from .a11y_helpers import audit
from .e2e_helpers import open_url


def test_train_live_stop_and_pick(new_page, server):
    page = new_page()
    open_url(page, server, "training")
    page.get_by_role("heading", name="Training").wait_for()
    name = page.get_by_label("Save as")
    name.fill("e2e-quick")
    name.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Train").click()
    # The fragment polls the training process: the progress bar, then the first evaluation (the
    # metric's label: the page's caption also says "training loss").
    page.locator('[data-testid="stProgress"]').wait_for(timeout=120_000)
    page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").first.wait_for(timeout=300_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
    assert audit(page, "training-live-run") == []  # while the fragment redraws every second
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped after").wait_for(timeout=300_000)
    wait_for_app(page)
    assert page.get_by_label("Save as").input_value() == "e2e-quick"
    assert page.get_by_role("button", name="Resume").is_enabled()
    assert audit(page, "training-stopped") == []
    # The saved run is a model of the sidebar's picker.
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Trained: e2e-quick", exact=False).wait_for(timeout=30_000)
    page.keyboard.press("Escape")
    # The comparison puts it beside the untrained model: the book's 10.7940 next to its loss.
    open_url(page, server, "compare")
    page.get_by_role("heading", name="Compare models").wait_for()
    page.locator('[data-testid="stMetricValue"]', has_text="10.7940").first.wait_for(timeout=300_000)
    page.locator('[data-testid="stMetricLabel"]', has_text="e2e-quick").first.wait_for(timeout=300_000)
    wait_for_app(page)
    labels = page.locator('[data-testid="stMetricLabel"]').all_inner_texts()
    assert any("e2e-quick" in label for label in labels), labels
    assert audit(page, "comparison-two-models") == []
