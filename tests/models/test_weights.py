"""GPT-2 weights: the Hub-format mapping checked against transformers, and the offline paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import WeightsError
from core.models.hub import cached_gpt2_path, download_gpt2_safetensors, memory_warning, weights_env
from core.models.weights import load_gpt2_weights, map_gpt2_state_dict, read_safetensors

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved by transformers as safetensors, with every
    parameter (biases and layer norms too) randomised so a wrong mapping cannot pass."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_positions=128)
    hf_model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.normal_(0.0, 0.2)
    hf_model.eval()
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf_model.save_pretrained(folder, safe_serialization=True)
    return hf_model, folder / "model.safetensors"


def test_logits_and_loss_match_transformers(hf_checkpoint, tokenizer):
    hf_model, path = hf_checkpoint
    model = load_gpt2_weights(path)
    assert model.cfg["n_layers"] == 2 and model.cfg["n_heads"] == 4 and model.cfg["context_length"] == 128
    ids = torch.tensor(
        [tokenizer.encode("every effort moves you forward"), tokenizer.encode("I really like chocolate cake")]
    )
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_model(ids, labels=ids)  # transformers shifts the labels itself
    assert ours.abs().max() > 1.0  # the randomised weights give logits far from zero
    torch.testing.assert_close(ours, theirs.logits, atol=1e-5, rtol=1e-5)
    # Our side: inputs ids[:, :-1] predict targets ids[:, 1:], as the book's prepare step.
    with torch.no_grad():
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert loss.item() == pytest.approx(theirs.loss.item(), abs=1e-5)


def test_out_head_is_tied_not_copied(hf_checkpoint):
    model = load_gpt2_weights(hf_checkpoint[1])
    assert model.out_head.weight is model.tok_emb.weight
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_loads_hub_layout_without_prefix_and_with_mask_buffers(hf_checkpoint):
    hf_model, path = hf_checkpoint
    hub = {k.removeprefix("transformer."): v for k, v in read_safetensors(path).items()}
    hub["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))  # old GPT-2 files keep the mask
    model = load_gpt2_weights(hub, {**_tiny_cfg()})
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-5, rtol=1e-5)


def _tiny_cfg():
    return {
        "vocab_size": 50257,
        "context_length": 128,
        "emb_dim": 64,
        "n_heads": 4,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }


def test_shape_mismatch_is_a_weights_error(hf_checkpoint):
    sd = read_safetensors(hf_checkpoint[1])
    with pytest.raises(WeightsError, match="shape"):
        map_gpt2_state_dict(sd, {**_tiny_cfg(), "emb_dim": 128, "n_heads": 4})
    with pytest.raises(WeightsError, match="missing"):
        map_gpt2_state_dict(sd, {**_tiny_cfg(), "n_layers": 3})
    with pytest.raises(WeightsError, match="Unexpected"):
        map_gpt2_state_dict(sd, {**_tiny_cfg(), "n_layers": 1})


def test_only_safetensors_are_read(tmp_path, hf_checkpoint):
    pickled = tmp_path / "pytorch_model.bin"
    torch.save({"wte.weight": torch.zeros(3, 2)}, pickled)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_gpt2_weights(pickled)
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes(hf_checkpoint[1].read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_gpt2_weights(truncated)
    with pytest.raises(WeightsError, match="not found"):
        load_gpt2_weights(tmp_path / "missing.safetensors")


def test_download_uses_hub_with_its_cache(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert download_gpt2_safetensors("355M", cache_dir=tmp_path) == tmp_path / "model.safetensors"
    assert calls == [
        {
            "repo_id": "openai-community/gpt2-medium",
            "filename": "model.safetensors",
            "cache_dir": str(tmp_path),
        }
    ]


@pytest.mark.parametrize("error", ["connect", "offline-mode", "http"])
def test_network_failure_is_a_clear_weights_error(monkeypatch, tmp_path, error):
    import huggingface_hub
    from huggingface_hub import errors

    try:  # the HTTP client of the installed huggingface_hub
        import httpx2 as httpx
    except ImportError:
        import httpx

    def fail(**kwargs):
        if error == "connect":
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
        if error == "offline-mode":
            raise errors.OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled.")
        raise OSError("503 Service Unavailable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.delenv(weights_env("124M"), raising=False)
    with pytest.raises(WeightsError) as info:
        download_gpt2_safetensors("124M", cache_dir=tmp_path)
    message = str(info.value)
    assert "openai-community/gpt2/model.safetensors" in message and weights_env("124M") in message


def test_offline_mode_reads_the_hub_cache_without_network(monkeypatch, tmp_path, hf_checkpoint):
    """The real hf_hub_download with HF_HUB_OFFLINE: an empty cache fails clearly, a filled one works."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(weights_env("124M"), raising=False)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        download_gpt2_safetensors("124M", cache_dir=tmp_path)
    repo = tmp_path / "models--openai-community--gpt2"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(hf_checkpoint[1].read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    path = download_gpt2_safetensors("124M", cache_dir=tmp_path)
    assert path.read_bytes() == hf_checkpoint[1].read_bytes()
    assert cached_gpt2_path("124M", cache_dir=tmp_path) == path
    assert cached_gpt2_path("355M", cache_dir=tmp_path) is None


def test_local_file_via_environment(monkeypatch, tmp_path, hf_checkpoint):
    monkeypatch.setenv(weights_env("124M"), str(hf_checkpoint[1]))
    assert download_gpt2_safetensors("124M") == hf_checkpoint[1]
    monkeypatch.setenv(weights_env("124M"), str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        download_gpt2_safetensors("124M")
    with pytest.raises(WeightsError, match="Unknown GPT-2 size"):
        download_gpt2_safetensors("7B")


def test_memory_warning_for_the_large_sizes():
    assert memory_warning("124M") is None
    for size in ("355M", "774M", "1558M"):
        assert "GB of RAM" in memory_warning(size)
