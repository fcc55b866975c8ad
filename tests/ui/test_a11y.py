"""The text alternatives: the charts' lessons as sentences, from core's real numbers."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from tests.conftest import BOOK_TEXTS
from ui import a11y


@pytest.fixture(scope="module")
def book(model):
    from core.lessons.loss import compute_loss
    from core.lessons.report import summarize

    return summarize(compute_loss(model, BOOK_TEXTS))


def test_p3_prints_the_books_e_notation():
    assert a11y.p3(7.4541e-05) == "7.4541e-05"
    assert a11y.p3(0.000177) == "1.7700e-04"
    assert a11y.p3(0.25) == "2.5000e-01"
    assert a11y.p3(0.0) == "0.0000e+00"
    assert a11y.p3(None) == "n/a"


@pytest.mark.slow
def test_the_probability_chart_in_words(book):
    # The book's first prediction: every -> ␣effort, target_probas_1[0] = 7.4541e-05.
    p = book["texts"][0]["positions"][0]
    text = a11y.describe_prediction(p, book["vocab_size"])
    assert text.startswith("After every, target ␣effort has probability 7.4541e-05, rank ")
    assert f"rank {p['rank']:,} of 50,257" in text
    top = p["top_k"][0]
    assert f"the top token {top['piece']} has {top['proba']:.4e}" in text
    assert p["rank"] > 1 and top["id"] != p["target_id"]


def test_a_top_prediction_says_so(book):
    p = dict(book["texts"][0]["positions"][0])
    p["target_id"] = p["top_k"][0]["id"]
    assert a11y.describe_prediction(p, 50257).endswith("it is the model's top token.")


def test_each_figure_5_7_step_in_words(book):
    steps = [a11y.describe_step(book, k) for k in range(1, 7)]
    assert steps[0].startswith("6 positions, 50,257 logits each.")
    assert "(every → ␣effort)" in steps[0]
    # The book's target_probas: 7.4541e-05 is the largest of the six.
    assert "to 7.4541e-05 (every → ␣effort)" in steps[2]
    assert "1/50,257 is 1.9898e-05" in steps[2]
    assert steps[3].startswith("log_probas: 6 values, from -12.")
    assert steps[4] == "avg_log_probas, the mean of the 6 log probabilities: -10.7940."
    assert steps[5].startswith("neg_avg_log_probas = 10.7940, the cross-entropy loss")
    assert steps[5].endswith("cross_entropy gives 10.7940.")


def test_heatmap_and_loss_announcement(book):
    text = a11y.describe_heat(book["texts"][0], 0)
    surprisals = {p["target"]: p["surprisal"] for p in book["texts"][0]["positions"]}
    worst = max(surprisals, key=surprisals.get)
    assert text.startswith(
        f"Text 1, 3 predicted tokens: most surprising {worst} ({surprisals[worst]:.2f} nats)"
    )
    assert a11y.loss_announcement(book) == "Loss 10.7940, perplexity 48,726, over 6 predicted tokens."


def test_dataset_training_and_comparison_in_words():
    r = {
        "train_batch_losses": [10.5, 11.0, 10.9],
        "train_loss": 10.8,
        "val_batch_losses": [10.95],
        "val_loss": 10.95,
    }
    assert a11y.describe_dataset(r) == (
        "Training loss 10.8000, the mean of 3 batches (lowest 10.5000, highest 11.0000); "
        "validation loss 10.9500, the mean of 1 batch (lowest 10.9500, highest 10.9500)."
    )
    evals = [
        {"step": 0, "tokens_seen": 512, "train_loss": 10.98, "val_loss": 10.99},
        {"step": 20, "tokens_seen": 10_752, "train_loss": 6.5, "val_loss": 7.25},
    ]
    assert a11y.describe_training(evals) == (
        "At step 20 (10,752 tokens seen): training loss 6.500, validation loss 7.250; "
        "at the first evaluation (step 0) they were 10.980 and 10.990."
    )
    assert a11y.describe_losses(["Untrained", "Trained: quick"], [10.794, 6.25]) == (
        "Loss on the sidebar's texts: Untrained 10.7940; Trained: quick 6.2500. Lowest: Trained: quick."
    )


def test_a_charts_values_become_an_escaped_table():
    fig = go.Figure()
    fig.add_bar(x=["every → &lt;b&gt;<br>1·0", "b"], y=[7.4541e-05, 0.5], name="target_probas")
    fig.add_bar(x=["every → &lt;b&gt;<br>1·0"], y=[-1.2634], name="logit")
    fig.update_xaxes(title="input → target")
    axis, columns, body = a11y.figure_rows(fig)
    assert axis == "input → target"
    assert columns == ["target_probas", "logit"]
    assert body == [["every → <b> · 1·0", "7.4541e-05", "-1.2634"], ["b", "0.5000", ""]]
    table = a11y.table_html("Chart", [axis, *columns], body)
    assert "<b>" not in table and "&lt;b&gt;" in table  # user text stays text
    assert '<th scope="col">target_probas</th>' in table and '<th scope="row">' in table
    assert "<caption>Chart</caption>" in table


def test_a_horizontal_bar_chart_keys_rows_by_its_categories():
    fig = go.Figure(go.Bar(x=[0.2, 0.1], y=["␣Armed  ·1234", "␣effort  ·3626"], orientation="h", name="p"))
    axis, columns, body = a11y.figure_rows(fig)
    assert body == [["␣Armed  ·1234", "0.2000"], ["␣effort  ·3626", "0.1000"]]
