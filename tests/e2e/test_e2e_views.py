"""The app as a person uses it: the book's numbers, edits, figure 5.7, every view, links, presentation."""

from __future__ import annotations

import contextlib
import re
import urllib.parse

import pytest

from core.lessons.report import format_perplexity
from devtools.harness import (
    LOSS_LABEL,
    PERPLEXITY_LABEL,
    expected_loss,
    metric_value,
    set_text,
    text_box,
    wait_for_app,
    wait_for_metric,
)

from .e2e_helpers import open_from_sidebar, open_url

BOOK_TEXT = "every effort moves you\nI really like chocolate"
# (URL path, whether the view draws Plotly charts)
VIEWS = [
    ("", False),  # the start page, at "/": the lesson's plan and the batch's numbers
    ("tokens", False),
    ("probabilities", True),
    ("figure-5-7", True),
    ("cross-entropy", False),
    ("per-token-loss", False),
]
# Pages without the loss metrics on top; they must still open cleanly.
OTHER_PAGES = ["dataset", "training", "compare"]


def step_heading(page, step: int):
    return page.get_by_role("heading", name=f"Step {step} of 6")


def test_opens_on_the_book_example_with_the_books_numbers(page):
    assert text_box(page).input_value() == BOOK_TEXT
    assert metric_value(page, LOSS_LABEL) == "10.7940"
    assert metric_value(page, PERPLEXITY_LABEL) == "48,726"  # the book: 48725.8203
    # The tokens view shows the chips of both texts: "every" and " chocolate" among them.
    chips = page.locator(".ll-chip .p")
    pieces = chips.all_inner_texts()
    assert "every" in pieces
    assert any("chocolate" in p for p in pieces)


def test_typing_new_text_updates_the_numbers(page, core_model):
    texts = ["The quick brown fox jumps over the lazy dog", "Hello world, this is a test"]
    loss, perplexity = expected_loss(core_model, texts)
    set_text(page, "\n".join(texts))
    wait_for_metric(page, LOSS_LABEL, loss)
    assert metric_value(page, PERPLEXITY_LABEL) == format_perplexity(perplexity)
    assert f"{loss:.4f}" != "10.7940"
    # The text travels in the URL, so the state can be shared.
    assert "quick" in urllib.parse.unquote_plus(page.url)


def test_next_walks_figure_5_7_to_the_final_loss(new_page, server):
    page = new_page()
    open_url(page, server, "figure-5-7")
    step_heading(page, 1).wait_for()
    assert page.get_by_role("button", name="Previous").is_disabled()
    for step in range(2, 7):
        page.get_by_role("button", name="Next").click()
        step_heading(page, step).wait_for()
        wait_for_app(page)
        assert page.locator(".ll-step.now").inner_text().startswith(f"{step}.")
        assert page.locator(".js-plotly-plot").count() >= 1
        assert f"step={step}" in page.url
    assert page.get_by_role("button", name="Next").is_disabled()
    assert metric_value(page, "neg_avg_log_probas") == "10.7940"
    assert metric_value(page, LOSS_LABEL) == "10.7940"
    # The printed values are the book's: log_probas then their negated mean.
    code = " ".join(page.locator('[data-testid="stCode"]').all_inner_texts())
    assert "neg_avg_log_probas: tensor(10.7940)" in code
    page.get_by_role("button", name="Previous").click()
    step_heading(page, 5).wait_for()


def test_play_runs_figure_5_7_to_the_end(new_page, server):
    page = new_page()
    open_url(page, server, "figure-5-7")
    step_heading(page, 1).wait_for()
    page.get_by_role("button", name="Play").click()
    page.get_by_role("button", name="Pause").wait_for(timeout=60_000)
    step_heading(page, 6).wait_for(timeout=60_000)
    page.get_by_role("button", name="Play").wait_for(timeout=30_000)  # stops by itself at the end
    wait_for_app(page)
    assert metric_value(page, LOSS_LABEL) == "10.7940"


