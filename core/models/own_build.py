"""A GPTModel from the reader's own tensors (core.models.own_model reads the files): the
configuration from the tensors' names and shapes, the checks with their messages (keys, shapes,
NaN, free memory), and a digest that names the content."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.errors import WeightsError
from core.models.masks import with_masks, without_masks
from core.models.weights import build_model, infer_config, require_free_ram, strip_prefix

# GPT-2's widths and their head counts (64-dim heads); any other width needs the count given.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
MEMORY_MARGIN = 1.15  # the weights plus room for a forward pass, as a share of the weights
FEW = 5  # names quoted in a message about missing or unexpected keys
_BOOK_LEFTOVERS = re.compile(r"trf_blocks\.\d+\.att\.mask$")  # the book's causal-mask buffers


@dataclass
class OwnModel:
    model: GPTModel
    name: str  # the file or folder name, for labels
    kind: str  # a key of core.models.own_model.FORMATS
    cfg: dict
    digest: str  # sha256 of the configuration and every weight: equal digests, equal models
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A model key that names this content: caches keyed by it hold only this model's results."""
        return f"own-{self.digest[:16]}"

    def describe(self) -> str:
        c = self.cfg
        params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        return (
            f"{params / 1e6:,.1f}M parameters: {c['n_layers']} layers, width {c['emb_dim']}, "
            f"{c['n_heads']} heads, context {c['context_length']}, vocabulary {c['vocab_size']:,}, "
            f"qkv_bias {c['qkv_bias']}"
        )


def not_a_model(name: str, detail: str = "") -> WeightsError:
    return WeightsError(
        f"{name} is not a model file{': ' + detail if detail else ''}. LossLens reads the book's "
        "model.pth or model_and_optimizer.pth (torch.save), a .safetensors file, or a Hugging Face folder."
    )


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.compile's `_orig_mod.` and DataParallel's `module.` wrap the book's names."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def from_mapping(sd, name, n_heads, kind, hf_config, mapped) -> OwnModel:
    sd = _strip_wrappers(sd)
    if "tok_emb.weight" in sd:
        return _book_model(sd, name, n_heads, kind, mapped)
    if "wte.weight" in (sd := strip_prefix(sd)):
        return hf_model(sd, name, n_heads, hf_config, kind, mapped)
    raise not_a_model(
        name,
        "it has neither the book's tok_emb.weight nor GPT-2's wte.weight; its tensors are "
        + ", ".join(list(sd)[:FEW]),
    )


def _heads(emb_dim: int, n_heads: int | None, hf_config: dict | None = None) -> int:
    heads = n_heads or (hf_config or {}).get("n_head") or GPT2_HEADS.get(emb_dim)
    if heads is None:
        raise WeightsError(
            f"The model's width is {emb_dim}, not one of GPT-2's (768, 1024, 1280, 1600), so its number "
            "of attention heads cannot be read from the weights: give the n_heads you trained with "
            "(the Heads field, or --heads N)."
        )
    if emb_dim % int(heads):
        raise WeightsError(
            f"{heads} heads do not divide the width {emb_dim}; give the n_heads you trained with."
        )
    return int(heads)


def book_config(sd: Mapping[str, torch.Tensor], n_heads: int | None = None) -> dict:
    """GPTModel's config from the book's tensor names and shapes."""
    emb = sd["tok_emb.weight"]
    if emb.dim() != 2:
        raise WeightsError(
            f"The shapes fit no GPT: tok_emb.weight is {tuple(emb.shape)}, "
            "a token embedding is (vocabulary, width)."
        )
    vocab, width = emb.shape
    pos = sd.get("pos_emb.weight")
    if pos is None:
        raise WeightsError("The weights are missing key pos_emb.weight (the position embedding).")
    if pos.dim() != 2 or pos.shape[1] != width:
        raise WeightsError(
            f"The shapes fit no GPT: pos_emb.weight is {tuple(pos.shape)}, but with a token embedding of "
            f"width {width} it must be (context length, {width})."
        )
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"trf_blocks\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        gaps = sorted(set(range(max(layers) + 1)) - set(layers))
        raise WeightsError(
            f"The weights are missing keys: every tensor of block(s) {', '.join(map(str, gaps[:FEW]))} "
            f"(trf_blocks.{gaps[0]}.…) of {max(layers) + 1}."
        )
    return {
        **GPT_CONFIG_124M,
        "vocab_size": int(vocab),
        "emb_dim": int(width),
        "context_length": int(pos.shape[0]),
        "n_layers": len(layers),
        "n_heads": _heads(int(width), n_heads),
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in sd,
    }


