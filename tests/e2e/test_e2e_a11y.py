"""Accessibility in the browser: axe-core on every view and state, a keyboard-only and a
screen-reader walk of figure 5.7, live regions, reduced motion, 200 % zoom and the projector.
A training run's states are audited where the run is: test_e2e_training.py."""

from __future__ import annotations

import re

import pytest

from core.lessons.report import format_perplexity
from devtools.harness import BOOK_TEXTS, LOSS_LABEL, expected_loss, set_text, wait_for_app, wait_for_metric

from .a11y_helpers import app_views, audit, lowest_contrast
from .e2e_helpers import PLAY_SECONDS, assert_said, open_from_sidebar, open_url, wait_for_view

VIEWS = app_views()
STEP_TITLES = [
    "Logits",
    "Probabilities",
    "Target probabilities",
    "Log probabilities",
    "Average log probability",
    "Negative average = loss",
]
RAGGED = "Ragged batch (padding)"


def heading(page, step: int):
    return page.get_by_role("heading", name=f"Step {step} of 6: {STEP_TITLES[step - 1]}")


@pytest.fixture(scope="module")
def book_summary(core_model):
    """The book example as core computes it: the values each step must announce."""
    from core.lessons.loss import compute_loss
    from core.lessons.report import summarize

    return summarize(compute_loss(core_model, BOOK_TEXTS))


# --- axe-core --------------------------------------------------------------------------------


def test_axe_every_view_on_the_book_example(new_page, server):
    """Every view, reached by the sidebar's links in one page as a learner moves: a view added to
    ui/lesson_nav.py's VIEWS is audited without editing this test."""
    page = new_page()
    open_url(page, server)
    found = {}
    for path, _ in VIEWS:
        if path:
            open_from_sidebar(page, path)
        else:  # the start page's heading names the app
            page.get_by_role("heading", name="LossLens", exact=False).first.wait_for()
        wait_for_app(page)
        found[path or "start"] = audit(page, f"view-{path or 'start'}")
    assert found == {path or "start": [] for path, _ in VIEWS}


STATES = [
    ("tokens-ragged-batch", "tokens", {"preset": RAGGED}, "Text 2"),
    ("per-token-ragged-batch", "per-token-loss", {"preset": RAGGED}, "Text 2"),
    ("figure-5-7-ragged-batch", "figure-5-7", {"preset": RAGGED, "step": 3}, "Step 3 of 6"),
    ("error-message", "", {"text": "Hi"}, None),
    ("book-notice", "figure-5-7", {"temperature": "2"}, "Not the book's example"),
]  # presentation mode's states: test_presentation_mode_on_a_projector


@pytest.mark.parametrize("state,path,params,marker", STATES, ids=[s[0] for s in STATES])
def test_axe_states(new_page, server, state, path, params, marker):
    page = new_page()
    open_url(page, server, path, **params)
    if marker is None:  # the error state: a message, no traceback
        page.locator('[data-testid="stAlert"]').first.wait_for()
    else:
        page.get_by_text(marker).first.wait_for()
    assert audit(page, state) == []


def test_axe_each_step_of_figure_5_7(new_page, server):
    """Every step, reached with Next as a learner does (one page, not six loads)."""
    page = new_page()
    open_url(page, server, "figure-5-7", step=1)
    found = {}
    for step in range(1, 7):
        if step > 1:
            page.get_by_role("button", name=re.compile("^Next")).click()
        heading(page, step).wait_for()
        wait_for_app(page)
        found[step] = audit(page, f"figure-5-7-step-{step}")
    assert found == {step: [] for step in range(1, 7)}


def test_axe_dataset_result(new_page, server):
    page = new_page()
    open_url(page, server, "dataset")
    compute = page.get_by_role("button", name="Compute", exact=True)
    if compute.count():  # another test on this server may have computed The Verdict already: kept
        compute.click()
    page.locator('[data-testid="stMetricLabel"]', has_text="Validation perplexity").wait_for(timeout=600_000)
    wait_for_app(page)
    page.get_by_text("Chart values as a table").first.click()  # the table is audited too
    wait_for_app(page)
    assert audit(page, "dataset-result") == []


# --- keyboard only ---------------------------------------------------------------------------

