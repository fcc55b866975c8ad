"""A visitor's requests as the app serves them: counted for the background work to wait on, and a
data-set pass in the fast plug-in's reused output memory, with the lessons' very numbers."""

from __future__ import annotations

import torch

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.lessons import dataset, loss
from core.models.loaders import LoaderSettings
from core.serving import requests
from core.serving.frozen import freeze
from core.serving.priority import FOREGROUND


def test_compute_loss_counts_as_a_visitors_request(model):
    count = FOREGROUND.shared().count
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(count.value))
    try:
        served = requests.compute_loss(model, ["every effort moves you"])
        plain = loss.compute_loss(model, ["every effort moves you"])  # the lesson itself knows no server
    finally:
        hook.remove()
    assert seen == [1, 0] and count.value == 0
    assert torch.equal(served.loss, plain.loss)


def test_a_data_set_pass_reuses_the_plug_ins_output_memory_with_the_same_losses(verdict_path):
    from core.fast import memory

    text = verdict_path.read_text(encoding="utf-8")[:4000]
    torch.manual_seed(11)
    model = freeze(
        GPTModel({**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 1})
    )
    pools = []
    handle = model.out_head.register_forward_hook(
        lambda module, inputs, out: pools.append(getattr(memory._outputs, "pool", None))
    )
    settings = LoaderSettings(context_length=32, stride=32)
    try:
        served = requests.evaluate_dataset(model, text, settings, num_batches=2)
        n = len(pools)
        plain = dataset.evaluate_dataset(model, text, settings, num_batches=2)
    finally:
        handle.remove()
    assert n == 3 and all(isinstance(p, dict) for p in pools[:n])  # 2 training batches, 1 validation
    assert pools[n:] == [None] * 3 and getattr(memory._outputs, "pool", None) is None  # let go after
    assert served.train_batch_losses == plain.train_batch_losses
    assert served.val_batch_losses == plain.val_batch_losses