def test_each_view_renders(new_page, server):
    """The start page from its URL, then every other view by the sidebar's links in one page."""
    page = new_page()
    open_url(page, server)
    for path, has_charts in [*VIEWS, *((p, None) for p in OTHER_PAGES)]:
        if path:
            open_from_sidebar(page, path)
        wait_for_app(page)
        assert page.locator('[data-testid="stMainBlockContainer"] h2').first.inner_text().strip(), path
        if has_charts is None:  # the pages without the loss metrics on top: open cleanly
            assert "does not seem to exist" not in page.locator("body").inner_text(), path
            continue
        if has_charts:
            plot = page.locator(".js-plotly-plot").first
            plot.wait_for()
            assert plot.bounding_box()["height"] > 100, path
            assert plot.locator("g.point, g.trace, path.point").count() >= 1, path  # the bars were drawn
        if path != "cross-entropy":
            assert metric_value(page, LOSS_LABEL) == "10.7940", path


def test_a_shared_url_reopens_the_same_view_step_and_text(new_page, server, core_model):
    texts = ["Shared links keep the state", "for the whole workshop"]
    loss, _ = expected_loss(core_model, texts)
    first = new_page()
    open_url(first, server, "figure-5-7", text="\n".join(texts), step=4)
    step_heading(first, 4).wait_for()
    wait_for_metric(first, LOSS_LABEL, loss)
    link = first.url
    # Somebody else opens the link in a fresh browser.
    second = new_page()
    second.goto(link)
    wait_for_app(second)
    step_heading(second, 4).wait_for()
    assert text_box(second).input_value() == "\n".join(texts)
    wait_for_metric(second, LOSS_LABEL, loss)
    assert second.locator(".ll-step.now").inner_text().startswith("4.")


def _font_px(page, selector: str) -> float:
    return page.locator(selector).first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")


def test_presentation_mode_enlarges_and_hides_chrome(new_page, server):
    page = new_page()
    open_url(page, server, "figure-5-7")
    normal_heading = _font_px(page, '[data-testid="stMainBlockContainer"] h2')
    assert page.locator('[data-testid="stHeader"]').is_visible()
    page.get_by_text("Presentation mode").click()
    wait_for_app(page)
    page.wait_for_function(
        "() => !location.search.includes('presentation=false') && location.search.includes('presentation')"
    )
    assert _font_px(page, '[data-testid="stMainBlockContainer"] h2') > normal_heading
    # The sidebar collapses for the projector; its expand button stays, to get the controls back.
    page.get_by_role("button", name="Expand sidebar").wait_for()
    page.wait_for_function("""() => { const r = document.querySelector('[data-testid="stSidebar"]')
        .getBoundingClientRect(); return r.width < 5 || r.right <= 0; }""")
    # Step at a time: the figure still walks with Next.
    page.get_by_role("button", name="Next").click()
    step_heading(page, 2).wait_for()
    # The link carries presentation mode to the projector's browser.
    projector = new_page()
    projector.goto(page.url)
    wait_for_app(projector)
    step_heading(projector, 2).wait_for()
    projector.wait_for_function("""() => { const r = document.querySelector('[data-testid="stSidebar"]')
        .getBoundingClientRect(); return r.width < 5 || r.right <= 0; }""")


def test_downloads_hold_the_values_shown(page):
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").first.click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    lines = open(download.path(), encoding="utf-8").read().splitlines()
    assert len(lines) == 1 + 6  # header + the book example's 6 predictions
    assert "effort" in lines[1] and "3626" in lines[1]
    with page.expect_download() as info:
        page.get_by_role("button", name="Download JSON").first.click()
    import json

    data = json.load(open(info.value.path(), encoding="utf-8"))
    assert "every" in json.dumps(data, ensure_ascii=False)
    assert page.locator('[data-testid="stDownloadButtonError"]').count() == 0


# --- the lesson, walked by its Next links only -------------------------------------------------

