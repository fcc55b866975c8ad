"""GPT-2 weights in Hugging Face's names and layouts, mapped into the book's GPTModel (section 5.5);
core.models.hub finds OpenAI's files.

Only safetensors files are read (no pickle). The Hub stores GPT-2 with `Conv1D` layers whose
weights are (in, out), so every projection is transposed into `nn.Linear`'s (out, in), and the
fused `c_attn` splits into W_query, W_key and W_value. `out_head` is tied to `tok_emb`, as in
GPT-2: one tensor, not a copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from core.book.model import GPT2_SMALL_CONFIG, GPTModel
from core.errors import WeightsError
from core.models.masks import with_masks
from core.runtime.device import available_memory_gb, describe

SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def require_free_ram(need_gb: float, what: str, advice: str = "", error=WeightsError, device="cpu") -> None:
    """Refuse work that would not fit in the free memory of `device` (the RAM for the CPU, the
    GPU's own memory for CUDA), before the OOM killer ends the server or CUDA runs out."""
    device = torch.device(device)
    free = available_memory_gb(device)
    where = "RAM" if device.type == "cpu" else f"memory on {describe(device)}"
    if free is not None and free < need_gb:
        raise error(
            f"{what} needs about {need_gb:.1f} GB of free {where}; it has {free:.1f} GB free."
            + (f" {advice}" if advice else "")
        )


def _check_safetensors_file(path: Path) -> None:
    """Refuse anything but safetensors (pickle .bin/.pt files above all) before any parser sees it."""
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not (0 < header_len < SAFETENSORS_MAGIC_MAX_HEADER) or head[8:9] != b"{":
        raise WeightsError(
            f"{path.name} is not a safetensors file; only safetensors weights are loaded (never pickle)."
        )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; anything else (pickle .bin/.pt, a truncated file) is refused."""
    path = Path(path)
    _check_safetensors_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path.name} is not a valid safetensors file: {e}") from e


class LazyTensors:
    """The tensors of an open safetensors file, read one at a time as the mapping takes them:
    each original is freed right after its transposed copy is made, so loading GPT-2 peaks
    near the model's own size instead of file + model."""

    def __init__(self, handle):
        self._f = handle
        self._names = {k.removeprefix("transformer."): k for k in handle.keys()}

    def __contains__(self, key) -> bool:
        return key in self._names

    def __iter__(self):
        return iter(list(self._names))

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(self._names[key]).get_shape())

    def get(self, key: str, default=None):
        return self._f.get_tensor(self._names[key]) if key in self._names else default

    def pop(self, key: str) -> torch.Tensor:
        return self._f.get_tensor(self._names.pop(key))


def _hf_config(path: Path) -> dict | None:
    """n_head etc. from a config.json next to the weights (save_pretrained writes one)."""
    config = path.parent / "config.json"
    try:
        return json.loads(config.read_text()) if config.is_file() else None
    except (OSError, ValueError):
        return None


def infer_config(state_dict: Mapping[str, torch.Tensor], hf_config: dict | None = None) -> dict:
    """GPTModel config from the tensor shapes; every GPT-2 size has 64-dim heads."""
    sd = state_dict if isinstance(state_dict, LazyTensors) else strip_prefix(state_dict)
    for key in ("wte.weight", "wpe.weight"):
        if key not in sd:
            raise WeightsError(f"Not GPT-2 weights: tensor {key!r} is missing.")

    def shape(key):
        return sd.shape(key) if isinstance(sd, LazyTensors) else tuple(sd[key].shape)

    vocab_size, emb_dim = shape("wte.weight")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"h\.(\d+)\.", k))}
    n_heads = (hf_config or {}).get("n_head") or emb_dim // 64
    return {
        **GPT2_SMALL_CONFIG,
        "vocab_size": int(vocab_size),
        "context_length": int(shape("wpe.weight")[0]),
        "emb_dim": int(emb_dim),
        "n_heads": int(n_heads),
        "n_layers": len(layers),
        "qkv_bias": True,
    }


def strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers' GPT2LMHeadModel saves "transformer.h.0..."; the Hub's gpt2 file has "h.0...".
    return {k.removeprefix("transformer."): v for k, v in sd.items()}


