"""The lesson views' core functions, each against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BOOK_TEXTS

from core.book.model import GPT_CONFIG_124M
from core.lessons.confidence import BUCKETS, confidence
from core.lessons.gradient import (
    NotEnoughMemoryError,
    choose_optimizer,
    gradient_bars,
    logit_gradient,
    memory_needed,
    train_steps,
)
from core.lessons.loss import compute_loss
from core.lessons.sweep import grid, temperature_sweep
from core.lessons.units import loss_units, predicted_counts
from core.lessons.views import forward, predictions
from core.runtime.rng import build_untrained_model

SMALL = {**GPT_CONFIG_124M, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2}


@pytest.fixture(scope="module")
def book(model):
    batch, logits = forward(model, BOOK_TEXTS)
    return batch, logits, *predictions(logits, batch)


# --- temperature sweep --------------------------------------------------------------


@pytest.mark.slow
def test_sweep_points_equal_compute_loss_at_each_temperature(model, book):
    _, _, z, y = book
    s = temperature_sweep(z, y, current=1.0)
    assert s.temperatures[0] == pytest.approx(0.05) and s.temperatures[-1] == pytest.approx(20.0)
    assert s.current_loss == pytest.approx(float(compute_loss(model, BOOK_TEXTS).loss), abs=1e-6)
    for t, loss in list(zip(s.temperatures, s.losses, strict=True))[::3]:
        expected = float(compute_loss(model, BOOK_TEXTS, temperature=t).loss)
        # float32 keeps ~7 digits: 1e-6 of the value (an absolute 1e-6 below 1 nat).
        assert abs(loss - expected) <= 1e-6 * max(1.0, expected), (t, loss, expected)


@pytest.mark.slow
def test_sweep_entropy_and_minimum_against_brute_force(book):
    _, _, z, y = book
    s = temperature_sweep(z, y, current=0.7)
    assert 0.7 in s.temperatures and s.current == 0.7
    for t, h in list(zip(s.temperatures, s.entropies, strict=True))[::6]:
        p = torch.softmax(z.double() / t, -1)
        expected = float(-(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean())
        assert h == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The refined minimum is no worse than any grid point, and a local minimum.
    assert s.best_loss <= min(s.losses) + 1e-7
    for f in (0.97, 1.03):
        assert float(F.cross_entropy(z.double() / (s.best * f), y)) >= s.best_loss - 1e-5


def test_grid_is_logarithmic():
    g = grid(0.1, 10.0, 3)
    assert g == pytest.approx([0.1, 1.0, 10.0])


# --- units and averages ---------------------------------------------------------------


def test_counts_on_fixed_texts(tokenizer):
    from core.runtime.tokenizer_files import encode

    # "Hello| world": the first token "Hello" is read, " world" (6 chars, 6 bytes) predicted.
    c = predicted_counts("Hello world", encode("Hello world", tokenizer), tokenizer)
    assert c == {
        "tokens": 2,
        "characters": 11,
        "bytes": 11,
        "predicted_tokens": 1,
        "predicted_characters": 6,
        "predicted_bytes": 6,
    }
    # "😀 hi": the emoji's 4 bytes straddle two tokens (3 + 1); it counts as predicted.
    c = predicted_counts("😀 hi", encode("😀 hi", tokenizer), tokenizer)
    assert c == {
        "tokens": 3,
        "characters": 4,
        "bytes": 7,
        "predicted_tokens": 2,
        "predicted_characters": 4,
        "predicted_bytes": 4,
    }


def test_units_and_averages_by_hand(tokenizer):
    from core.runtime.tokenizer_files import encode

    texts = ["Hello world", "every effort moves you"]
    ids = [encode(t, tokenizer) for t in texts]
    s = [[2.0], [1.0, 3.0, 5.0]]  # nats per predicted token, chosen by hand
    u = loss_units(texts, ids, s, tokenizer)
    # Token-weighted: (2 + 1 + 3 + 5) / 4 tokens = 2.75; per text: 2.0 and 3.0.
    a = u["averages"]
    assert a["token_weighted_loss"] == pytest.approx(2.75)
    assert a["mean_of_text_losses"] == pytest.approx(2.5)
    assert a["mean_of_text_perplexities"] == pytest.approx((math.exp(2.0) + math.exp(3.0)) / 2)
    b = u["batch"]
    assert b["loss_bits"] == pytest.approx(2.75 / math.log(2))
    # " world" = 6 bytes; " effort moves you" = 17 bytes: 11 nats over 23 bytes and 23 characters.
    assert (b["predicted_bytes"], b["predicted_characters"]) == (23, 23)
    assert b["bits_per_byte"] == pytest.approx(11 / math.log(2) / 23)
    assert b["perplexity_per_byte"] == pytest.approx(math.exp(11 / 23))
    assert b["perplexity_per_character"] == pytest.approx(math.exp(11 / 23))
    assert u["texts"][1]["perplexity_per_token"] == pytest.approx(math.exp(3.0))


def test_units_token_weighted_loss_is_cross_entropy(model, tokenizer, book):
    batch, logits, z, y = book
    surprisal = (-torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)).tolist()
    per_text = [surprisal[:3], surprisal[3:]]
    u = loss_units(batch.texts, batch.token_ids, per_text, tokenizer)
    assert u["averages"]["token_weighted_loss"] == pytest.approx(
        float(compute_loss(model, BOOK_TEXTS).loss), abs=1e-5
    )


# --- confidence against surprise ------------------------------------------------------


def test_confidence_against_brute_force_over_the_vocabulary(book):
    _, _, z, y = book
    c = confidence(z, y, temperature=1.0)
    for n in (0, 5):  # two positions, every one of the 50,257 tokens visited in Python
        row = z[n].double().tolist()
        m = max(row)
        total = sum(math.exp(x - m) for x in row)
        log_p = [x - m - math.log(total) for x in row]
        entropy = -sum(math.exp(lp) * lp for lp in log_p)
        rank = 1 + sum(1 for x in row if x > row[int(y[n])])
        assert c["entropy"][n] == pytest.approx(entropy, rel=1e-5)
        assert c["surprisal"][n] == pytest.approx(-log_p[int(y[n])], rel=1e-5)
        assert c["rank"][n] == rank
    assert sum(c["histogram"]) == len(y)
    expected = [0] * len(BUCKETS)
    for r in c["rank"]:
        expected[0 if r <= 10 else 1 if r <= 100 else 2 if r <= 1000 else 3] += 1
    assert c["histogram"] == expected


# --- gradient and training steps ------------------------------------------------------


def test_logit_gradient_equals_autograd(book):
    _, _, z, y = book
    leaf = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(leaf, y), leaf)
    assert torch.allclose(logit_gradient(z, y), expected, atol=1e-7, rtol=0)
    for n, bars in enumerate(gradient_bars(z, y, 5)):
        assert bars["gradients"] == pytest.approx(expected[n, bars["ids"]].tolist(), abs=1e-7)
        assert bars["push_up"] == pytest.approx(-float(expected[n, y[n]]), abs=1e-7)
        # The whole row sums to zero (up to float32 rounding over 50,257 terms).
        others = float(expected[n].double().sum() - expected[n, y[n]])
        assert bars["push_down_elsewhere"] == pytest.approx(others, abs=1e-6)
        assert bars["target_id"] == int(y[n]) and int(y[n]) in bars["ids"]
    assert gradient_bars(z, y, 5)[0]["ids"][-1] == int(y[0])  # " effort" is rank 258: its own bar


@pytest.mark.slow
def test_one_step_equals_adamw_by_hand():
    model = build_untrained_model(1, SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, trained = train_steps(model, BOOK_TEXTS, steps=1, optimizer="adamw", return_model=True)
    for k, v in model.state_dict().items():  # the shared model is untouched
        assert torch.equal(v, before[k])
    assert not any(p.requires_grad for p in model.parameters())
    # The same step written out: AdamW's first update from zero moments.
    from core.lessons.loss import prepare_batch

    b = prepare_batch(BOOK_TEXTS, 16)
    ref = build_untrained_model(1, SMALL).requires_grad_(True)
    loss = F.cross_entropy(ref(b.inputs).flatten(0, 1), b.targets.flatten())
    assert result.losses[0] == pytest.approx(float(loss.detach()), abs=1e-6)
    loss.backward()
    lr, wd, eps, b1, b2 = 0.0004, 0.1, 1e-8, 0.9, 0.999
    with torch.no_grad():
        for name, p in ref.named_parameters():
            g = p.grad
            m_hat = (1 - b1) * g / (1 - b1)
            v_hat = (1 - b2) * g * g / (1 - b2)
            expected = p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
            assert torch.allclose(trained.get_parameter(name), expected, atol=1e-6, rtol=0), name
    assert len(result.target_probas) == 2 and len(result.target_probas[0]) == 6
    # The measured loss after the step is the loss of the hand-updated weights.
    for name, p in ref.named_parameters():
        p.data.copy_(trained.get_parameter(name))
    with torch.no_grad():
        after = F.cross_entropy(ref(b.inputs).flatten(0, 1), b.targets.flatten())
    assert result.losses[1] == pytest.approx(float(after), abs=1e-6)
    assert result.losses[1] < result.losses[0]


@pytest.mark.slow
def test_more_steps_memorise_the_batch_and_sgd_matches_torch():
    model = build_untrained_model(2, SMALL)
    r = train_steps(model, BOOK_TEXTS, steps=5, optimizer="adamw")
    assert r.losses == sorted(r.losses, reverse=True) and len(r.losses) == 6
    s, trained = train_steps(model, BOOK_TEXTS, steps=1, optimizer="sgd", return_model=True)
    ref = build_untrained_model(2, SMALL).requires_grad_(True)
    opt = torch.optim.SGD(ref.parameters(), lr=0.0004, weight_decay=0.1)
    from core.lessons.loss import prepare_batch

    b = prepare_batch(BOOK_TEXTS, 16)
    F.cross_entropy(ref(b.inputs).flatten(0, 1), b.targets.flatten()).backward()
    opt.step()
    for name, p in ref.named_parameters():
        assert torch.allclose(trained.get_parameter(name), p, atol=1e-7), name


def test_short_memory_falls_back_to_sgd_then_refuses():
    model = build_untrained_model(1, SMALL)
    assert choose_optimizer(model, available=10 * memory_needed(model, "adamw")) == "adamw"
    assert choose_optimizer(model, available=memory_needed(model, "sgd")) == "sgd"
    with pytest.raises(NotEnoughMemoryError, match="free memory"):
        choose_optimizer(model, available=memory_needed(model, "sgd") - 1)


# --- the command line ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_json_has_the_lesson_numbers(model, monkeypatch, capsys, book):
    import json

    import core.runtime.rng
    from core.__main__ import main

    monkeypatch.setattr(core.runtime.rng, "build_untrained_model", lambda seed=123: model)
    assert main(["loss", *BOOK_TEXTS, "--json"]) == 0
    les = json.loads(capsys.readouterr().out)["lessons"]
    _, _, z, y = book
    s = temperature_sweep(z, y)
    assert les["temperature_optimal"] == pytest.approx(s.best, rel=1e-6)
    c = confidence(z, y)
    assert les["entropy"][0] + les["entropy"][1] == pytest.approx(c["entropy"], rel=1e-6)
    u = les["units"]["batch"]
    assert u["loss_bits"] == pytest.approx(
        float(compute_loss(model, BOOK_TEXTS).loss) / math.log(2), rel=1e-6
    )
    assert u["predicted_bytes"] == 17 + 22  # " effort moves you" + " really like chocolate"
    assert u["bits_per_byte"] == pytest.approx(u["loss_bits"] * 6 / 39, rel=1e-6)
    # At T = 0.001 the perplexities leave float range: strict JSON still (as the rest of the report).
    assert main(["loss", *BOOK_TEXTS, "--temperature", "0.001", "--json"]) == 0
    out = capsys.readouterr().out
    assert (
        "Infinity" not in out
        and json.loads(out)["lessons"]["units"]["batch"]["perplexity_per_token"] == "inf"
    )


# --- figure 5.7's code, written for the batch -----------------------------------------------

NINE_TOKENS = "the cat sat on the mat and the dog"
RAGGED = ["Hi there", "The quick brown fox", "every effort moves you today"]


def _run_steps(model, texts, temperature=1.0):
    """The six steps' code as the app prints it for `texts`, run on the real model: it must give
    compute_loss's own numbers, so the listing cannot drift from what it claims to compute."""
    from core.lessons.report import step_code, summarize

    result = compute_loss(model, texts, temperature=temperature)
    s = summarize(result)
    code = "\n".join(step_code(s, k) for k in range(1, 7))
    scope = {"torch": torch, "model": model, "inputs": result.batch.inputs, "targets": result.batch.targets}
    exec(code, scope)
    return s, code, scope, result


