"""The lesson views in a real browser: each opens from its URL and shows the number core computes."""

from __future__ import annotations

import math

from devtools.harness import BOOK_TEXTS, metric_value, shown_value, wait_for_app

from .e2e_helpers import open_url
from .test_e2e_dataset import open_dataset, set_number


def test_temperature_sweep(new_page, server, core_model):
    from core.lessons.sweep import temperature_sweep
    from core.lessons.views import forward, predictions

    page = new_page()
    open_url(page, server, "temperature", sweep_axis="Perplexity")
    s = temperature_sweep(*predictions(*reversed(forward(core_model, BOOK_TEXTS))))
    assert metric_value(page, "Temperature with the lowest loss") == f"{s.best:.3f}"
    assert metric_value(page, "Loss at the current T") == "10.7940"
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 2  # curve and entropy drawn
    assert page.get_by_role("radio", name="Perplexity").is_checked()


def test_units_and_averages(new_page, server, core_model):
    from core.lessons.loss import compute_loss

    page = new_page()
    open_url(page, server, "units", units_base="bits")
    bits = float(compute_loss(core_model, BOOK_TEXTS).loss) / math.log(2)
    assert metric_value(page, "Loss in bits") == f"{bits:.4f}"
    assert metric_value(page, "Bits per byte") == f"{bits * 6 / 39:.4f}"  # 6 tokens, 39 predicted bytes
    # The bytes shown are the 39 that bits per byte divides by (the first tokens are never predicted).
    assert metric_value(page, "Predicted characters · bytes") == "39 · 39"
    assert metric_value(page, "Mean of per-text losses (bits)") == f"{bits:.4f}"  # 3 and 3 tokens: equal


def test_confidence_with_gltr_colours(new_page, server, core_model):
    from core.lessons.confidence import confidence
    from core.lessons.views import forward, predictions

    page = new_page()
    open_url(page, server, "confidence", gltr="true")
    c = confidence(*predictions(*reversed(forward(core_model, BOOK_TEXTS))))
    assert shown_value(metric_value(page, "Mean entropy"), sum(c["entropy"]) / len(c["entropy"]))
    assert page.locator(".ll-heat span[title*='rank 258']").count() == 1  # " effort"
    assert page.locator(".js-plotly-plot").count() == 2  # the scatter and the bucket histogram


def test_gradient_and_one_training_step(new_page, server, core_model):
    from core.lessons.gradient import gradient_bars, train_steps
    from core.lessons.views import forward, predictions

    page = new_page()
    open_url(page, server, "gradient", grad_at=2)
    bars = gradient_bars(*predictions(*reversed(forward(core_model, BOOK_TEXTS))), 10)[1]
    assert shown_value(metric_value(page, "Target pushed up by"), bars["push_up"])
    page.get_by_role("button", name="Run 1 training step").click()
    expected = train_steps(core_model, BOOK_TEXTS, 1)
    assert shown_value(metric_value(page, "Loss after 1 step(s)", timeout=300_000), expected.losses[1])
    assert metric_value(page, "Loss before") == "10.7940"


def test_dataset_loss_by_position(new_page, server):
    """On The Verdict's first batch of each split: the position pass gives back the Dataset view's
    loss (the book's calc_loss_loader, from a separate pass). The whole split's 10.9876 is checked
    in tests/lessons/test_dataset.py and test_e2e_dataset.py, position means against the book's
    batches in tests/lessons/test_positions.py."""
    page = new_page()
    open_dataset(page, server)
    set_number(page, "Batches per split (0 = all)", 1)
    page.get_by_role("button", name="Compute", exact=True).click()
    loss = metric_value(page, "Training loss", timeout=600_000)
    assert 10.8 < float(loss) < 11.1  # untrained: near ln(50257) = 10.825
    wait_for_app(page)
    page.get_by_role("button", name="Compute loss by position").click()
    wait_for_app(page, timeout=600_000)
    assert metric_value(page, "Training, by position", timeout=600_000) == loss
    assert metric_value(page, "Training loss (book)") == loss
    assert metric_value(page, "Validation, by position") == metric_value(page, "Validation loss (book)")
    assert page.locator(".js-plotly-plot").count() == 2


def test_compare_two_models_token_by_token(new_page, server, core_model, verdict_file, monkeypatch):
    from dataclasses import replace

    from test_training import TINY

    from core.lessons.divergence import compare_models
    from core.models.checkpoints import load_trained_model, model_path
    from core.serving.runner import run_training

    monkeypatch.setenv("LOSSLENS_CACHE_DIR", server.env["LOSSLENS_CACHE_DIR"])  # where the app looks
    run_training(
        replace(TINY, num_epochs=1), verdict_file.read_text(encoding="utf-8")[:6000], "e2e-tok", log=None
    )
    r = compare_models(core_model, load_trained_model(model_path("e2e-tok")), BOOK_TEXTS)
    page = new_page()
    open_url(page, server, "compare")
    assert metric_value(page, "Mean KL") == f"{sum(r['kl']) / len(r['kl']):.4f}"
    assert page.locator(".ll-heat span[title*='KL']").count() == len(r["kl"])