FOCUSED_JS = """() => { const e = document.activeElement; if (!e || e === document.body) return null;
  const cs = getComputedStyle(e);
  const shown = e.cloneNode(true);  // the visible text without icon ligatures ("arrow_forward")
  shown.querySelectorAll('[aria-hidden="true"]').forEach(x => x.remove());
  const name = e.getAttribute('aria-label') || (e.labels && e.labels[0] && e.labels[0].innerText)
    || shown.textContent || e.getAttribute('role') || e.tagName;
  return {name: name.trim().split('\\n')[0], tag: e.tagName, outline: cs.outlineStyle,
          width: parseFloat(cs.outlineWidth), sidebar: !!e.closest('[data-testid="stSidebar"]')}; }"""


def tab_to(page, name: str, limit: int = 120, key: str = "Tab", tag: str = "BUTTON") -> list[dict]:
    """Press Tab until the focused control's name starts with `name`; every stop on the way
    must show a focus ring."""
    seen = []
    for _ in range(limit):
        page.keyboard.press(key)
        focused = page.evaluate(FOCUSED_JS)
        if focused is None:
            continue
        seen.append(focused)
        assert focused["outline"] != "none" and focused["width"] >= 2, f"no visible focus ring on {focused}"
        if focused["name"].startswith(name) and focused["tag"] == tag:
            return seen
    raise AssertionError(f"{name!r} not reached with {key}: {[f['name'] for f in seen]}")


def focused_name(page) -> str:
    focused = page.evaluate(FOCUSED_JS)
    return focused["name"] if focused else ""


def live_text(page) -> list[str]:
    return [t.strip() for t in page.locator('[aria-live="polite"]').all_text_contents() if t.strip()]


def test_keyboard_only_walks_figure_5_7(new_page, server, book_summary):
    from ui.a11y import describe_step

    page = new_page()
    open_url(page, server, "figure-5-7")
    heading(page, 1).wait_for()
    # A sensible order: the sidebar's controls, then the step slider, then the step buttons.
    seen = tab_to(page, "Next")
    names = [f["name"] for f in seen]
    sidebar = [n for n, f in zip(names, seen, strict=True) if f["sidebar"]]
    assert any("Texts" in n for n in sidebar) and any("Presentation" in n for n in sidebar), names
    first_main = next(i for i, f in enumerate(seen) if not f["sidebar"] and f["tag"] != "A")
    assert all(f["sidebar"] or f["tag"] == "A" for f in seen[:first_main])
    assert "Previous" not in names  # disabled on step 1: skipped, not a dead stop
    for step in range(2, 7):
        page.keyboard.press("Enter")
        heading(page, step).wait_for()
        wait_for_app(page)
        announced = " ".join(live_text(page))
        assert f"Step {step} of 6: {STEP_TITLES[step - 1]}" in announced
        assert_said(describe_step(book_summary, step), announced)  # the step's values, from core
        if step < 6:
            assert focused_name(page).startswith("Next"), "focus left Next after the step changed"
    assert "10.7940" in " ".join(live_text(page))  # the book's loss, heard at the last step
    # Back one step with Shift+Tab and Space on Previous.
    tab_to(page, "Previous", key="Shift+Tab")
    page.keyboard.press("Space")
    heading(page, 5).wait_for()
    wait_for_app(page)
    # Play from the keyboard, and stop it again with the same key.
    tab_to(page, "Play")
    page.keyboard.press("Space")
    page.get_by_role("button", name=re.compile("^Pause")).wait_for(timeout=60_000)
    heading(page, 6).wait_for(timeout=60_000)
    page.get_by_role("button", name=re.compile("^Play")).wait_for(
        timeout=60_000
    )  # stops by itself at the end
    wait_for_app(page)
    assert focused_name(page).startswith("Play")
    page.keyboard.press("Space")  # plays again from step 1 ...
    page.get_by_role("button", name=re.compile("^Pause")).wait_for(timeout=60_000)
    assert focused_name(page).startswith("Pause")
    page.keyboard.press("Space")  # ... and Space stops it
    page.get_by_role("button", name=re.compile("^Play")).wait_for(timeout=60_000)
    wait_for_app(page)
    stopped_at = page.locator("li.ll-step.now").inner_text()
    page.wait_for_timeout(2 * PLAY_SECONDS * 1000 + 1000)  # a running Play would have moved on
    wait_for_app(page)
    assert page.locator("li.ll-step.now").inner_text() == stopped_at
    assert not stopped_at.startswith("6.")