@pytest.mark.slow
def test_step_code_for_one_text_of_nine_tokens(model, tokenizer):
    assert len(tokenizer.encode(NINE_TOKENS)) == 9
    s, code, scope, result = _run_steps(model, [NINE_TOKENS])
    assert "probas[text_idx, [0, 1, 2, 3, 4, 5, 6, 7], targets[text_idx]]" in code
    assert "target_probas_2" not in code and "torch.cat" not in code
    assert "log_probas = torch.log(target_probas_1)" in code
    assert "/ temperature" not in code
    assert float(scope["neg_avg_log_probas"]) == pytest.approx(float(result.neg_avg_log_probas), abs=1e-6)


@pytest.mark.slow
def test_step_code_for_a_ragged_batch_of_three_texts_at_temperature_2(model, tokenizer):
    lengths = [len(tokenizer.encode(t)) - 1 for t in RAGGED]
    assert len(set(lengths)) == 3  # ragged: each text its own number of positions
    s, code, scope, result = _run_steps(model, RAGGED, temperature=2.0)
    for k, n in enumerate(lengths):
        row = "targets[text_idx]" if n == max(lengths) else f"targets[text_idx, :{n}]"
        line = f"target_probas_{k + 1} = probas[text_idx, {list(range(n))}, {row}]"
        assert f"text_idx = {k}\n{line}" in code
    assert "torch.log(torch.cat((target_probas_1, target_probas_2, target_probas_3)))" in code
    assert "temperature = 2\n" in code and "logits = model(inputs) / temperature" in code
    torch.testing.assert_close(scope["log_probas"], result.log_probas, rtol=0, atol=1e-5)
    assert float(scope["neg_avg_log_probas"]) == pytest.approx(float(result.neg_avg_log_probas), abs=1e-6)


