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

from core.loss import compute_loss
from core.report import STEPS, format_perplexity

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


def test_seed_rebuilds_the_untrained_model():
    from core.registry import load_model

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
    at = app()
    set_text(at, text)
    assert not at.exception and not at.error
    body = html_bodies(at)
    assert "<script" not in body and "</script" not in body
    assert "␣&lt;" in body and "&lt;/" in body  # the tokens " <" and "</", escaped
    assert "&lt;|endoftext|&gt;" in body and "50256" in body
    assert "<0xF0>" not in body and "&lt;0xF0&gt;" in body  # emoji bytes as visible byte chips
    assert any(t.value == text for t in at.text)  # the raw text, as plain text
    assert metric(at, "Loss (cross entropy)") == f"{float(compute_loss(model, [text]).loss):.4f}"
    at.switch_page("components/per_token.py").run()
    assert "<script>" not in html_bodies(at)


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


def test_dataset_view_on_the_verdict_gives_the_books_losses():
    at = app("dataset")
    assert "5,145 tokens" in " ".join(m.value for m in at.markdown)
    at.button(key="ds_compute").click().run()
    assert not at.exception and not at.error
    # Section 5.1.3 of the book: training loss 10.98758347, validation loss 10.98110580.
    assert metric(at, "Training loss") == "10.9876"
    assert metric(at, "Validation loss") == "10.9811"
    at.switch_page("components/tokens.py").run()
    at.switch_page("components/dataset.py").run()  # back again: kept, no Compute needed
    assert metric(at, "Training loss") == "10.9876"


def _pasted_corpus() -> tuple[str, AppTest]:
    """The Dataset view on 3000 characters of The Verdict, pasted, in windows of 32 tokens."""
    text = VERDICT_PATH.read_text(encoding="utf-8")[:3000]
    at = app("dataset")
    at.radio(key="corpus").set_value("Paste text").run()
    at.text_area(key="corpus_text").set_value(text).run()
    at.number_input(key="ds_len").set_value(32).run()
    at.number_input(key="ds_stride").set_value(32).run()
    return text, at


def test_dataset_view_pasted_text_and_bad_corpus(model):
    from core.data import LoaderSettings
    from core.evaluate import evaluate_dataset

    text, at = _pasted_corpus()
    at.button(key="ds_compute").click().run()
    assert not at.exception and not at.error
    expected = evaluate_dataset(model, text, LoaderSettings(context_length=32, stride=32))
    assert metric(at, "Training loss") == f"{expected.train_loss:.4f}"
    assert metric(at, "Validation loss") == f"{expected.val_loss:.4f}"

    at.text_area(key="corpus_text").set_value("binary\x00data " * 20).run()
    assert not at.exception
    assert "NUL" in " ".join(e.value for e in at.error)


def test_dataset_view_fast_mode_only_where_offered_and_how_far_from_float32(model, monkeypatch):
    from core.data import LoaderSettings
    from core.evaluate import evaluate_dataset
    from core.precision import FORCE_ENV, bf16_unavailable

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


def test_every_preset_renders_on_every_view(model):
    from components.sidebar import PRESETS, split_texts

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
    import components.common as common

    calls = []
    real = common.compute_loss

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "compute_loss", counting)
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
    import components.common as common_module
    from core.priority import FOREGROUND

    count, seen = FOREGROUND.shared().count, []

    def counting(*args, **kwargs):
        seen.append(count.value)  # the app's run, before compute_loss adds its own
        return compute_loss(*args, **kwargs)

    monkeypatch.setattr(common_module, "compute_loss", counting)
    at = app(text="A sentence that no other test typed.")
    assert seen == [1] and count.value == 0  # counted while the run lasted, and not after
    assert not at.error
