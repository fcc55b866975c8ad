"""GPTModel draws the book's weights and computes the book's logits (ch04 reference code), as the
book's own classes (`book_model`) and as the app serves it (`model`: frozen, with the CPU plug-in
unless LOSSLENS_FAST=0; tests/fast/test_switch.py runs these tests both ways)."""

from __future__ import annotations

import inspect

import pytest
import torch

from core.book import model as model_module
from core.book.model import GPT2_SMALL_CONFIG, GPT_CONFIG_124M, GPTModel
from core.runtime.rng import build_untrained_model

# Its module fixtures are built once: under pytest-xdist the module runs in one worker.
pytestmark = pytest.mark.xdist_group("book-model")

BOOK_INPUTS = torch.tensor([[16833, 3626, 6100], [40, 1107, 588]])
BOOK_ARGMAX = [[16657, 339, 42826], [49906, 29669, 41751]]


@pytest.fixture(scope="module")
def reference_model():
    """The book's own GPTModel (PyPI llms-from-scratch), seed 123, eval mode."""
    ch04 = pytest.importorskip(
        "llms_from_scratch.ch04",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )
    torch.manual_seed(123)
    return ch04.GPTModel(GPT_CONFIG_124M).eval()


@pytest.fixture(scope="module")
def book_model():
    """The book's classes as they are: seed 123, frozen, no plug-in."""
    return build_untrained_model(123)


def _n_params(model, skip_out_head=False):
    return sum(
        p.numel() for n, p in model.named_parameters() if not (skip_out_head and n.startswith("out_head"))
    )


@pytest.mark.slow
def test_seed_123_weights_equal_the_reference(model, book_model, reference_model):
    ref = reference_model.state_dict()  # its parameters and its causal-mask buffers
    assert {n.rsplit(".", 1)[-1] for n, _ in reference_model.named_buffers()} == {"mask"}
    for ours in (book_model.state_dict(), model.state_dict()):  # packed weights read back plain
        assert ours.keys() == ref.keys()
        for name, p in ref.items():
            assert torch.equal(ours[name], p), name


def test_the_book_s_classes_compute_the_book_s_logits_to_the_bit(book_model, reference_model):
    torch.manual_seed(0)
    x = torch.randint(0, GPT_CONFIG_124M["vocab_size"], (2, 64))
    with torch.inference_mode():
        assert torch.equal(book_model(x), reference_model(x))
        assert torch.equal(book_model(BOOK_INPUTS), reference_model(BOOK_INPUTS))


def test_the_module_holds_the_book_s_classes_in_the_book_s_order():
    classes = [
        n
        for n, v in vars(model_module).items()
        if inspect.isclass(v) and v.__module__ == model_module.__name__
    ]
    assert classes == [
        "MultiHeadAttention",
        "LayerNorm",
        "GELU",
        "FeedForward",
        "TransformerBlock",
        "GPTModel",
    ]
    assert len(inspect.getsource(model_module).splitlines()) <= 200


@pytest.mark.slow
def test_logits_equal_the_reference(model, reference_model):
    torch.manual_seed(0)
    longer = torch.randint(0, GPT_CONFIG_124M["vocab_size"], (2, 64))
    for inputs in (BOOK_INPUTS, longer):
        with torch.inference_mode():
            ours, ref = model(inputs), reference_model(inputs)
        assert ours.shape == ref.shape == (*inputs.shape, GPT_CONFIG_124M["vocab_size"])
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_book_argmax_token_ids(model):
    with torch.inference_mode():
        assert model(BOOK_INPUTS).argmax(-1).tolist() == BOOK_ARGMAX


def test_untrained_model_is_frozen_and_deterministic(model, book_model):
    for m in (model, book_model):
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())
        with torch.inference_mode():
            a, b = m(BOOK_INPUTS), m(BOOK_INPUTS)  # dropout is off
        assert torch.equal(a, b)


@pytest.mark.slow
def test_seed_changes_the_weights(model):
    other = build_untrained_model(7, {**GPT_CONFIG_124M, "n_layers": 1})
    assert not torch.equal(other.tok_emb.weight, model.tok_emb.weight)


def test_attention_is_causal(model):
    """Changing a later token leaves every earlier position's logits unchanged."""
    inputs = torch.tensor([[16833, 3626, 6100, 345, 40, 1107]])
    changed = inputs.clone()
    changed[0, 4:] = torch.tensor([11311, 13])
    with torch.inference_mode():
        a, b = model(inputs), model(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_longer_than_context_is_refused(model, book_model):
    """The book's model has no position past its context: the embedding refuses (the app's loss
    pipeline checks lengths before, with a message)."""
    too_long = torch.zeros(1, GPT_CONFIG_124M["context_length"] + 1, dtype=torch.long)
    for m in (model, book_model):
        with pytest.raises(IndexError):
            m(too_long)


def test_book_config_and_parameter_counts(model):
    assert GPT_CONFIG_124M == {
        "vocab_size": 50257,
        "context_length": 256,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }
    assert model.pos_emb.weight.shape == (256, 768)
    assert model.out_head.bias is None and model.trf_blocks[0].att.W_query.bias is None
    assert model.trf_blocks[0].norm1.eps == 1e-5
    # Chapter 4 prints these for context 1024: 163,009,536 and 124,412,160 with weight tying.
    with torch.device("meta"):
        book_ch4 = GPTModel({**GPT_CONFIG_124M, "context_length": 1024})
    assert _n_params(book_ch4) == 163_009_536
    assert _n_params(book_ch4, skip_out_head=True) == 124_412_160
    assert _n_params(model) == 163_009_536 - (1024 - 256) * 768


def test_gpt2_small_shape():
    """OpenAI's GPT-2 small: context 1024 and biased q/k/v; 124,439,808 parameters when tied."""
    assert GPT2_SMALL_CONFIG["context_length"] == 1024 and GPT2_SMALL_CONFIG["qkv_bias"] is True
    with torch.device("meta"):
        small = GPTModel(GPT2_SMALL_CONFIG)
    assert small.pos_emb.weight.shape == (1024, 768)
    att = small.trf_blocks[0].att
    assert att.W_query.bias.shape == att.W_key.bias.shape == att.W_value.bias.shape == (768,)
    assert len(small.trf_blocks) == 12 and att.num_heads == 12
    assert _n_params(small, skip_out_head=True) == 124_439_808