def test_heatmap_details_reachable_by_keyboard(new_page, server, book_summary):
    page = new_page()
    open_url(page, server, "per-token-loss")
    page.locator(".ll-heat").first.wait_for()
    tab_to(page, "every (id", tag="SPAN")  # the first token of text 1
    page.keyboard.press("Tab")
    target = book_summary["texts"][0]["positions"][0]
    name = focused_name(page)
    assert name.startswith(f"{target['target']} (id {target['target_id']})"), name
    assert "surprisal" in name and "probability" in name and "rank" in name
    # The same details show on screen at keyboard focus, not only on mouse hover.
    tip = page.evaluate("() => getComputedStyle(document.activeElement, '::after').content")
    assert "surprisal" in tip and "rank" in tip


# --- screen reader ---------------------------------------------------------------------------


def test_screen_reader_hears_the_steps_in_order(new_page, server, book_summary):
    from ui import formats

    page = new_page()
    open_url(page, server, "figure-5-7")
    facts = [
        "[2, 3, 50,257]",
        "[2, 3, 50,257], rows sum to 1",
        "6 values, one per target",
        "[6]",
        formats.num(book_summary["avg_log_probas"]),
        formats.num(book_summary["neg_avg_log_probas"]),
    ]
    for step in range(1, 7):
        if step > 1:
            page.get_by_role("button", name=re.compile("^Next")).click()
        heading(page, step).wait_for()
        wait_for_app(page)
        snapshot = page.locator("ol.ll-flow").aria_snapshot()
        items = [
            " ".join(
                re.sub(r"^- (text|code): ", "", line.strip()).strip("'\"")
                for line in block.splitlines()
                if line.strip()
            )
            for block in snapshot.split("- listitem:")[1:]
        ]
        assert 'list "The six steps of figure 5.7"' in snapshot
        assert len(items) == step, snapshot  # only the steps reached: later ones would give the loss away
        for k, item in enumerate(items, 1):
            assert item.startswith(f"{k}. {STEP_TITLES[k - 1]} {facts[k - 1]}"), item
            assert ("current step" in item) == (k == step), item
        # In reading order: the list, the step's heading, its code, the chart's description.
        main = page.locator('[data-testid="stMain"]').aria_snapshot()
        order = [
            main.index("The six steps"),
            main.index(f"Step {step} of 6: {STEP_TITLES[step - 1]}"),
            main.index("Chart values as a table"),
        ]
        assert order == sorted(order), main
    assert book_summary["neg_avg_log_probas"] is not None
    assert "10.7940" in page.locator('[data-testid="stMain"]').aria_snapshot()


def test_live_regions_announce_the_step_and_the_new_loss(new_page, server, core_model):
    page = new_page()
    open_url(page, server, "tokens")
    # On the tokens view the only announcement is the loss: short, not the whole page.
    regions = page.locator("[aria-live]")
    assert live_text(page) == ["Loss 10.7940, perplexity 48,726, over 6 predicted tokens."]
    assert (
        page.locator(
            '[data-testid="stMain"][aria-live], [data-testid="stMainBlockContainer"][aria-live]'
        ).count()
        == 0
    )
    texts = ["The projector is on", "every learner can hear it"]
    loss, perplexity = expected_loss(core_model, texts)
    set_text(page, "\n".join(texts))
    wait_for_metric(page, LOSS_LABEL, loss)
    predicted = sum(len(core_model_tokens(t)) - 1 for t in texts)
    announced = live_text(page)
    assert announced == [
        f"Loss {loss:.4f}, perplexity {format_perplexity(perplexity)}, over {predicted} predicted tokens."
    ]
    assert regions.count() == 1


def core_model_tokens(text: str) -> list[int]:
    from core.runtime.tokenizer_files import get_tokenizer

    return get_tokenizer().encode(text, allowed_special="all")


# --- motion, zoom, projector -----------------------------------------------------------------

DURATIONS_JS = """() => { let worst = 0;
  for (const e of document.querySelectorAll('[data-testid="stApp"] *')) { const cs = getComputedStyle(e);
    for (const v of (cs.transitionDuration + ',' + cs.animationDuration).split(','))
      worst = Math.max(worst, parseFloat(v) || 0); }
  return worst; }"""


