"""Hostile input typed into the app: shown literally everywhere, never run as code or style."""

from __future__ import annotations

import pytest

from devtools.harness import (
    HOSTILE_LINES,
    LOSS_LABEL,
    alerts,
    expected_loss,
    injected,
    set_text,
    text_box,
    wait_for_app,
    wait_for_metric,
)

VIEW_LINKS = [
    "Tokens",
    "Next-token probabilities",
    "Figure 5.7, step by step",
    "Cross entropy",
    "Per-token loss",
]


def contains_run(items: list[str], run: list[str]) -> bool:
    """`run` occurs in `items` as consecutive elements (the chips of one text, in order)."""
    return any(items[i : i + len(run)] == run for i in range(len(items) - len(run) + 1))


def open_view(page, name: str) -> None:
    # The sidebar's navigation: a view's Previous/Next links also carry its neighbours' names.
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=name).click()
    wait_for_app(page)
    page.get_by_role("heading", name=name).first.wait_for()


@pytest.fixture(scope="module")
def hostile_expected(core_model):
    from core.lessons.tokens import token_pieces
    from core.runtime.tokenizer_files import encode, get_tokenizer

    tok = get_tokenizer()
    loss, _ = expected_loss(core_model, HOSTILE_LINES)
    pieces = [[p.display for p in token_pieces(encode(line, tok), tok)] for line in HOSTILE_LINES]
    return loss, pieces


def test_hostile_text_is_shown_literally_in_every_view(page, hostile_expected):
    loss, pieces = hostile_expected
    set_text(page, "\n".join(HOSTILE_LINES))
    # The numbers are core's for exactly these characters (zero-width and special token included).
    wait_for_metric(page, LOSS_LABEL, loss)
    assert injected(page) == []

    # Tokens: each text printed as it is, and its chips are core's pieces, as text.
    main = page.locator('[data-testid="stMainBlockContainer"]')
    shown = main.locator('[data-testid="stText"]').all_inner_texts()
    for line in HOSTILE_LINES:
        assert line in shown, (line, shown)
    chips = main.locator(".ll-chip .p").all_text_contents()
    for n, expected in enumerate(pieces):
        assert contains_run(chips, expected), (HOSTILE_LINES[n], expected, chips)

    # Per-token loss: the heatmap spells the same pieces (the first token, then every target).
    open_view(page, "Per-token loss")
    heat = page.locator(".ll-heat")
    assert heat.count() == len(HOSTILE_LINES)
    for n, expected in enumerate(pieces):
        assert heat.nth(n).locator("span").all_text_contents() == expected
    assert injected(page) == []

    # Charts: Plotly draws the pieces as text (no "&lt;" entity, no markup eaten).
    open_view(page, "Figure 5.7, step by step")
    page.locator(".js-plotly-plot").first.wait_for()
    ticks = " ".join(page.locator(".js-plotly-plot .xtick text").all_text_contents())
    assert "<" in ticks and "&lt;" not in ticks and "&amp;" not in ticks, ticks
    assert "img" in ticks  # (Plotly skips some ticks when they crowd: only the first is sure)
    assert injected(page) == []

    open_view(page, "Next-token probabilities")
    page.locator(".js-plotly-plot").first.wait_for()
    assert injected(page) == []
    open_view(page, "Cross entropy")
    assert injected(page) == []

    # Still responsive: a normal edit updates the numbers.
    set_text(page, "every effort moves you\nI really like chocolate")
    wait_for_metric(page, LOSS_LABEL, "10.7940")


def test_hostile_text_from_a_link(new_page, server, hostile_expected):
    """The same payload arriving in a shared URL is as harmless as typed text."""
    import urllib.parse

    loss, _ = hostile_expected
    page = new_page()
    query = urllib.parse.urlencode({"text": "\n".join(HOSTILE_LINES)}, quote_via=urllib.parse.quote)
    page.goto(f"{server.url}/per-token-loss?{query}")
    wait_for_app(page)
    wait_for_metric(page, LOSS_LABEL, loss)
    assert text_box(page).input_value() == "\n".join(HOSTILE_LINES)
    assert injected(page) == []


def test_single_token_hostile_text_gets_a_literal_message(page):
    for text in ["**", "$", "#", "`", "<|endoftext|>"]:  # one after the other, in one visit
        set_text(page, text)
        page.locator('[data-testid="stAlert"]', has_text="single token").wait_for()
        message = alerts(page)
        assert repr(text.strip()) in message, (text, message)
        assert injected(page) == [], text
        set_text(page, "every effort moves you")
        page.locator('[data-testid="stMetric"]').first.wait_for()
        assert "single token" not in alerts(page), text


def test_a_100_kb_paste_is_refused_with_a_clear_message(page, core_model):
    paste = ("All work and no play makes Jack a dull boy. " * 2300)[:100_000]
    set_text(page, paste)
    page.locator('[data-testid="stAlert"]', has_text="tokens").wait_for()
    message = alerts(page)
    assert "at most 256" in message and "Shorten it" in message, message
    assert page.locator('[data-testid="stMetricLabel"]', has_text=LOSS_LABEL).count() == 0
    # Still responsive, and a new text computes again.
    texts = ["Shorter is better", "for a model with 256 positions"]
    loss, _ = expected_loss(core_model, texts)
    set_text(page, "\n".join(texts))
    wait_for_metric(page, LOSS_LABEL, loss)


def test_a_paste_over_the_character_limit_is_refused(page):
    set_text(page, "x" * 250_000)
    page.locator('[data-testid="stAlert"]', has_text="characters").wait_for()
    assert "200,000" in alerts(page)
    set_text(page, "every effort moves you")
    page.locator('[data-testid="stMetric"]').first.wait_for()


def test_too_many_lines_are_refused(page):
    set_text(page, "\n".join(f"line number {n}" for n in range(20)))
    page.locator('[data-testid="stAlert"]', has_text="16").wait_for()
    assert "at most 16" in alerts(page)