def map_gpt2_state_dict(
    hf: Mapping[str, torch.Tensor], cfg: dict, consume: bool = False
) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 names and layouts -> GPTModel's state_dict (out_head not included).

    consume=True empties `hf` (a dict with the prefix already stripped) as it maps: each
    original is freed once its transposed copy exists, so loading peaks near one model's size.
    """
    sd = hf if consume else strip_prefix(hf)
    d = cfg["emb_dim"]
    out: dict[str, torch.Tensor] = {}

    def take(key: str, shape: tuple[int, ...], copy: bool = True) -> torch.Tensor:
        if key not in sd:
            raise WeightsError(
                f"GPT-2 weights are missing {key!r} (is the config right? {cfg['n_layers']} layers expected)."
            )
        t = sd.pop(key)
        if tuple(t.shape) != shape:
            raise WeightsError(f"GPT-2 tensor {key!r} has shape {tuple(t.shape)}, the model expects {shape}.")
        # Own memory: a tensor read from safetensors may be a view of the file's mapping, which
        # would keep the whole file resident; the caller's tensors must not be frozen in place.
        t = t.float()
        return t.clone() if copy and t.dtype == torch.float32 else t

    out["tok_emb.weight"] = take("wte.weight", (cfg["vocab_size"], d))
    out["pos_emb.weight"] = take("wpe.weight", (cfg["context_length"], d))
    for i in range(cfg["n_layers"]):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        # Conv1D stores (in, out): columns [0:d] are the query, [d:2d] the key, [2d:3d] the value.
        w_qkv = take(h + "attn.c_attn.weight", (d, 3 * d), copy=False)
        b_qkv = take(h + "attn.c_attn.bias", (3 * d,), copy=False)
        for j, name in enumerate(("W_query", "W_key", "W_value")):
            out[b + f"att.{name}.weight"] = w_qkv[:, j * d : (j + 1) * d].t().contiguous()
            out[b + f"att.{name}.bias"] = b_qkv[j * d : (j + 1) * d].clone()
        out[b + "att.out_proj.weight"] = take(h + "attn.c_proj.weight", (d, d), copy=False).t().contiguous()
        out[b + "att.out_proj.bias"] = take(h + "attn.c_proj.bias", (d,))
        out[b + "ff.layers.0.weight"] = take(h + "mlp.c_fc.weight", (d, 4 * d), copy=False).t().contiguous()
        out[b + "ff.layers.0.bias"] = take(h + "mlp.c_fc.bias", (4 * d,))
        out[b + "ff.layers.2.weight"] = take(h + "mlp.c_proj.weight", (4 * d, d), copy=False).t().contiguous()
        out[b + "ff.layers.2.bias"] = take(h + "mlp.c_proj.bias", (d,))
        for ln, norm in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[b + f"{norm}.scale"] = take(h + f"{ln}.weight", (d,))
            out[b + f"{norm}.shift"] = take(h + f"{ln}.bias", (d,))
    out["final_norm.scale"] = take("ln_f.weight", (d,))
    out["final_norm.shift"] = take("ln_f.bias", (d,))
    # Leftovers allowed: the causal-mask buffers (attn.bias, attn.masked_bias) and a tied lm_head.
    extra = [k for k in sd if not re.search(r"attn\.(masked_)?bias$", k) and k != "lm_head.weight"]
    if extra:
        raise WeightsError(
            f"Unexpected tensors in GPT-2 weights (more layers than the config?): {', '.join(extra[:5])}"
        )
    return out


def load_gpt2_weights(source: str | Path | Mapping[str, torch.Tensor], cfg: dict | None = None) -> GPTModel:
    """A frozen GPTModel holding GPT-2 weights from a safetensors path or a state dict."""
    if isinstance(source, Mapping):
        return build_model(strip_prefix(source), cfg, None)
    path = Path(source)
    _check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return build_model(LazyTensors(f), cfg, _hf_config(path))
    except SafetensorError as e:
        raise WeightsError(f"{path.name} is not a valid safetensors file: {e}") from e


def build_model(sd, cfg: dict | None, hf_config: dict | None) -> GPTModel:
    """A frozen GPTModel from GPT-2 tensors in Hugging Face's names (a dict, or LazyTensors of a file)."""
    cfg = dict(cfg) if cfg is not None else infer_config(sd, hf_config)
    lm_head = sd.get("lm_head.weight")
    mapped = map_gpt2_state_dict(sd, cfg, consume=True)
    del sd
    # Build on the meta device: no random init of weights that are overwritten anyway.
    with torch.device("meta"):
        model = GPTModel(cfg)
    tied = lm_head is None or (
        lm_head.shape == mapped["tok_emb.weight"].shape
        and torch.equal(lm_head.float(), mapped["tok_emb.weight"])
    )
    mapped["out_head.weight"] = mapped["tok_emb.weight"] if tied else lm_head.float()
    with_masks(mapped, cfg)
    try:
        model.load_state_dict(mapped, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"GPT-2 weights do not fit the model: {e}") from e
    if tied:
        model.out_head.weight = model.tok_emb.weight  # one Parameter, as GPT-2 ties them
    del mapped, lm_head  # the model is now the weights' only holder: serving may pack them in place
    return model.eval().requires_grad_(False)
