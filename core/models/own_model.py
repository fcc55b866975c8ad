"""The reader's own model: weights saved by the book's code, or GPT-2 in Hugging Face's layout.

Accepted: the book's `torch.save(model.state_dict(), "model.pth")`, its
`{"model_state_dict": ..., "optimizer_state_dict": ...}` checkpoint (the optimizer half is not
used), a `.safetensors` file, or a folder saved by `save_pretrained` (with its config.json).
The configuration comes from the tensors' shapes. Files are read with safetensors or
`torch.load(weights_only=True)` only, never a full unpickle, and the free memory is checked
before any tensor data is copied.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from core.book.model import GPTModel
from core.errors import WeightsError
from core.models.own_build import FEW, MEMORY_MARGIN, OwnModel, from_mapping, hf_model, not_a_model
from core.models.weights import SAFETENSORS_MAGIC_MAX_HEADER, LazyTensors, require_free_ram
from core.runtime.device import to_device_with_room

FORMATS = {
    "state_dict": "the book's model.pth (a state dict)",
    "checkpoint": "the book's model_and_optimizer.pth (the optimizer half is ignored)",
    "safetensors": "a safetensors file",
    "hf_folder": "a Hugging Face folder",
}


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
    raise not_a_model(name)


def _sniff(head: bytes, size: int) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "zip"  # torch.save's format since PyTorch 1.6
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if 0 < header_len < SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and size > 2:
        return "legacy"  # a pickle: torch.save(..., _use_new_zipfile_serialization=False)
    return None


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
            raise not_a_model(
                name,
                "it holds Python objects other than tensors, numbers and strings, which LossLens never "
                "unpickles (torch.load(weights_only=True)); save model.state_dict() instead",
            ) from None
        raise (_truncated(name, "its pickle ends early") if zipped else not_a_model(name)) from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError ... on a foreign or cut file
        if zipped:
            first = (str(e).splitlines() or [""])[0]
            detail = (
                "its zip archive is incomplete"
                if "zip archive" in first
                else f"{type(e).__name__}: {first[:160]}"
            )
            raise _truncated(name, detail) from None
        raise not_a_model(name) from None


def _from_bytes(data: bytes, name: str, n_heads: int | None) -> OwnModel:
    kind = _sniff(data[:16], len(data))
    if kind is None:
        raise not_a_model(name)
    if kind == "safetensors":
        _check_safetensors_length(data[:8], lambda n: data[8 : 8 + n], len(data), name)
    # Reading copies the file's tensors out of the upload: that much must be free.
    require_free_ram(len(data) / 1024**3 * MEMORY_MARGIN, f"Loading {name} ({len(data) / 1024**3:.2f} GB)")
    if kind == "safetensors":
        try:
            sd = load_safetensors_bytes(data)
        except (SafetensorError, ValueError) as e:
            raise not_a_model(name, f"safetensors could not read it ({e})") from None
        return from_mapping(sd, name, n_heads, kind="safetensors", hf_config=None, mapped=False)
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
        raise not_a_model(name, "its safetensors header is not valid") from None
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
                return hf_model(LazyTensors(f), name, n_heads, hf_config, kind, mapped=True)
            # The book's names in a safetensors file (save_file(model.state_dict())). Its tensors
            # are views of the file's mapping: nothing is read until the model copies them.
            sd = {k: f.get_tensor(k) for k in names}
    except SafetensorError as e:
        raise not_a_model(name, f"safetensors could not read it ({e})") from None
    return from_mapping(sd, name, n_heads, kind=kind, hf_config=hf_config, mapped=True)


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
            f"{path.name} holds {len(files)} safetensors files ({', '.join(f.name for f in files[:FEW])}); "
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
                f"Only the weights are used: {', '.join(map(str, ignored[:FEW]))} "
                "(the optimizer's state) is ignored."
            )
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise not_a_model(name, f"it holds {_what(obj)}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise not_a_model(name, f"its entries {', '.join(map(repr, bad[:3]))} are not named tensors")
    r = from_mapping(obj, name, n_heads, kind=kind, hf_config=None, mapped=mapped)
    r.notes[:0] = notes
    return r


def _what(obj) -> str:
    if isinstance(obj, Mapping):
        return "an empty dictionary" if not obj else f"a dictionary of {', '.join(map(repr, list(obj)[:3]))}"
    return f"a {type(obj).__name__}"


def to_device(model: GPTModel, label: str, device: str | torch.device) -> GPTModel:
    """The CPU-loaded model on `device`, refused with a message where that device lacks the memory."""
    return to_device_with_room(model, label, torch.device(device), error=WeightsError)


def is_model_path(value: str) -> bool:
    """Whether a --model value names a file or folder rather than a registry key."""
    p = Path(value).expanduser()
    return p.exists() or "/" in value or "\\" in value or p.suffix in (".pth", ".pt", ".bin", ".safetensors")