# Each lesson view's key figure: what must start inside the first screen.
KEY_FIGURE = {
    "LossLens": 'button:has-text("Begin")',
    "Tokens": ".ll-shift",
    "Next-token probabilities": ".js-plotly-plot",
    "Figure 5.7, step by step": ".js-plotly-plot",
    "Cross entropy and perplexity": ".js-plotly-plot",
    # Its losses where an earlier visit computed them (they are kept for every visitor), else Compute.
    "Dataset losses (§5.1.3)": 'button:has-text("Compute"), [data-testid="stMetric"]',
    "Training (§5.2)": '[data-testid="stMainBlockContainer"] button[kind="primary"]',
}
# Text cut off: a box narrower than its text (an ellipsis, or text clipped at its edge).
CUT_OFF_JS = """() => {
  const cut = [];
  for (const e of document.querySelectorAll('[data-testid="stMain"] *')) {
    const cs = getComputedStyle(e);
    if (!e.offsetParent || !e.textContent.trim() || e.children.length > 0) continue;
    if (e.closest('.ll-sr') || e.getBoundingClientRect().width <= 2) continue;  // for screen readers only
    if (e.closest('.js-plotly-plot, [data-testid="stCode"], .ll-tablewrap, [data-testid="stDataFrame"]'))
      continue;
    const clips = cs.textOverflow === 'ellipsis' || cs.overflowX === 'hidden' || cs.overflow === 'hidden';
    if (clips && e.scrollWidth > e.clientWidth + 1) cut.push(e.textContent.trim().slice(0, 60));
  }
  // A metric's label and value as wholes: any of their boxes narrower than the text is a cut.
  for (const e of document.querySelectorAll('[data-testid="stMetricLabel"], [data-testid="stMetricValue"]'))
    for (const x of [e, ...e.querySelectorAll('*')])
      if (x.offsetParent && x.scrollWidth > x.clientWidth + 1) cut.push(e.textContent.trim().slice(0, 60));
  return cut; }"""


@pytest.mark.parametrize(
    "width,height,presentation",
    [(1280, 720, True), (1920, 1080, True), (1440, 900, False)],
    ids=["projector", "projector-1080p", "laptop"],
)
def test_the_lesson_walks_from_start_to_training_by_next_alone(new_page, server, width, height, presentation):
    from ui.lesson_nav import LESSON

    page = new_page(viewport={"width": width, "height": height})
    open_url(page, server, "", **({"presentation": "true"} if presentation else {}))
    titles = ["LossLens", *[v.title for v in LESSON[1:]]]
    if presentation:  # the projector's type scales with its width: the same layout at 720p and 1080p
        size = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert size == pytest.approx(22 * width / 1280, abs=0.5)
    if not presentation:  # the model picker shows the whole name of the book's model
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
        fits = "e => e.scrollWidth <= e.clientWidth"
        with contextlib.suppress(Exception):  # the sidebar may still be sliding open to its width
            page.wait_for_function(fits, arg=picker.element_handle(), timeout=5_000)
        assert picker.evaluate(fits), picker.input_value()
    for n, title in enumerate(titles):
        heading = page.locator('[data-testid="stMainBlockContainer"] h2').first
        heading.wait_for()
        assert heading.inner_text().startswith(title), (n, heading.inner_text())
        key = page.locator(KEY_FIGURE[title]).first
        key.wait_for()
        wait_for_app(page)
        box = key.bounding_box()
        assert box and 0 <= box["y"] < height, f"{title}: the key figure starts at {box} ({width}x{height})"
        assert page.evaluate(CUT_OFF_JS) == [], title
        if presentation:  # the sidebar stays collapsed: the links on the page are the way on
            assert page.evaluate(
                """() => { const r = document.querySelector('[data-testid="stSidebar"]')
                .getBoundingClientRect(); return r.width < 5 || r.right <= 0; }"""
            )
        nxt = page.get_by_role("link", name=re.compile("^Next: "))
        if n + 1 == len(titles):
            assert nxt.count() == 0
            assert page.get_by_role("link", name=f"← Previous: {LESSON[-2].title}").count() == 1
            break
        assert nxt.count() == 1, title
        assert nxt.inner_text().strip() == f"Next: {LESSON[n + 1].title} →"
        nxt.focus()  # by keyboard: Enter on the focused link
        page.keyboard.press("Enter")
        wait_for_app(page)
        assert ("presentation=true" in page.url) == presentation
