"""The reader's own model: weights saved by the book's code, or GPT-2 in Hugging Face's layout.

Accepted: the book's `torch.save(model.state_dict(), "model.pth")`, its
`{"model_state_dict": ..., "optimizer_state_dict": ...}` checkpoint (the optimizer half is not
used), a `.safetensors` file, or a folder saved by `save_pretrained` (with its config.json).
The configuration comes from the tensors' shapes. Files are read with safetensors or
`torch.load(weights_only=True)` only, never a full unpickle, and the free memory is checked
before any tensor data is copied.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from core.book.model import GPT_CONFIG_124M, GPTModel, freeze
from core.errors import WeightsError
from core.models.weights import (
    SAFETENSORS_MAGIC_MAX_HEADER,
    _build,
    _LazyTensors,
    _strip_prefix,
    infer_config,
    require_free_ram,
)
from core.runtime.device import to_device_with_room

# GPT-2's widths and their head counts (64-dim heads); any other width needs the count given.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
FORMATS = {
    "state_dict": "the book's model.pth (a state dict)",
    "checkpoint": "the book's model_and_optimizer.pth (the optimizer half is ignored)",
    "safetensors": "a safetensors file",
    "hf_folder": "a Hugging Face folder",
}
MEMORY_MARGIN = 1.15  # the weights plus room for a forward pass, as a share of the weights
_FEW = 5  # names quoted in a message about missing or unexpected keys
_BOOK_LEFTOVERS = re.compile(r"trf_blocks\.\d+\.att\.mask$")  # the book's causal-mask buffers


@dataclass
class OwnModel:
    model: GPTModel
    name: str  # the file or folder name, for labels
    kind: str  # a key of FORMATS
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


def load_own_model(
    source: str | Path | bytes, n_heads: int | None = None, name: str | None = None
) -> OwnModel:
    """A frozen GPTModel from a path (file or Hugging Face folder) or a file's bytes (an upload).

    `n_heads` is needed only for a width that is not one of GPT-2's (768, 1024, 1280, 1600).
    Every failure is a WeightsError whose message says what is wrong and what to do.
    """
    if n_heads is not None and (isinstance(n_heads, bool) or int(n_heads) < 1):
        raise WeightsError(f"The number of heads must be a whole number of at least 1, got {n_heads}.")
    n_heads = int(n_heads) if n_heads else None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), name or "the uploaded file", n_heads)
    path = Path(source).expanduser()
    name = name or path.name
    if path.is_dir():
        return _from_folder(path, n_heads)
    if not path.is_file():
        raise WeightsError(f"No model file or folder at {path}.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    kind = _sniff(head, size)
    if kind == "safetensors":
        return _from_safetensors_file(path, name, n_heads, hf_config=None, kind="safetensors")
    if kind == "zip":
        # mmap: only the pickle is read here; the tensor data stays on disk until the checks
        # (memory, keys, shapes) have passed and the model copies it.
        return _from_torch(_torch_load(str(path), name, mmap=True, zipped=True), name, n_heads, mapped=True)
    if kind == "legacy":  # the pre-1.6 format cannot be mapped: it is read whole, so check first
        require_free_ram(size / 1024**3 * MEMORY_MARGIN, f"Reading {name} ({size / 1024**3:.2f} GB)")
        return _from_torch(
            _torch_load(str(path), name, mmap=False, zipped=False), name, n_heads, mapped=False
        )
    raise _not_a_model(name)


# --- formats ---------------------------------------------------------------------------


def _sniff(head: bytes, size: int) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "zip"  # torch.save's format since PyTorch 1.6
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if 0 < header_len < SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and size > 2:
        return "legacy"  # a pickle: torch.save(..., _use_new_zipfile_serialization=False)
    return None


def _not_a_model(name: str, detail: str = "") -> WeightsError:
    return WeightsError(
        f"{name} is not a model file{': ' + detail if detail else ''}. LossLens reads the book's "
        "model.pth or model_and_optimizer.pth (torch.save), a .safetensors file, or a Hugging Face folder."
    )


def _truncated(name: str, detail: str) -> WeightsError:
    return WeightsError(
        f"{name} is truncated or damaged: {detail}. Copy or download it again "
        "(an interrupted copy or a full disk cuts files short)."
    )


def _torch_load(source, name: str, mmap: bool, zipped: bool):
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except MemoryError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise _not_a_model(
                name,
                "it holds Python objects other than tensors, numbers and strings, which LossLens never "
                "unpickles (torch.load(weights_only=True)); save model.state_dict() instead",
            ) from None
        raise (_truncated(name, "its pickle ends early") if zipped else _not_a_model(name)) from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError ... on a foreign or cut file
        if zipped:
            first = (str(e).splitlines() or [""])[0]
            detail = (
                "its zip archive is incomplete"
                if "zip archive" in first
                else f"{type(e).__name__}: {first[:160]}"
            )
            raise _truncated(name, detail) from None
        raise _not_a_model(name) from None


def _from_bytes(data: bytes, name: str, n_heads: int | None) -> OwnModel:
    kind = _sniff(data[:16], len(data))
    if kind is None:
        raise _not_a_model(name)
    if kind == "safetensors":
        _check_safetensors_length(data[:8], lambda n: data[8 : 8 + n], len(data), name)
    # Reading copies the file's tensors out of the upload: that much must be free.
    require_free_ram(len(data) / 1024**3 * MEMORY_MARGIN, f"Loading {name} ({len(data) / 1024**3:.2f} GB)")
    if kind == "safetensors":
        try:
            sd = load_safetensors_bytes(data)
        except (SafetensorError, ValueError) as e:
            raise _not_a_model(name, f"safetensors could not read it ({e})") from None
        return _from_mapping(sd, name, n_heads, kind="safetensors", hf_config=None, mapped=False)
    sd = _torch_load(io.BytesIO(data), name, mmap=False, zipped=kind == "zip")
    return _from_torch(sd, name, n_heads, mapped=False)


def _check_safetensors_length(head: bytes, read_header, size: int, name: str) -> None:
    """A safetensors header states where its last tensor ends: a shorter file was cut short."""
    n = int.from_bytes(head[:8], "little")
    if size < 8 + n:
        raise _truncated(name, f"its {n:,}-byte header is cut off at {size:,} bytes")
    try:
        header = json.loads(read_header(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
        raise _not_a_model(name, "its safetensors header is not valid") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise _truncated(name, f"it has {size:,} bytes of the {need:,} its header describes")


def _from_safetensors_file(path: Path, name: str, n_heads, hf_config: dict | None, kind: str) -> OwnModel:
    with open(path, "rb") as f:
        _check_safetensors_length(f.read(8), f.read, path.stat().st_size, name)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            if any(k.removeprefix("transformer.") == "wte.weight" for k in names):
                return _hf_model(_LazyTensors(f), name, n_heads, hf_config, kind, mapped=True)
            # The book's names in a safetensors file (save_file(model.state_dict())). Its tensors
            # are views of the file's mapping: nothing is read until the model copies them.
            sd = {k: f.get_tensor(k) for k in names}
    except SafetensorError as e:
        raise _not_a_model(name, f"safetensors could not read it ({e})") from None
    return _from_mapping(sd, name, n_heads, kind=kind, hf_config=hf_config, mapped=True)


def _from_folder(path: Path, n_heads: int | None) -> OwnModel:
    config = None
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{path.name}/config.json is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise WeightsError(f"{path.name}/config.json is not a JSON object.")
    files = sorted(path.glob("*.safetensors"))
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    if len(files) == 1:
        return _from_safetensors_file(files[0], path.name, n_heads, config, kind="hf_folder")
    if len(files) > 1:
        raise WeightsError(
            f"{path.name} holds {len(files)} safetensors files ({', '.join(f.name for f in files[:_FEW])}); "
            "LossLens reads one model.safetensors (GPT-2 up to XL fits in one file)."
        )
    raise WeightsError(
        f"{path.name} has no model.safetensors: save the model with save_pretrained(folder) "
        "(safetensors is its default), or choose the weights file itself."
    )


def _from_torch(obj, name: str, n_heads, mapped: bool) -> OwnModel:
    kind, notes = "state_dict", []
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        kind = "checkpoint"
        ignored = [k for k in obj if k != "model_state_dict"]
        if ignored:
            notes.append(
                f"Only the weights are used: {', '.join(map(str, ignored[:_FEW]))} "
                "(the optimizer's state) is ignored."
            )
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise _not_a_model(name, f"it holds {_what(obj)}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise _not_a_model(name, f"its entries {', '.join(map(repr, bad[:3]))} are not named tensors")
    r = _from_mapping(obj, name, n_heads, kind=kind, hf_config=None, mapped=mapped)
    r.notes[:0] = notes
    return r


def _what(obj) -> str:
    if isinstance(obj, Mapping):
        return "an empty dictionary" if not obj else f"a dictionary of {', '.join(map(repr, list(obj)[:3]))}"
    return f"a {type(obj).__name__}"


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.compile's `_orig_mod.` and DataParallel's `module.` wrap the book's names."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _from_mapping(sd, name, n_heads, kind, hf_config, mapped) -> OwnModel:
    sd = _strip_wrappers(sd)
    if "tok_emb.weight" in sd:
        return _book_model(sd, name, n_heads, kind, mapped)
    if "wte.weight" in (sd := _strip_prefix(sd)):
        return _hf_model(sd, name, n_heads, hf_config, kind, mapped)
    raise _not_a_model(
        name,
        "it has neither the book's tok_emb.weight nor GPT-2's wte.weight; its tensors are "
        + ", ".join(list(sd)[:_FEW]),
    )


# --- the book's names --------------------------------------------------------------------


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
            f"The weights are missing keys: every tensor of block(s) {', '.join(map(str, gaps[:_FEW]))} "
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
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    present = {k for k in sd if not _BOOK_LEFTOVERS.search(k)}
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in sd if k in present and k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:_FEW])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:_FEW])}")
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
    model.load_state_dict(weights, strict=True, assign=True)
    digest = _digest(cfg, weights)
    del weights  # the model is now the weights' only holder: freeze() may pack them in place
    return OwnModel(freeze(model), name, kind, cfg, digest, notes)


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


# --- Hugging Face's names (through core.models.weights' mapping) --------------------------------


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


def _hf_model(sd, name: str, n_heads, hf_config: dict | None, kind: str, mapped: bool) -> OwnModel:
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
    model = _build(reading, cfg, None)
    return OwnModel(model, name, kind, cfg, reading.hash.hexdigest(), [])


def _param_count(cfg: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPTModel(cfg).parameters())


def to_device(model: GPTModel, label: str, device: str | torch.device) -> GPTModel:
    """The CPU-loaded model on `device`, refused with a message where that device lacks the memory."""
    return to_device_with_room(model, label, torch.device(device), error=WeightsError)


def is_model_path(value: str) -> bool:
    """Whether a --model value names a file or folder rather than a registry key."""
    p = Path(value).expanduser()
    return p.exists() or "/" in value or "\\" in value or p.suffix in (".pth", ".pt", ".bin", ".safetensors")