def test_play_respects_reduced_motion(new_page, server):
    moving = new_page()
    open_url(moving, server, "figure-5-7")
    assert moving.evaluate(DURATIONS_JS) > 0  # Streamlit animates by default: the check can fail
    page = new_page()
    page.emulate_media(reduced_motion="reduce")
    open_url(page, server, "figure-5-7")
    heading(page, 1).wait_for()
    assert page.evaluate(DURATIONS_JS) == 0
    page.get_by_role("button", name=re.compile("^Play")).click()
    heading(page, 3).wait_for(timeout=60_000)
    assert page.evaluate(DURATIONS_JS) == 0  # the steps change in place: no transition, no animation
    page.get_by_role("button", name=re.compile("^Pause")).click()
    page.get_by_role("button", name=re.compile("^Play")).wait_for(timeout=60_000)


# Collapsed, Streamlit's sidebar is 0 px wide and moved off the left edge.
SIDEBAR_COLLAPSED_JS = """() => {
  const r = document.querySelector('[data-testid="stSidebar"]').getBoundingClientRect();
  return r.width < 5 || r.right <= 0; }"""
NO_SIDEWAYS_SCROLL_JS = (
    "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1"
)


def test_200_percent_zoom_at_1280x720(new_page, server):
    # 200 % zoom in a 1280x720 window is a 640x360 CSS-pixel viewport at device scale 2.
    page = new_page(viewport={"width": 640, "height": 360}, device_scale_factor=2)
    found = {}
    for path, params in (("figure-5-7", {"step": 3}), ("tokens", {}), ("per-token-loss", {})):
        open_url(page, server, path, **params)
        wait_for_view(page, path)
        assert page.evaluate(NO_SIDEWAYS_SCROLL_JS), f"{path} scrolls sideways at 200 %"
        if path == "figure-5-7":
            heading(page, 3).scroll_into_view_if_needed()
            assert heading(page, 3).is_visible()
            nxt = page.get_by_role("button", name=re.compile("^Next"))
            nxt.scroll_into_view_if_needed()
            box = nxt.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 640
            nxt.click()
            heading(page, 4).wait_for()
            wait_for_app(page)
            assert page.evaluate(NO_SIDEWAYS_SCROLL_JS)
        found[path] = audit(page, f"zoom-200-{path}")
    assert found == dict.fromkeys(["figure-5-7", "tokens", "per-token-loss"], [])


def _projector_checks(page) -> None:
    page.locator('[data-testid="stMainBlockContainer"] h2').first.wait_for()
    # The sidebar is collapsed, and can be reopened.
    page.get_by_role("button", name="Expand sidebar").wait_for()
    page.wait_for_function(SIDEBAR_COLLAPSED_JS)
    contrast = lowest_contrast(page)
    assert contrast["count"] > 10
    low = [c for c in contrast["lowest"] if c["ratio"] < 7]
    assert not low, f"text below 7:1 in presentation mode: {low}"
    assert page.evaluate(NO_SIDEWAYS_SCROLL_JS)


def test_presentation_mode_on_a_projector(new_page, server):
    """The lesson on a 1280x720 projector, walked by the pages' Next links as a presenter does:
    each view, and figure 5.7 at steps 1, 3 and 6, passes the projector checks and axe."""
    page = new_page(viewport={"width": 1280, "height": 720})
    open_url(page, server, "", presentation="true")
    found = {}
    for path in ("", "tokens", "probabilities", "figure-5-7", "cross-entropy"):
        if path:
            page.get_by_role("link", name=re.compile("^Next: ")).click()
            page.wait_for_url(f"**/{path}?*presentation=true*")
            wait_for_view(page, path)
            wait_for_app(page)
        if path != "figure-5-7":
            _projector_checks(page)
            found[path or "start"] = audit(page, f"presentation-{path or 'start'}")
            continue
        heading(page, 1).wait_for()  # a new visit starts at step 1
        for step in range(1, 7):
            if step > 1:
                page.get_by_role("button", name=re.compile("^Next")).click()
                heading(page, step).wait_for()
                wait_for_app(page)
            if step in (1, 3, 6):
                _projector_checks(page)
        found[path] = audit(page, "presentation-figure-5-7-step-6")
    # Beyond the lesson, so not on its Next path: from a link.
    open_url(page, server, "per-token-loss", presentation="true")
    page.get_by_text("Text 1").first.wait_for()
    _projector_checks(page)
    found["per-token-loss"] = audit(page, "presentation-per-token-loss")
    assert found == dict.fromkeys(
        ["start", "tokens", "probabilities", "figure-5-7", "cross-entropy", "per-token-loss"], []
    )
