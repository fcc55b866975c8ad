"""Figure 5.7 on the book's example, padding, temperature, ranks, properties, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.book.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE
from core.errors import (
    ContextLengthError,
    EmptyTextError,
    InvalidParameterError,
    LossLensError,
    TooFewTokensError,
)
from core.lessons.loss import (
    IGNORE_INDEX,
    MAX_CHARS,
    MAX_POSITIONS,
    MAX_TEXTS,
    MAX_TOPK_ENTRIES,
    PAD_ID,
    compute_loss,
    loss_from_logits,
    prepare_batch,
    validate_options,
)
from core.lessons.report import summarize

BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]
BOOK_INPUTS = [[16833, 3626, 6100], [40, 1107, 588]]
BOOK_TARGETS = [[3626, 6100, 345], [1107, 588, 11311]]
BOOK_ARGMAX = [[16657, 339, 42826], [49906, 29669, 41751]]
BOOK_TARGET_PROBAS = [[7.4541e-05, 3.1061e-05, 1.1563e-05], [1.0337e-05, 5.6776e-05, 4.7559e-06]]
BOOK_LOG_PROBAS = [-9.5042, -10.3796, -11.3677, -11.4798, -9.7764, -12.2561]
PADDED_TEXTS = ["every effort moves you", "I really like chocolate very much, said the painter.", "Hi there"]


@pytest.fixture(scope="module")
def book(model):
    return compute_loss(model, BOOK_TEXTS)


@pytest.fixture(scope="module")
def padded(model):
    return compute_loss(model, PADDED_TEXTS, top_k=10)


# --- the book's contract ---------------------------------------------------------------


def test_book_batch(book):
    assert book.batch.inputs.tolist() == BOOK_INPUTS
    assert book.batch.targets.tolist() == BOOK_TARGETS
    assert book.batch.mask.all()


def test_book_shapes(book):
    assert tuple(book.logits.shape) == (2, 3, 50257)
    assert tuple(book.logits_flat.shape) == (6, 50257)
    assert tuple(book.targets_flat.shape) == (6,)
    assert tuple(book.probas.shape) == (2, 3, 50257)


def test_book_argmax(book):
    assert torch.argmax(book.probas, dim=-1).tolist() == BOOK_ARGMAX
    assert book.topk_ids[..., 0].tolist() == BOOK_ARGMAX


def test_book_target_probas(book):
    for row in range(2):
        for t in range(3):
            got, want = float(book.target_probas[row, t]), BOOK_TARGET_PROBAS[row][t]
            assert f"{got:.3e}" == f"{want:.3e}"  # 4 significant digits
            assert got == pytest.approx(want, rel=1e-4)


def test_book_log_probas_average_and_loss(book):
    assert [round(float(x), 4) for x in book.log_probas] == BOOK_LOG_PROBAS
    assert round(float(book.avg_log_probas), 4) == -10.7940
    assert round(float(book.neg_avg_log_probas), 4) == 10.7940
    assert round(float(book.loss), 4) == 10.7940
    assert abs(book.difference) < 1e-5
    # The built-in loss is exactly F.cross_entropy on the flattened tensors, as in the book.
    assert torch.equal(book.loss, F.cross_entropy(book.logits_flat, book.targets_flat))


def test_book_perplexity(book):
    assert book.perplexity == pytest.approx(48725.8, rel=1e-5)
    assert book.perplexity == pytest.approx(math.exp(float(book.neg_avg_log_probas)), rel=1e-4)


def test_steps_follow_from_each_other(book):
    torch.testing.assert_close(book.probas, torch.softmax(book.logits, dim=-1))
    picked = book.probas[torch.arange(2)[:, None], torch.arange(3), book.batch.targets]
    assert torch.equal(book.target_probas, picked)
    assert torch.equal(book.log_probas, torch.log(torch.cat((picked[0], picked[1]))))
    assert torch.equal(book.avg_log_probas, torch.mean(book.log_probas))
    assert torch.equal(book.neg_avg_log_probas, -book.avg_log_probas)
    torch.testing.assert_close(book.surprisal.flatten(), -book.log_probas, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compute_loss_leaves_the_shared_model_alone(model, book):
    before = model.state_dict()["out_head.weight"].sum().item(), model.training
    compute_loss(model, BOOK_TEXTS, temperature=0.5)
    assert (model.state_dict()["out_head.weight"].sum().item(), model.training) == before
    assert not book.logits.requires_grad


# --- ranks and top-k against brute force on the full vocabulary --------------------------


def _brute_rank(row_logits: torch.Tensor, target: int) -> int:
    values = row_logits.tolist()
    return 1 + sum(v > values[target] for v in values)


@pytest.mark.parametrize("row, t", [(0, 0), (1, 2), (1, 7), (2, 0)])
def test_rank_and_topk_brute_force(padded, row, t):
    logits, target = padded.logits[row, t], int(padded.batch.targets[row, t])
    assert int(padded.target_ranks[row, t]) == _brute_rank(logits, target)
    order = torch.argsort(padded.probas[row, t], descending=True, stable=True)
    assert padded.topk_ids[row, t].tolist() == order[:10].tolist()
    assert torch.equal(padded.topk_probas[row, t], padded.probas[row, t][order[:10]])


def test_book_ranks(book):
    for row in range(2):
        for t in range(3):
            assert int(book.target_ranks[row, t]) == _brute_rank(book.logits[row, t], BOOK_TARGETS[row][t])


# --- padding ----------------------------------------------------------------------------


def test_padding_layout(padded):
    lengths = [len(ids) - 1 for ids in padded.batch.token_ids]
    width = max(lengths)
    assert tuple(padded.batch.inputs.shape) == (3, width)
    for row, n in enumerate(lengths):
        assert padded.batch.inputs[row, n:].eq(PAD_ID).all()
        assert padded.batch.targets[row, n:].eq(IGNORE_INDEX).all()
        assert padded.target_probas[row, n:].isnan().all() and padded.surprisal[row, n:].isnan().all()
        assert padded.target_ranks[row, n:].eq(0).all() and padded.target_ranks[row, :n].ge(1).all()
    assert padded.num_tokens == sum(lengths) == len(padded.log_probas) < 3 * width


def test_padded_loss_is_cross_entropy_with_ignore_index(padded):
    expected = F.cross_entropy(padded.logits_flat, padded.targets_flat, ignore_index=-100)
    assert torch.equal(padded.loss, expected)
    assert float(padded.neg_avg_log_probas) == pytest.approx(float(expected), rel=1e-5)
    # Counting the padded positions would give a different number.
    assert (
        abs(float(F.cross_entropy(padded.logits_flat, padded.targets_flat.clamp(min=0))) - float(expected))
        > 1e-3
    )


@pytest.mark.slow
def test_padded_batch_matches_each_text_alone(model, padded):
    losses, counts, flat = [], [], 0
    for row, text in enumerate(PADDED_TEXTS):
        alone = compute_loss(model, [text], top_k=10)
        n = alone.num_tokens
        torch.testing.assert_close(padded.logits[row, :n], alone.logits[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            padded.target_probas[row, :n], alone.target_probas[0], rtol=1e-4, atol=1e-9
        )
        torch.testing.assert_close(padded.log_probas[flat : flat + n], alone.log_probas, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded.surprisal[row, :n], alone.surprisal[0], rtol=1e-5, atol=1e-5)
        # Ranks count logits above the target's: float noise may move a near-tie by one or two.
        assert (padded.target_ranks[row, :n] - alone.target_ranks[0]).abs().max() <= 2
        losses.append(float(alone.loss))
        counts.append(n)
        flat += n
    weighted = sum(n * loss for n, loss in zip(counts, losses, strict=True)) / sum(counts)
    assert float(padded.loss) == pytest.approx(weighted, rel=1e-5)


def test_summary_rows_line_up_with_padding(padded):
    summary = summarize(padded)
    assert [len(t["positions"]) for t in summary["texts"]] == [len(ids) - 1 for ids in padded.batch.token_ids]
    assert summary["padded"] is True and summary["num_tokens"] == padded.num_tokens
    for row, text in enumerate(summary["texts"]):
        for p in text["positions"]:
            t = p["position"]
            assert p["target_id"] == int(padded.batch.targets[row, t])
            assert p["log_proba"] == pytest.approx(math.log(float(padded.target_probas[row, t])), rel=1e-5)
            assert p["rank"] == int(padded.target_ranks[row, t])
            assert p["top_k"][0]["id"] == p["argmax_id"] == int(padded.topk_ids[row, t, 0])
            assert len(p["top_k"]) == 10
            for j, entry in enumerate(p["top_k"]):
                assert entry["id"] == int(padded.topk_ids[row, t, j])
                assert entry["proba"] == float(padded.topk_probas[row, t, j])
                assert entry["logit"] == float(padded.logits[row, t, entry["id"]])


# --- temperature ------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_temperature_applies_to_every_step(book, temperature):
    raw, targets = book.logits, book.batch.targets  # temperature 1: the model's own logits
    r = loss_from_logits(raw, targets, top_k=5, temperature=temperature)
    scaled = raw / temperature
    assert torch.equal(r.logits, scaled)
    assert torch.equal(r.probas, torch.softmax(scaled, dim=-1))
    picked = r.probas.gather(-1, targets[..., None])[..., 0]
    assert torch.equal(r.target_probas, picked)
    assert torch.equal(r.log_probas, torch.log(picked.flatten()))
    assert torch.equal(r.neg_avg_log_probas, -torch.log(picked).mean())
    assert torch.equal(r.loss, F.cross_entropy(scaled.flatten(0, 1), targets.flatten()))
    torch.testing.assert_close(
        r.surprisal, -torch.log_softmax(scaled, -1).gather(-1, targets[..., None])[..., 0]
    )
    assert torch.equal(r.topk_probas, torch.softmax(scaled, -1).topk(5, dim=-1).values)
    assert float(r.neg_avg_log_probas) == pytest.approx(float(r.loss), rel=1e-5)
    assert r.temperature == temperature
    if temperature == 2.0:  # dividing by 2 is exact, so the order of the logits is kept
        assert torch.equal(r.target_ranks, book.target_ranks)
    # Sharper (T < 1) or flatter (T > 1): the loss moves away from the T = 1 value.
    assert abs(float(r.loss) - float(book.loss)) > 0.01


def test_temperature_through_compute_loss(model, book):
    r = compute_loss(model, BOOK_TEXTS, temperature=2.0)
    torch.testing.assert_close(r.logits, book.logits / 2, rtol=1e-5, atol=1e-6)
    assert summarize(r)["temperature"] == 2.0


def test_underflow_manual_inf_builtin_finite(book):
    """At T = 1e-3 some target probabilities underflow to 0: log gives -inf, the by-hand
    loss is inf, while F.cross_entropy (log-softmax inside) stays finite."""
    r = loss_from_logits(book.logits, book.batch.targets, temperature=1e-3)
    assert (r.target_probas == 0).any()
    assert math.isinf(float(r.neg_avg_log_probas)) and float(r.neg_avg_log_probas) > 0
    assert math.isfinite(float(r.loss)) and float(r.loss) > 100
    assert torch.isfinite(r.stable_log_probas).all() and torch.isfinite(r.surprisal).all()
    assert float(r.loss) == pytest.approx(float(-r.stable_log_probas.mean()), rel=1e-5)
    s = summarize(r)
    assert s["neg_avg_log_probas"] == "inf" and s["difference"] == "inf" and "-inf" in s["log_probas"]


def test_uniform_logits_give_log_vocab():
    targets = torch.tensor([[3, 1, IGNORE_INDEX]])
    r = loss_from_logits(torch.zeros(1, 3, 7), targets, top_k=7)
    assert float(r.loss) == pytest.approx(math.log(7), rel=1e-6)
    assert r.perplexity == pytest.approx(7, rel=1e-6)
    assert r.target_ranks.tolist() == [[1, 1, 0]]  # no token is preferred over a tie


# --- property tests on random logits ----------------------------------------------------


@st.composite
def random_batches(draw):
    b, t, v = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 40))
    lengths = draw(st.lists(st.integers(0, t), min_size=b, max_size=b).filter(any))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(b, t, v, generator=gen) * draw(st.sampled_from([0.01, 1.0, 5.0, 30.0]))
    targets = torch.randint(0, v, (b, t), generator=gen)
    for row, n in enumerate(lengths):
        targets[row, n:] = IGNORE_INDEX
    temperature = draw(st.sampled_from([1.0, 0.05, 0.3, 2.0, 25.0]) | st.floats(0.01, 100.0))
    return logits, targets, temperature, draw(st.integers(1, v))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_batches())
def test_manual_equals_builtin_on_random_logits(case):
    logits, targets, temperature, top_k = case
    r = loss_from_logits(logits, targets, top_k=top_k, temperature=temperature)
    mask = targets != IGNORE_INDEX
    scaled = logits / temperature
    per_token = F.cross_entropy(scaled.flatten(0, 1), targets.flatten(), reduction="none")
    assert torch.equal(r.loss, F.cross_entropy(scaled.flatten(0, 1), targets.flatten(), ignore_index=-100))
    torch.testing.assert_close(r.stable_log_probas, -per_token[mask.flatten()], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.surprisal[mask], -r.stable_log_probas)
    assert len(r.log_probas) == int(mask.sum())
    loss = float(r.loss)
    assert r.perplexity == (pytest.approx(math.exp(loss)) if loss < 709 else math.inf)
    picked = r.target_probas[mask]
    if bool((picked >= torch.finfo(torch.float32).tiny).all()):  # no underflow
        assert float(r.neg_avg_log_probas) == pytest.approx(float(r.loss), rel=1e-5, abs=1e-5)
    elif bool((picked == 0).any()):
        assert math.isinf(float(r.neg_avg_log_probas)) and math.isfinite(float(r.loss))
    # Ranks: 1 + how many logits are strictly larger; top-k sorted and consistent.
    for row, t in mask.nonzero().tolist():
        assert int(r.target_ranks[row, t]) == _brute_rank(r.logits[row, t], int(targets[row, t]))
    assert (r.target_ranks[~mask] == 0).all()
    assert r.topk_ids.shape[-1] == top_k
    assert (r.topk_probas[..., :-1] >= r.topk_probas[..., 1:]).all()
    assert torch.equal(r.probas.gather(-1, r.topk_ids), r.topk_probas)


def test_all_padding_is_refused():
    with pytest.raises(TooFewTokensError):
        loss_from_logits(torch.zeros(1, 2, 5), torch.full((1, 2), IGNORE_INDEX))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("texts", [[""], ["   \n\t "], [], ["fine text", ""]])
def test_empty_text(model, texts):
    with pytest.raises(EmptyTextError, match="empty|at least one"):
        compute_loss(model, texts)


@pytest.mark.parametrize("text", ["Hi", " chocolate", "<|endoftext|>", "."])
def test_single_token(model, text):
    with pytest.raises(TooFewTokensError, match="single token.*at least two"):
        compute_loss(model, [text])


def test_not_a_string(model):
    with pytest.raises(InvalidParameterError, match="Text 1 is bytes, not text"):
        compute_loss(model, [b"\x89PNG\r\n\x1a\n\x00\x00"])


@pytest.mark.slow
def test_context_length_limit(model):
    at_limit = "a" + " a" * 256  # 257 tokens: 256 inputs, 256 predictions
    r = compute_loss(model, [at_limit], top_k=1)
    assert r.logits.shape[1] == 256 and math.isfinite(float(r.loss))
    with pytest.raises(ContextLengthError) as e:
        compute_loss(model, ["ok then", at_limit + " a"])
    message = str(e.value)
    assert "Text 2 has 258 tokens" in message and "256" in message and "257" in message


def test_too_many_texts():
    with pytest.raises(InvalidParameterError, match=f"{MAX_TEXTS + 1} texts.*at most {MAX_TEXTS}"):
        prepare_batch(["hello there"] * (MAX_TEXTS + 1), 256)
    assert len(prepare_batch(["hello there"] * MAX_TEXTS, 256).token_ids) == MAX_TEXTS


def test_too_many_positions():
    long = "a" + " a" * 255  # 255 positions
    texts = [long] * (MAX_POSITIONS // 255 + 1)
    with pytest.raises(ContextLengthError, match=f"at most {MAX_POSITIONS}"):
        prepare_batch(texts, 256)
    assert prepare_batch(texts[:-1], 256).inputs.numel() <= MAX_POSITIONS


def test_huge_paste_is_refused_before_tokenizing():
    class NoTokenizer:
        def encode(self, *args, **kwargs):
            raise AssertionError("tokenized a huge paste")

    with pytest.raises(ContextLengthError, match="200,001 characters; at most 200,000"):
        prepare_batch(["x" * (MAX_CHARS + 1)], 256, tokenizer=NoTokenizer())


@pytest.mark.parametrize("top_k", [0, -1, VOCAB_SIZE + 1, True, 2.5, "5", None])
def test_invalid_top_k(model, top_k):
    with pytest.raises(InvalidParameterError, match="top-k must be a whole number from 1 to 50257"):
        compute_loss(model, BOOK_TEXTS, top_k=top_k)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), float("-inf"), "hot", None])
def test_invalid_temperature(model, temperature):
    with pytest.raises(InvalidParameterError, match="temperature must be"):
        compute_loss(model, BOOK_TEXTS, temperature=temperature)


@pytest.mark.slow
def test_top_k_lists_are_bounded(model):
    long = "a" + " a" * 255  # 255 predictions
    limit = MAX_TOPK_ENTRIES // 255
    assert (
        len(summarize(compute_loss(model, [long], top_k=limit))["texts"][0]["positions"][-1]["top_k"])
        == limit
    )
    with pytest.raises(InvalidParameterError, match=f"top-k {limit + 1} x 255 positions.*at most 500,000"):
        compute_loss(model, [long], top_k=limit + 1)


def test_errors_are_typed_value_errors():
    for cls in (EmptyTextError, TooFewTokensError, ContextLengthError, InvalidParameterError):
        assert issubclass(cls, LossLensError) and issubclass(cls, ValueError)


def test_top_k_over_the_full_vocabulary(book):
    validate_options(VOCAB_SIZE, 1.0, VOCAB_SIZE)
    r = loss_from_logits(book.logits, book.batch.targets, top_k=VOCAB_SIZE)
    assert r.topk_ids.shape == (2, 3, VOCAB_SIZE)
    assert torch.equal(r.topk_ids[..., 0], book.topk_ids[..., 0])


# --- texts that must work ---------------------------------------------------------------

HARD_TEXTS = [
    "Hello<|endoftext|>World",
    "<|im_start|>user hi<|im_end|>",
    "I 💜 chocolate 🍫!",
    "مرحبا بالعالم",
    "我真的很喜欢巧克力",
    "मुझे चॉकलेट बहुत पसंद है",
    "tab\there\x00nul\u200bzero\u202ebidi\x1b[31m",
]


@pytest.mark.slow
def test_hard_texts_work(model, tokenizer):
    r = compute_loss(model, HARD_TEXTS, top_k=3)
    assert math.isfinite(float(r.loss))
    assert float(r.neg_avg_log_probas) == pytest.approx(float(r.loss), rel=1e-5)
    assert r.batch.token_ids[0].count(ENDOFTEXT_ID) == 1  # <|endoftext|> is the special token
    assert ENDOFTEXT_ID not in r.batch.token_ids[1]  # other <|...|> strings are plain text
    summary = summarize(r)
    for text, ids, info in zip(HARD_TEXTS, r.batch.token_ids, summary["texts"], strict=True):
        assert tokenizer.decode(ids) == text  # nothing lost on the way
        assert info["text"] == text and len(info["tokens"]) == len(ids)
        shown = "".join(info["tokens"])
        assert "\ufffd" not in shown and "\x00" not in shown and "\u202e" not in shown
    assert any(summary["texts"][2]["byte_tokens"])  # the emoji is split into byte pieces


def test_transposed_logits_give_the_same_result_as_rows(book):
    """The model's out_head hands over a transposed view; the steps read it as plain rows."""
    rows = book.logits.contiguous()
    view = rows.flatten(0, 1).t().contiguous().t().reshape(rows.shape)  # same values, column-major
    assert not view.is_contiguous()
    a = loss_from_logits(rows, book.batch.targets)
    b = loss_from_logits(view, book.batch.targets)
    for name in ("probas", "target_probas", "log_probas", "loss", "surprisal", "target_ranks", "topk_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert b.logits.is_contiguous() and b.probas.is_contiguous()
