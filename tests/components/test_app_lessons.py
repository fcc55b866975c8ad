"""The lesson views through AppTest: the numbers shown are the numbers core computes."""

from __future__ import annotations

import json
import math

import pytest
from conftest import BOOK_TEXTS, ROOT
from streamlit.testing.v1 import AppTest

from core.lessons.confidence import confidence
from core.lessons.gradient import gradient_bars, train_steps
from core.lessons.loss import compute_loss
from core.lessons.sweep import temperature_sweep
from core.lessons.views import forward, predictions

TIMEOUT = 300

pytestmark = pytest.mark.usefixtures("app_env")


def app(page: str, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    at.switch_page(f"components/{page}.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} in {[m.label for m in at.metric]}"
    return values[0]


def specs(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def book(model):
    batch, logits = forward(model, BOOK_TEXTS)
    return predictions(logits, batch)


@pytest.mark.slow
def test_temperature_sweep_shows_core_numbers(model):
    at = app("temperature", temperature=0.5)
    batch, logits = forward(model, BOOK_TEXTS)
    s = temperature_sweep(*predictions(logits, batch), current=0.5)
    assert (
        metric(at, "Loss at the current T")
        == f"{float(compute_loss(model, BOOK_TEXTS, temperature=0.5).loss):.4f}"
    )
    assert metric(at, "Temperature with the lowest loss") == f"{s.best:.3f}"
    assert metric(at, "Lowest loss") == f"{s.best_loss:.4f}"
    (spec,) = specs(at)
    assert spec["data"][0]["x"] == pytest.approx(s.temperatures)
    assert spec["data"][0]["y"] == pytest.approx(s.losses)
    assert spec["data"][1]["y"] == pytest.approx(s.entropies)
    # A link opens the perplexity axis (a browser writes the choice into the URL itself).
    at = app("temperature", temperature=0.5, sweep_axis="Perplexity")
    assert at.radio(key="sweep_axis").value == "Perplexity"
    assert specs(at)[0]["data"][0]["y"] == pytest.approx([math.exp(x) for x in s.losses], rel=1e-6)


def test_units_view_by_hand_on_a_ragged_batch(model):
    texts = ["Hi there", "The quick brown fox jumps over the lazy dog"]
    at = app("units", text="\n".join(texts))
    r = compute_loss(model, texts)
    s = r.surprisal
    n1, n2 = int(r.batch.mask[0].sum()), int(r.batch.mask[1].sum())
    l1, l2 = float(s[0, :n1].sum()) / n1, float(s[1, :n2].sum()) / n2
    assert metric(at, "Loss in nats") == f"{float(r.loss):.4f}"
    assert metric(at, "Loss in bits") == f"{float(r.loss) / math.log(2):.4f}"
    assert metric(at, "Mean of per-text losses (nats)") == f"{(l1 + l2) / 2:.4f}"
    assert metric(at, "Token-weighted loss (nats)") == f"{float(r.loss):.4f}"
    # " there" (6 bytes) and everything after "The" (40 bytes) are predicted.
    nats = float(s[0, :n1].sum() + s[1, :n2].sum())
    assert metric(at, "Bits per byte") == f"{nats / math.log(2) / 46:.4f}"
    at.radio(key="units_base").set_value("bits").run()
    assert metric(at, "Mean of per-text losses (bits)") == f"{(l1 + l2) / 2 / math.log(2):.4f}"


def test_confidence_view_and_gltr_buckets(book):
    at = app("confidence", gltr="true")
    z, y = book
    c = confidence(z, y)
    assert metric(at, "Mean entropy") == f"{sum(c['entropy']) / len(y):.4f}"
    scatter, hist = specs(at)
    shown = sorted(x for trace in scatter["data"][1:] for x in trace["x"])
    assert shown == pytest.approx(sorted(c["entropy"]), abs=1e-6)
    assert hist["data"][0]["y"] == c["histogram"]
    body = "\n".join(e.proto.body for e in at.get("html"))
    assert "␣effort" in body and "rank 258" in body


@pytest.mark.slow
def test_gradient_view_and_a_training_step(model, book):
    at = app("gradient", grad_at=1, top_k=5)
    z, y = book
    bars = gradient_bars(z, y, 5)[0]
    assert metric(at, "Target pushed up by") == f"{bars['push_up']:.4e}"
    spec = specs(at)[0]
    push = [-g for g in bars["gradients"]] + [-bars["push_down_elsewhere"]]
    # Written beside each bar exactly, and drawn on a symmetric log scale where the top-10 pushes
    # (about 1e-05) stand at least a decade long beside the target's (about 0.2).
    assert [float(t) for t in spec["data"][0]["text"]] == pytest.approx(push, rel=1e-3)
    drawn = spec["data"][0]["x"]
    assert all(math.copysign(1, x) == math.copysign(1, v) for x, v in zip(drawn, push, strict=True))
    assert min(abs(x) for x in drawn) >= 1.0
    assert max(abs(x) for x in drawn) - min(abs(x) for x in drawn) == pytest.approx(
        math.log10(max(map(abs, push)) / min(map(abs, push))), rel=1e-6
    )
    at.button(key="grad_run").click().run()
    assert not at.exception and not at.error
    expected = train_steps(model, BOOK_TEXTS, 1)
    assert metric(at, "Loss before") == f"{expected.losses[0]:.4f}" == "10.7940"
    assert metric(at, "Loss after 1 step(s)") == f"{expected.losses[1]:.4f}"
    assert expected.losses[1] < expected.losses[0]
    assert float(compute_loss(model, BOOK_TEXTS).loss) == pytest.approx(
        10.7940, abs=5e-4
    )  # shared model untouched


@pytest.mark.slow
def test_dataset_view_loss_by_position(model, verdict_path):
    from core.lessons.positions import position_losses
    from core.models.loaders import LoaderSettings

    text = verdict_path.read_text(encoding="utf-8")[:3000]
    at = app("dataset", pos_split="Validation")
    at.radio(key="corpus").set_value("Paste text").run()
    at.text_area(key="corpus_text").set_value(text).run()
    at.number_input(key="ds_len").set_value(32).run()
    at.number_input(key="ds_stride").set_value(32).run()
    at.button(key="ds_compute").click().run()
    at.button(key="pos_compute").click().run()
    assert not at.exception and not at.error
    r = position_losses(model, text, LoaderSettings(context_length=32, stride=32))
    assert metric(at, "Training loss (book)") == f"{r['train']['loss']:.4f}" == metric(at, "Training loss")
    assert metric(at, "Validation, by position") == f"{r['val']['token_weighted_loss']:.4f}"
    assert at.radio(key="pos_split").value == "Validation"
    (spec,) = [s for s in specs(at) if "position" in s["layout"]["title"]["text"]]
    assert [t["name"] for t in spec["data"]] == ["validation: mean loss at the position"]
    assert spec["data"][0]["y"] == pytest.approx(r["val"]["position_means"], abs=1e-9)


@pytest.mark.slow
def test_compare_view_two_models_token_by_token(model, verdict_path):
    from dataclasses import replace

    from test_training import TINY

    from core.lessons.divergence import compare_models
    from core.models.checkpoints import load_trained_model, model_path
    from core.serving.runner import run_training

    run_training(
        replace(TINY, num_epochs=1), verdict_path.read_text(encoding="utf-8")[:6000], "tok-tiny", log=None
    )
    at = app("compare")
    assert at.multiselect(key="cmp_models").value[:2] == ["untrained-124m", "trained-tok-tiny"]
    r = compare_models(model, load_trained_model(model_path("tok-tiny")), BOOK_TEXTS)
    assert metric(at, "Mean KL(p_A ‖ p_B)") == f"{sum(r['kl']) / len(r['kl']):.4f}"
    assert metric(at, "Loss A − loss B") == f"{sum(r['difference']) / len(r['difference']):+.4f}"
    (spec,) = [s for s in specs(at) if s["layout"]["title"]["text"].startswith("How differently")]
    assert spec["data"][0]["y"] == pytest.approx(r["kl"], rel=1e-5)
    body = "\n".join(e.proto.body for e in at.get("html"))
    assert "KL(p_A‖p_B)" in body and "␣effort" in body


def test_temperature_axis_labels_its_ticks_and_keeps_the_minimum_in_view(model):
    from components.temperature import T_TICKS

    at = app("temperature")
    (spec,) = specs(at)
    x = spec["layout"]["xaxis"]
    assert x["tickvals"] == T_TICKS and x["ticktext"] == [f"{t:g}" for t in T_TICKS]
    lo, hi = spec["layout"]["yaxis"]["range"]
    best = float(metric(at, "Lowest loss"))
    assert lo < best < hi and hi - lo < 15  # not squashed by the hundreds of nats at T = 0.05
    assert spec["layout"]["yaxis2"]["dtick"] == 2  # whole numbers on the entropy axis
    words = " ".join(c.value for c in at.caption)
    assert "flatter the better" not in words
    assert f"is at T = {float(metric(at, 'Temperature with the lowest loss')):.3g}" in words


def test_confidence_explains_one_shared_entropy(book):
    at = app("confidence")
    z, y = book
    c = confidence(z, y)
    assert max(c["entropy"]) - min(c["entropy"]) < 0.05  # the untrained model: one vertical line
    note = " ".join(i.value for i in at.info)
    assert f"All {len(y)} points share one entropy" in note and "nearly uniform" in note


def test_units_shows_the_bytes_its_rates_divide_by(model):
    texts = ["Hi there", "The quick brown fox jumps over the lazy dog"]
    at = app("units", text="\n".join(texts))
    assert metric(at, "Predicted characters · bytes") == "46 · 46"  # " there" and 40 after "The"


def test_compare_says_why_the_untrained_model_can_score_lowest():
    from components.compare import lowest_note

    note = lowest_note(["Untrained", "Trained on The Verdict"], [10.79, 11.13], [True, False])
    assert note.startswith("Lowest: **Untrained**, the untrained model")
    assert "confidently wrong on other sentences" in note and "above ln 50,257 = 10.82" in note
    assert lowest_note(["A", "B"], [4.0, 5.0], [False, False]).startswith("Lowest: **A**")
    assert lowest_note(["A"], [4.0], [False]) is None
