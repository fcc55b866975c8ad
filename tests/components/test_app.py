"""The Streamlit app through AppTest: real script runs, the real model, no browser.

Every expected number is computed here with `core` on the same input, never hard-coded
(except the book's own contract).
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from conftest import BOOK_TEXTS, ROOT, VERDICT_PATH
from streamlit.testing.v1 import AppTest

from core.lessons.loss import compute_loss
from core.lessons.report import STEPS, format_perplexity

TIMEOUT = 180


pytestmark = pytest.mark.usefixtures("app_env")


def app(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    if page:
        at.switch_page(f"components/{page}.py").run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} in {[m.label for m in at.metric]}"
    return values[0]


def errors(at: AppTest) -> str:
    """The error messages as the page shows them (Markdown backslash escapes removed)."""
    return " ".join(re.sub(r"\\(.)", r"\1", e.value) for e in at.error)


def html_bodies(at: AppTest) -> str:
    return "\n".join(e.proto.body for e in at.get("html"))


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def set_text(at: AppTest, text: str) -> AppTest:
    at.text_area(key="text").set_value(text).run()
    return at


def test_book_preset_shows_the_books_numbers():
    at = app()
    assert at.selectbox(key="preset").value == "Book example (figure 5.7)"
    assert at.text_area(key="text").value == "\n".join(BOOK_TEXTS)
    assert metric(at, "Loss (cross entropy)") == "10.7940"
    assert metric(at, "Perplexity") == "48,726"  # the book: 48725.8203 (5 significant digits)
    assert metric(at, "Predicted tokens") == "6"
    assert not at.error


def test_every_view_renders_the_book_example():
    at = app()
    for page in ("tokens", "probabilities", "figure57", "cross_entropy", "per_token"):
        at.switch_page(f"components/{page}.py").run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
        assert metric(at, "Loss (cross entropy)") == "10.7940"


def test_changing_the_text_changes_the_loss(model):
    at = app()
    texts = ["The cat sat on the mat", "Hello world, how are you"]
    set_text(at, "\n".join(texts))
    expected = compute_loss(model, texts)
    assert metric(at, "Loss (cross entropy)") == f"{float(expected.loss):.4f}"
    assert metric(at, "Perplexity") == format_perplexity(expected.perplexity)
    assert metric(at, "Predicted tokens") == str(expected.num_tokens)
    assert at.selectbox(key="preset").value == "Custom text"


def test_choosing_a_preset_sets_its_text(model):
    at = app()
    at.selectbox(key="preset").set_value("Ragged batch (padding)").run()
    texts = at.text_area(key="text").value.split("\n")
    assert texts == ["Hi there", "The quick brown fox jumps over the lazy dog"]
    assert metric(at, "Loss (cross entropy)") == f"{float(compute_loss(model, texts).loss):.4f}"


def test_temperature_rescales_the_logits(model):
    at = app()
    at.number_input(key="temperature").set_value(0.5).run()
    expected = compute_loss(model, BOOK_TEXTS, temperature=0.5)
    assert metric(at, "Loss (cross entropy)") == f"{float(expected.loss):.4f}"
    assert metric(at, "Loss (cross entropy)") != "10.7940"


@pytest.mark.slow
def test_seed_rebuilds_the_untrained_model():
    from core.models.registry import load_model

    at = app()
    at.number_input(key="seed").set_value(7).run()
    expected = compute_loss(load_model("untrained-124m", 7), BOOK_TEXTS)
    assert metric(at, "Loss (cross entropy)") == f"{float(expected.loss):.4f}"
    assert metric(at, "Loss (cross entropy)") != "10.7940"


def test_top_k_sets_the_number_of_bars(model):
    at = app("probabilities")
    at.number_input(key="top_k").set_value(3).run()
    (spec,) = plotly_specs(at)
    bars = spec["data"][0]
    result = compute_loss(model, BOOK_TEXTS, top_k=3)
    target_in_top = int(result.batch.targets[0, 0]) in result.topk_ids[0, 0].tolist()
    assert len(bars["y"]) == 3 + (0 if target_in_top else 1)
    assert bars["x"][:3] == pytest.approx(result.topk_probas[0, 0].tolist())
    # The target's own bar (rank 258 for "every" -> " effort") carries its true probability.
    assert bars["x"][-1] == pytest.approx(float(result.target_probas[0, 0]))
    assert metric(at, "Target rank") == f"{int(result.target_ranks[0, 0]):,} of 50,257"


def test_figures_stay_small_for_a_long_text(model):
    text = " ".join(["word"] * 250)
    at = app("probabilities")
    at.number_input(key="top_k").set_value(50).run()
    set_text(at, text)
    for page in ("probabilities", "figure57", "per_token"):
        at.switch_page(f"components/{page}.py").run()
        assert not at.exception
        for e in at.get("plotly_chart"):
            assert len(e.proto.spec) < 200_000, (page, len(e.proto.spec))


def test_step_buttons_and_slider(model):
    at = app("figure57")
    assert at.select_slider(key="step").value == 1
    at.button[1].click().run()  # Next
    assert at.select_slider(key="step").value == 2
    at.select_slider(key="step").set_value(4).run()
    assert any(h.value == f"Step 4 of 6: {STEPS[3][1]}" for h in at.subheader)
    assert any(c.value == STEPS[3][2] for c in at.code)
    at.button[0].click().run()  # Previous
    assert at.select_slider(key="step").value == 3
    at.select_slider(key="step").set_value(6).run()
    result = compute_loss(model, BOOK_TEXTS)
    assert metric(at, "neg_avg_log_probas (by hand, naive)") == f"{float(result.neg_avg_log_probas):.4f}"
    assert [b.label for b in at.button][:3] == ["Previous", "Next", "Play"]
    assert at.button[1].disabled


@pytest.mark.slow
def test_play_runs_to_the_last_step():
    at = app("figure57", step=4)
    at.button[2].click().run()  # Play: 4 -> 5 -> 6, then stops
    assert at.select_slider(key="step").value == 6
    assert at.button[2].label == "Play"


def test_url_state_round_trip(model):
    texts = ["a shared link", "opens the same view"]
    at = app("figure57", text="\n".join(texts), top_k=7, temperature=2.0, step=5, presentation="true")
    assert at.text_area(key="text").value == "\n".join(texts)
    assert at.number_input(key="top_k").value == 7
    assert at.number_input(key="temperature").value == 2.0
    assert at.select_slider(key="step").value == 5
    assert at.toggle(key="presentation").value is True
    expected = compute_loss(model, texts, top_k=7, temperature=2.0)
    assert any(
        c.value.startswith("torch.mean(") and f"{float(expected.avg_log_probas):.4f}" in c.value
        for c in at.code
    )
    # ...and a change made by the app goes back into the URL (a browser writes its own edits).
    at.selectbox(key="preset").set_value("Book, first text only").run()
    assert at.query_params["text"] in ("every effort moves you", ["every effort moves you"])


def test_a_link_with_only_a_preset_opens_its_text():
    at = app(preset="Book, first text only")
    assert at.text_area(key="text").value == "every effort moves you"
    assert metric(at, "Predicted tokens") == "3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Enter at least one text"),
        ("   \n  ", "Enter at least one text"),
        ("hello", "single token"),
        (" ".join(["word"] * 300), "reads at most 256 tokens"),
        ("\n".join(f"text number {i}" for i in range(17)), "at most 16"),
        ("x" * 200_001, "characters"),
    ],
)
def test_bad_input_gives_a_message_not_a_traceback(text, message):
    at = app()
    set_text(at, text)
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert message in errors, errors
    at.switch_page("components/figure57.py").run()
    assert not at.exception and at.error


def test_special_tokens_emoji_and_markup_are_shown_literally(model):
    text = "<|endoftext|> <script>alert(1)</script> $x$ **bold** 😀"
    at = app("tokens")
    set_text(at, text)
    assert not at.exception and not at.error
    body = html_bodies(at)
    # (The app's own scroll-to-top script comes only with a change of view, not with an edit.)
    assert "<script" not in body and "</script" not in body
    assert "␣&lt;" in body and "&lt;/" in body  # the tokens " <" and "</", escaped
    assert "&lt;|endoftext|&gt;" in body and "50256" in body
    assert "<0xF0>" not in body and "&lt;0xF0&gt;" in body  # emoji bytes as visible byte chips
    assert any(t.value == text for t in at.text)  # the raw text, as plain text
    assert metric(at, "Loss (cross entropy)") == f"{float(compute_loss(model, [text]).loss):.4f}"
    at.switch_page("components/per_token.py").run()
    assert "<script>alert" not in html_bodies(at) and "alert(1)</script" not in html_bodies(at)


def test_cross_entropy_view_compares_manual_and_builtin(model):
    at = app("cross_entropy")
    result = compute_loss(model, BOOK_TEXTS)
    assert metric(at, "Six steps by hand (naive)") == f"{float(result.neg_avg_log_probas):.4f}"
    assert metric(at, "F.cross_entropy (stable)") == f"{float(result.loss):.4f}"
    shapes = " ".join(c.value for c in at.code)
    assert "[2, 3, 50257]  ->  logits_flat:  [6, 50257]" in shapes
    assert "[2, 3]        ->  targets_flat: [6]" in shapes
    low = compute_loss(model, BOOK_TEXTS, temperature=0.001)
    assert math.isinf(float(low.neg_avg_log_probas))
    assert metric(at, "By hand (naive), T = 0.001") == "∞"
    assert metric(at, "F.cross_entropy (stable), T = 0.001") == f"{float(low.loss):.4f}"


def _pasted_corpus() -> tuple[str, AppTest]:
    """The Dataset view on 3000 characters of The Verdict, pasted, in windows of 32 tokens."""
    text = VERDICT_PATH.read_text(encoding="utf-8")[:3000]
    at = app("dataset")
    at.radio(key="corpus").set_value("Paste text").run()
    at.text_area(key="corpus_text").set_value(text).run()
    at.number_input(key="ds_len").set_value(32).run()
    at.number_input(key="ds_stride").set_value(32).run()
    return text, at


@pytest.mark.slow
def test_dataset_view_pasted_text_and_bad_corpus(model):
    from core.lessons.dataset import evaluate_dataset
    from core.models.loaders import LoaderSettings

    text, at = _pasted_corpus()
    at.button(key="ds_compute").click().run()
    assert not at.exception and not at.error
    expected = evaluate_dataset(model, text, LoaderSettings(context_length=32, stride=32))
    assert metric(at, "Training loss") == f"{expected.train_loss:.4f}"
    assert metric(at, "Validation loss") == f"{expected.val_loss:.4f}"

    at.text_area(key="corpus_text").set_value("binary\x00data " * 20).run()
    assert not at.exception
    assert "NUL" in " ".join(e.value for e in at.error)


@pytest.mark.slow
def test_dataset_view_fast_mode_only_where_offered_and_how_far_from_float32(model, monkeypatch):
    from core.lessons.dataset import evaluate_dataset
    from core.models.loaders import LoaderSettings
    from core.runtime.precision import FORCE_ENV, bf16_unavailable

    monkeypatch.delenv(FORCE_ENV, raising=False)
    reason = bf16_unavailable("cpu")
    at = app("dataset")
    assert at.toggle(key="ds_fast").disabled == (reason is not None)
    captions = " ".join(c.value for c in at.caption)
    assert (f"Fast mode is not offered: {reason}." in captions) == (reason is not None)

    monkeypatch.setenv(FORCE_ENV, "1")  # offered anyway, so that this CPU runs it too
    text, at = _pasted_corpus()
    at.number_input(key="ds_batches").set_value(2).run()
    assert not at.toggle(key="ds_fast").disabled
    at.toggle(key="ds_fast").set_value(True).run()
    at.button(key="ds_compute").click().run()
    assert not at.exception and not at.error
    # On the app's one thread (app.py): oneDNN's bfloat16 kernels with AMX split their sums by the
    # thread count, so two threads move the fourth decimal (Intel Xeon).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = evaluate_dataset(model, text, LoaderSettings(context_length=32, stride=32), 2, fast=True)
    finally:
        torch.set_num_threads(threads)
    assert metric(at, "Training loss") == f"{want.train_loss:.4f}"
    d = want.bf16_differences
    info = " ".join(i.value for i in at.info)
    assert f"moved the loss by {d['train']:+.5f} (training) and {d['val']:+.5f} (validation)" in info
    at.toggle(key="ds_fast").set_value(False).run()  # float32 is kept apart: Compute again
    assert at.button(key="ds_compute") and "bfloat16" not in " ".join(i.value for i in at.info)


@pytest.mark.slow
def test_every_preset_renders_on_every_view(model):
    from ui.sidebar import PRESETS, split_texts

    at = app()
    for name, text in PRESETS.items():
        at.selectbox(key="preset").set_value(name).run()
        expected = f"{float(compute_loss(model, list(split_texts(text))).loss):.4f}"
        for page in ("tokens", "probabilities", "figure57", "cross_entropy", "per_token"):
            at.switch_page(f"components/{page}.py").run()
            assert not at.exception and not at.error, (name, page, at.exception, [e.value for e in at.error])
            assert metric(at, "Loss (cross entropy)") == expected, (name, page)


@pytest.mark.parametrize(
    "query", [{"step": "9"}, {"top_k": "100000"}, {"temperature": "-1"}, {"model": "nope"}]
)
def test_a_broken_link_still_opens(query):
    at = app("figure57", **query)
    assert not at.exception
    assert metric(at, "Loss (cross entropy)") == "10.7940"


@pytest.mark.parametrize("text", ["**", "$$"])
def test_error_messages_quote_the_input_literally(text):
    """A one-token text is quoted in the message; Markdown/LaTeX in it must not render."""
    at = app()
    set_text(at, text)
    (error,) = at.error
    escaped = "".join("\\" + ch for ch in text)
    assert "single token" in error.value and escaped in error.value


def test_a_model_that_cannot_download_gives_a_message_once(monkeypatch):
    """Offline (the network mocked): a clear message, and no new download try on every click."""
    import huggingface_hub

    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("repo_id"))
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    for name in [n for n in os.environ if n.startswith("LOSSLENS_GPT2_")]:
        monkeypatch.delenv(name)
    at = app()
    at.selectbox(key="model").set_value("gpt2-124m").run()
    assert not at.exception
    assert "Could not download GPT-2 124M" in errors(at)
    assert at.query_params["model"] in ("gpt2-124m", ["gpt2-124m"])
    at.number_input(key="top_k").set_value(3).run()
    assert at.error and len(calls) == 1
    at.selectbox(key="model").set_value("untrained-124m").run()
    assert metric(at, "Loss (cross entropy)") == "10.7940"
    assert "model" not in at.query_params


def test_a_rerun_that_changes_nothing_computes_nothing(monkeypatch):
    import ui.cache as cache

    calls = []
    real = cache.compute_loss

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "compute_loss", counting)
    at = app()
    assert calls == [BOOK_TEXTS]
    at.run()
    at.switch_page("components/figure57.py").run()
    at.button[1].click().run()  # Next: a new step, the same numbers
    assert len(calls) == 1
    set_text(at, "a new text to read")
    assert calls[-1] == ["a new text to read"] and len(calls) == 2


def test_underflow_at_low_temperature_is_drawn_not_crashed():
    """At T = 0.001 the target probabilities are 0 and log_probas -inf: every step still draws,
    and every chart is strict JSON (no Infinity/NaN literals, which a browser cannot parse)."""

    def strict(constant):
        raise ValueError(constant)

    at = app("figure57", temperature=0.001)
    for step in range(1, len(STEPS) + 1):
        at.select_slider(key="step").set_value(step).run()
        assert not at.exception and not at.error, step
        for spec in (e.proto.spec for e in at.get("plotly_chart")):
            json.loads(spec, parse_constant=strict)
    assert metric(at, "neg_avg_log_probas (by hand, naive)") == "∞"


@pytest.mark.parametrize(
    "query, preset",
    [
        ({"text": "a text of my own"}, "Custom text"),
        ({"text": "every effort moves you"}, "Book, first text only"),
        ({"text": "a text of my own", "preset": "Book example (figure 5.7)"}, "Custom text"),
    ],
)
def test_a_link_with_a_text_shows_the_matching_preset(query, preset):
    at = app(**query)
    assert at.text_area(key="text").value == query["text"]
    assert at.selectbox(key="preset").value == preset


def test_a_script_run_counts_as_a_visitors_request_for_training_to_wait_on(monkeypatch):
    import ui.cache as cache
    from core.serving.priority import FOREGROUND

    count, seen = FOREGROUND.shared().count, []

    def counting(*args, **kwargs):
        seen.append(count.value)  # the app's run, before compute_loss adds its own
        return compute_loss(*args, **kwargs)

    monkeypatch.setattr(cache, "compute_loss", counting)
    at = app(text="A sentence that no other test typed.")
    assert seen == [1] and count.value == 0  # counted while the run lasted, and not after
    assert not at.error


# --- the lesson path, honest labels, one number format -----------------------------------------


def _markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in [*at.markdown, *at.caption])


def test_the_start_page_opens_at_root_and_begins_the_lesson():
    from ui import lesson_nav

    at = app()
    assert at.header[0].value.startswith("LossLens")
    body = _markdown(at)
    for n, v in enumerate(lesson_nav.LESSON[1:], 1):
        assert f"{n}. **{v.title}** · {v.minutes} min" in body
    assert f"about **{lesson_nav.lesson_minutes()} minutes**" in body
    assert metric(at, "Loss (cross entropy)") == "10.7940"  # where the lesson ends up
    at.button(key="begin").click().run()
    assert not at.exception
    assert at.header[0].value == "Tokens"


LESSON_PAGES = ["start", "tokens", "probabilities", "figure57", "cross_entropy", "dataset"]


@pytest.mark.parametrize("n", range(len(LESSON_PAGES)))
def test_each_lesson_view_asks_its_question_and_links_to_its_neighbours(n):
    from ui import lesson_nav

    at = app(LESSON_PAGES[n])
    view = lesson_nav.LESSON[n]
    assert view.file == f"components/{LESSON_PAGES[n]}.py"
    assert f"*{view.question}*" in [m.value for m in at.markdown][:2]
    links = [
        (e.proto.label, e.proto.page)
        for e in at.get("page_link")
        if e.proto.label.startswith(("← Previous: ", "Next: "))  # not the sidebar's menu
    ]
    menu = [
        e.proto.label for e in at.get("page_link") if not e.proto.label.startswith(("← Previous: ", "Next: "))
    ]
    assert menu == [v.title for v in lesson_nav.VIEWS]  # the sidebar: the lesson, then the extras
    expected = []
    if n > 0:
        before = lesson_nav.LESSON[n - 1]  # the start page is the default: its link is "/"
        expected.append((f"← Previous: {before.title}", "" if n == 1 else before.path))
    expected.append((f"Next: {lesson_nav.LESSON[n + 1].title} →", lesson_nav.LESSON[n + 1].path))
    assert links == expected


def test_the_lesson_and_the_extras_are_grouped_in_order():
    from ui import lesson_nav

    assert [v.title for v in lesson_nav.LESSON] == [
        "Start",
        "Tokens",
        "Next-token probabilities",
        "Figure 5.7, step by step",
        "Cross entropy and perplexity",
        "Dataset losses (§5.1.3)",
        "Training (§5.2)",
    ]
    # The URL paths of before the grouping still open their views (shared links).
    paths = {v.path for v in lesson_nav.VIEWS}
    assert {
        "tokens",
        "probabilities",
        "figure-5-7",
        "cross-entropy",
        "per-token-loss",
        "temperature",
    } <= paths
    assert {"units", "confidence", "gradient", "dataset", "training", "compare"} <= paths
    assert all(v.extends.startswith("§") for v in lesson_nav.EXTRAS)


def test_an_extra_view_names_the_book_section_it_extends():
    at = app("temperature")
    assert any(c.value.startswith("Beyond the book: extends §5.3.1") for c in at.caption)


@pytest.mark.slow
def test_off_the_book_a_notice_says_what_differs_and_one_button_goes_back(model):
    at = app("figure57", temperature=2.0, seed=124)
    notice = next(m.value for m in at.markdown if "Not the book's example" in m.value)
    assert "seed 124 (the book: 123)" in notice and "temperature 2 (the book: 1)" in notice
    assert "other texts" not in notice
    at.button(key="back_to_book").click().run()
    assert not at.exception
    assert at.number_input(key="temperature").value == 1.0
    assert at.number_input(key="seed").value == 123
    assert at.text_area(key="text").value == "\n".join(BOOK_TEXTS)
    assert metric(at, "Loss (cross entropy)") == "10.7940"
    assert not any("Not the book's example" in m.value for m in at.markdown)


def test_the_books_printed_perplexity_is_quoted_only_on_the_books_example():
    at = app("cross_entropy")
    assert "The book prints 48725.8203" in _markdown(at)
    set_text(at, "a text of my own, not the book's")
    assert "48725.8203" not in _markdown(at)
    assert "Not the book's example" in _markdown(at)


def test_step_code_on_the_page_follows_the_batch(model):
    at = app("figure57", text="the cat sat on the mat and the dog", temperature=2.0, step=1)
    assert "logits = model(inputs) / temperature" in at.code[0].value
    at.select_slider(key="step").set_value(3).run()
    assert "probas[text_idx, [0, 1, 2, 3, 4, 5, 6, 7], targets[text_idx]]" in at.code[0].value
    at.select_slider(key="step").set_value(4).run()
    assert at.code[0].value == "log_probas = torch.log(target_probas_1)"


def test_step_cards_show_only_the_steps_reached():
    at = app("figure57", step=1)
    cards = [b for b in html_bodies(at).split("\n") if "ll-flow" in b]
    assert cards and cards[0].count("<li") == 1 and "10.7940" not in cards[0]
    at.select_slider(key="step").set_value(6).run()
    cards = [b for b in html_bodies(at).split("\n") if "ll-flow" in b]
    assert cards[0].count("<li") == 6 and "10.7940" in cards[0]


def test_the_surprisal_curve_carries_the_batchs_targets_and_the_uniform_guess(model):
    at = app("cross_entropy")
    curve = next(s for s in plotly_specs(at) if any("surprisal" in (t.get("name") or "") for t in s["data"]))
    dots = next(t for t in curve["data"] if t.get("name") == "this batch's targets")
    result = compute_loss(model, BOOK_TEXTS)
    probas = result.target_probas[result.batch.mask].tolist()
    assert sorted(dots["x"]) == pytest.approx(sorted(probas), rel=1e-6)
    assert sorted(dots["y"]) == pytest.approx(sorted(-math.log(p) for p in probas), rel=1e-6)
    uniform = next(t for t in curve["data"] if (t.get("name") or "").startswith("uniform guess 1/50,257"))
    assert uniform["x"] == [pytest.approx(1 / 50257)] and uniform["y"] == [pytest.approx(math.log(50257))]
    assert curve["layout"]["xaxis"]["type"] == "log"
    text = _markdown(at)
    assert "ln(50,257) = 10.82" in text and "confidently wrong" in text and "nearly uniform" in text


def test_a_loss_above_the_uniform_guess_says_so(model):
    at = app("cross_entropy", temperature=0.1)  # a sharpened untrained model: worse than uniform
    loss = float(compute_loss(model, BOOK_TEXTS, temperature=0.1).loss)
    assert loss > math.log(50257)
    text = _markdown(at)
    assert "above ln(50,257) = 10.82" in text and "more than the 50,257 tokens of the vocabulary" in text


_E_NUMBER = re.compile(r"\d(?:\.\d+)?[eE][-+]?\d+")
_BOOK_E = re.compile(r"^\d\.\d{4}e[-+]\d{2}$")


def _rendered_text(at: AppTest) -> list[str]:
    texts = [e.value for e in [*at.markdown, *at.caption, *at.code]]
    texts += [f"{m.label} {m.value}" for m in at.metric]
    # The page's HTML, less its CSS and colours (#d55e00 is no number).
    html_text = (re.sub(r"<style>.*?</style>", "", e.proto.body, flags=re.S) for e in at.get("html"))
    texts += [re.sub(r"#[0-9a-fA-F]{3,8}\b", "", h) for h in html_text]
    for spec in plotly_specs(at):
        for trace in spec["data"]:
            for key in ("text", "hovertext", "customdata", "name"):
                texts.append(json.dumps(trace.get(key), ensure_ascii=False))
        texts += [str(a.get("text")) for a in spec["layout"].get("annotations", [])]
    return texts


def _probability_axes(spec: dict) -> list[dict]:
    axes = [v for k, v in spec["layout"].items() if re.fullmatch(r"[xy]axis\d*", k)]
    # Axes of probabilities (not of log probabilities, which are ordinary numbers of nats).
    title = lambda a: (a.get("title") or {}).get("text") or ""  # noqa: E731
    return [a for a in axes if a.get("type") == "log" or re.match(r"(target'?s? )?probability", title(a))]


@pytest.mark.parametrize(
    "page,steps", [("probabilities", [None]), ("figure57", range(1, 7)), ("cross_entropy", [None])]
)
def test_every_number_a_lesson_view_renders_follows_the_format_rules(page, steps):
    at = app(page)
    for step in steps:
        if step is not None:
            at.select_slider(key="step").set_value(step).run()
        for text in _rendered_text(at):
            for number in _E_NUMBER.findall(text):
                assert _BOOK_E.match(number), (page, step, number, text[:200])
            assert "μ" not in text and not re.search(r"\d\s?%", text), (page, step, text[:200])
        for spec in plotly_specs(at):
            for axis in _probability_axes(spec):
                assert axis.get("exponentformat") == "e", (page, step, axis)


def test_minus_infinity_is_a_hatched_bar_and_no_slanted_line():
    from ui import charts

    at = app("figure57", temperature=0.001, step=6)
    s = common_summary(at)
    fig = charts.step_figure(s, 6).to_plotly_json()
    bars = fig["data"][0]
    assert all(math.isfinite(y) and y > 0 for y in bars["y"])  # no empty bar standing for ∞
    inf = [x == "-inf" for x in s["log_probas"]]
    assert any(inf)
    assert list(bars["marker"]["pattern"]["shape"]) == ["/" if i else "" for i in inf]
    assert all(math.isfinite(sh["y0"]) for sh in fig["layout"].get("shapes", []))
    notes = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "loss by hand (naive) = ∞" in notes and f"F.cross_entropy (stable) = {s['loss']:.4f}" in notes
    assert metric(at, "neg_avg_log_probas (by hand, naive)") == "∞"
    assert metric(at, "F.cross_entropy (stable)") == f"{s['loss']:.4f}"


def common_summary(at: AppTest) -> dict:
    from ui import cache

    texts = tuple(at.text_area(key="text").value.split("\n"))
    return cache.loss_summary(
        "untrained-124m", 123, texts, 10, float(at.number_input(key="temperature").value)
    )


def test_the_legend_stays_clear_of_the_x_axis_title():
    from ui import charts

    at = app("figure57", step=2)
    for step in range(1, 7):
        legend = charts.step_figure(common_summary(at), step).to_plotly_json()["layout"]["legend"]
        assert legend["y"] >= 1 and legend["yanchor"] == "bottom", step  # above the plot


def test_dataset_progress_counts_each_split_on_its_own():
    from components.dataset import progress_text

    assert progress_text(1, 10, "train", 9) == "training batches: 1 of 9"
    assert progress_text(9, 10, "train", 9) == "training batches: 9 of 9"
    assert progress_text(10, 10, "val", 9) == "validation batches: 1 of 1 (training done)"


def test_presentation_mode_leaves_out_hardware_notes():
    at = app("dataset", presentation="true")
    assert not [t for t in at.toggle if t.key == "ds_fast"]
    shown = _markdown(at) + " ".join(t.label for t in at.toggle)
    assert "bfloat16" not in shown and "AVX" not in shown and "AMX" not in shown
    at = app("dataset")  # on the laptop the switch is there (offered or with the reason why not)
    assert [t for t in at.toggle if t.key == "ds_fast"]


PACES = [(None, 5.0), ("2", 2.0), ("60", 60.0), ("0", 5.0), ("61", 5.0), ("fast", 5.0), ("nan", 5.0)]


@pytest.mark.parametrize("value,seconds", PACES)
def test_plays_pace_is_five_seconds_unless_set_within_bounds(monkeypatch, value, seconds):
    from components import figure57

    if value is None:
        monkeypatch.delenv("LOSSLENS_PLAY_SECONDS", raising=False)
    else:
        monkeypatch.setenv("LOSSLENS_PLAY_SECONDS", value)
    assert figure57._play_seconds() == seconds