@pytest.mark.slow
def test_step_code_of_the_book_example_is_the_books_listing(model):
    from core.lessons.report import STEPS

    s, code, scope, _ = _run_steps(model, BOOK_TEXTS)
    assert "target_probas_1 = probas[text_idx, [0, 1, 2], targets[text_idx]]" in code
    assert STEPS[3][2] in code  # log_probas = torch.log(torch.cat((target_probas_1, target_probas_2)))
    assert f"{float(scope['neg_avg_log_probas']):.4f}" == "10.7940"


@pytest.mark.slow
def test_long_texts_index_their_positions_with_range(model):
    text = " ".join(["word"] * 12)
    _, code, scope, result = _run_steps(model, [text])
    assert "probas[text_idx, list(range(11)), targets[text_idx]]" in code
    assert float(scope["neg_avg_log_probas"]) == pytest.approx(float(result.neg_avg_log_probas), abs=1e-6)


# --- what differs from the book's example -----------------------------------------------------


def test_book_differences_name_each_change():
    from core.lessons.report import book_differences

    assert book_differences("untrained-124m", 123, BOOK_TEXTS, 1.0) == []
    diffs = book_differences("untrained-124m", 124, ["my text"], 2.0)
    assert diffs[0] == "seed 124 (the book: 123)"
    assert diffs[1] == "temperature 2 (the book: 1)"
    assert diffs[2].startswith("other texts")
    (other,) = book_differences("gpt2-124m", 123, BOOK_TEXTS, 1.0)
    assert other.startswith("another model (")