def _book_model(sd: dict, name: str, n_heads, kind: str, mapped: bool) -> OwnModel:
    cfg = book_config(sd, n_heads)
    with torch.device("meta"):
        model = GPTModel(cfg)
    expected = {k: tuple(v.shape) for k, v in without_masks(model.state_dict()).items()}
    present = {k for k in sd if not _BOOK_LEFTOVERS.search(k)}
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in sd if k in present and k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:FEW])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:FEW])}")
        raise WeightsError(
            f"{name} does not fit the book's GPTModel ({cfg['n_layers']} layers, qkv_bias "
            f"{cfg['qkv_bias']}): {'; '.join(parts)}."
        )
    wrong = [(k, tuple(sd[k].shape), s) for k, s in expected.items() if tuple(sd[k].shape) != s]
    if wrong:
        k, got, want = wrong[0]
        raise WeightsError(
            f"The shapes of {name} fit no GPT: {k} is {got}, but a GPT of width {cfg['emb_dim']}, "
            f"vocabulary {cfg['vocab_size']:,} and context {cfg['context_length']} needs {want}"
            + (f" ({len(wrong)} tensors differ)." if len(wrong) > 1 else ".")
        )
    nonfloat = [k for k in expected if not sd[k].is_floating_point()]
    if nonfloat:
        raise WeightsError(f"{name}: {nonfloat[0]} holds {sd[nonfloat[0]].dtype} values, not weights.")
    # The copies about to be made (all of a mapped file; else only what is not float32 yet).
    copied = [k for k in expected if mapped or sd[k].dtype != torch.float32]
    need = sum(4 * sd[k].numel() for k in copied) / 1024**3
    if copied:
        require_free_ram(need * MEMORY_MARGIN, f"{name} ({need:.2f} GB of float32 weights)")
    _check_finite(((k, sd[k]) for k in expected), name)
    notes = []
    if sd["tok_emb.weight"].dtype != torch.float32:
        notes.append(f"The weights were saved as {sd['tok_emb.weight'].dtype}; they are computed in float32.")
    # Own float32 memory for each tensor: a mapped file's pages must not stay in the model.
    weights = {k: _own(sd[k], mapped) for k in expected}
    del sd
    digest = _digest(cfg, weights)
    model.load_state_dict(with_masks(weights, cfg), strict=True, assign=True)
    del weights  # the model is now the weights' only holder: serving may pack them in place
    return OwnModel(model.eval().requires_grad_(False), name, kind, cfg, digest, notes)


def _own(t: torch.Tensor, mapped: bool) -> torch.Tensor:
    if t.dtype != torch.float32:
        return t.float().contiguous()
    return t.clone(memory_format=torch.contiguous_format) if mapped or not t.is_contiguous() else t


def _check_finite(items, name: str) -> None:
    for k, t in items:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            count = nan or int(torch.isinf(t).sum())
            values = f"{count:,} value{'s' if count > 1 else ''}"
            raise WeightsError(
                f"{name} has {'NaN' if nan else 'infinite'} weights ({k}: {values}): "
                "training diverged before it was saved (a learning rate too high?). "
                "Load an earlier checkpoint."
            )


def _digest(cfg: dict, weights: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].detach().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


class _Reading:
    """The tensors core.models.weights' mapping takes, each checked for NaN and hashed as it is taken
    (one at a time from a file: never all read twice)."""

    def __init__(self, sd, name: str, cfg: dict):
        self._sd, self._name = sd, name
        self.hash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())

    def __contains__(self, key) -> bool:
        return key in self._sd

    def __iter__(self):
        return iter(list(self._sd))

    def _seen(self, key: str, t: torch.Tensor) -> torch.Tensor:
        _check_finite([(key, t)], self._name)
        self.hash.update(key.encode())
        self.hash.update(t.detach().contiguous().view(torch.uint8).numpy())
        return t

    def pop(self, key: str) -> torch.Tensor:
        return self._seen(key, self._sd.pop(key))

    def get(self, key: str, default=None):
        return self._seen(key, self._sd.get(key)) if key in self._sd else default


def hf_model(sd, name: str, n_heads, hf_config: dict | None, kind: str, mapped: bool) -> OwnModel:
    cfg = infer_config(sd, hf_config)
    cfg["n_heads"] = _heads(cfg["emb_dim"], n_heads, hf_config)
    if hf_config and hf_config.get("n_layer") not in (None, cfg["n_layers"]):
        raise WeightsError(
            f"{name}: config.json says {hf_config['n_layer']} layers, the weights hold {cfg['n_layers']}."
        )
    if mapped:
        need = _param_count(cfg) * 4 / 1024**3
        require_free_ram(need * MEMORY_MARGIN, f"{name} ({need:.2f} GB of float32 weights)")
    reading = _Reading(sd, name, cfg)
    model = build_model(reading, cfg, None)
    return OwnModel(model, name, kind, cfg, reading.hash.hexdigest(), [])


def _param_count(cfg: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPTModel(cfg).parameters())
