"""Two models token by token, against an independent float64 computation on two small random models."""

from __future__ import annotations

import math

import pytest
import torch

from core.book.model import GPT_CONFIG_124M
from core.lessons.divergence import compare_models
from core.lessons.loss import prepare_batch
from core.runtime.rng import build_untrained_model

SMALL = {**GPT_CONFIG_124M, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
TEXTS = ["every effort moves you", "I really like chocolate and cake"]


@pytest.mark.slow
def test_surprisal_difference_and_kl_on_two_small_models():
    a, b = build_untrained_model(1, SMALL), build_untrained_model(2, SMALL)
    r = compare_models(a, b, TEXTS)
    batch = prepare_batch(TEXTS, 16)
    n = 0
    with torch.no_grad():
        for ids in batch.token_ids:
            x = torch.tensor([ids[:-1]])
            pa = torch.softmax(a(x)[0].double(), -1)  # each text alone: no padding shared with the code
            pb = torch.softmax(b(x)[0].double(), -1)
            for t, target in enumerate(ids[1:]):
                # KL by brute force: every one of the 50,257 tokens, in Python floats.
                kl = sum(
                    p * math.log(p / q) for p, q in zip(pa[t].tolist(), pb[t].tolist(), strict=True) if p > 0
                )
                assert r["kl"][n] == pytest.approx(kl, rel=1e-4, abs=1e-6)
                assert r["surprisal_a"][n] == pytest.approx(-math.log(float(pa[t, target])), abs=1e-5)
                assert r["difference"][n] == pytest.approx(
                    math.log(float(pb[t, target]) / float(pa[t, target])), abs=1e-5
                )
                n += 1
    assert n == len(r["kl"]) and all(k > 0 for k in r["kl"])
    same = compare_models(a, a, TEXTS)
    assert max(same["kl"]) < 1e-6 and max(map(abs, same["difference"])) == 0
