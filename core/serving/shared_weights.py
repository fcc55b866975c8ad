"""The book's untrained model, shared read-only by every LossLens process on one machine.

Each server process builds its own copy of the untrained 124M model (~650 MB). In a room of N
processes (deploy/room.py) that is N copies of the same bytes. Here the first process writes its
built model's tensors, as they are in memory (the fast kernel's packed layout included), into one
file in the cache folder; every process, after its own build, checks that its bytes are the
file's and then swaps each tensor for a view of the file's mapping, freeing its own copy. Pages
that nobody writes stay the OS's page-cache pages: one copy for all processes. The mapping is
copy-on-write (MAP_PRIVATE): a stray write copies one page instead of changing the file.

The numbers stay the book's by construction: a tensor is swapped only where the file holds the
very bytes this process built, whatever code built them; any difference leaves the private copy.

Costs: each process still builds once at start (the CPU seconds of today, and its 650 MB peak
for a moment). The packed weights of a private build sit on 2 MB pages (core.fast.panel.huge_empty),
where the kernel reads 1.14-1.26x faster; a file mapping gets 4 KB pages (docs/deploy.md measures
what that costs). oneDNN's opaque packing has no bytes to map and stays private.

Opt-in: `LOSSLENS_SHARED_WEIGHTS=1` (deploy/room.py sets it). Only the book's seed is shared:
other seeds are a visitor's passing choice and stay private builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
from pathlib import Path

import torch
from torch import nn

from core.book import model as book
from core.runtime.paths import cache_dir
from core.runtime.rng import seeded_untrained_model

ENV = "LOSSLENS_SHARED_WEIGHTS"
SHARED_SEED = 123  # the book's seed: the model every visitor starts from
FORMAT = 1
ALIGN = 4096  # each tensor on its own page: mapped views never straddle a header


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _tensors(model: nn.Module):
    """(module name, table, attribute, tensor) for every parameter and buffer, as held."""
    for mod_name, module in model.named_modules():
        for table in ("_parameters", "_buffers"):
            for attr, t in getattr(module, table).items():
                if t is not None:
                    yield mod_name, table, attr, t


def _mappable(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not t.is_mkldnn and not t.is_sparse and t.is_contiguous()


def signature(model: nn.Module) -> list[dict]:
    """What the file must hold for this model: each mappable tensor's place, class, dtype and shape."""
    out, seen = [], set()
    for mod_name, table, attr, t in _tensors(model):
        if not _mappable(t) or (t.data_ptr(), t.numel()) in seen:
            continue  # a tied or opaque tensor stays as it is (packed panels share one arena: not tied)
        seen.add((t.data_ptr(), t.numel()))
        out.append({"name": f"{mod_name}:{table}:{attr}", "dtype": str(t.dtype).removeprefix("torch."),
                    "shape": list(t.shape), "nbytes": t.numel() * t.element_size()})  # fmt: skip
    return out


def weights_path(seed: int, sig: list[dict]) -> Path:
    what = json.dumps(
        {"seed": seed, "sig": sig, "torch": torch.__version__, "format": FORMAT}, sort_keys=True
    )
    digest = hashlib.sha256(what.encode()).hexdigest()[:20]
    return cache_dir() / "shared-weights" / f"untrained-seed{seed}-{digest}.bin"


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def write_weights(model: nn.Module, sig: list[dict], path: Path) -> None:
    """Write the model's mappable tensors, in their in-memory layout, to `path` (atomically)."""
    tensors = {f"{m}:{table}:{a}": t for m, table, a, t in _tensors(model)}
    entries, offset = [], 0
    for e in sig:
        entries.append(e | {"offset": offset})
        offset += -(-e["nbytes"] // ALIGN) * ALIGN
    head = json.dumps({"format": FORMAT, "entries": entries}).encode()
    start = -(-(len(head) + 8) // ALIGN) * ALIGN
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for e in entries:
            f.seek(start + e["offset"])
            f.write(memoryview(_bytes(tensors[e["name"]]).numpy()))
        f.truncate(start + offset)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def adopt(model: nn.Module, path: Path) -> int:
    """Swap each tensor of `model` whose bytes equal the file's for a view of the file's mapping;
    returns the bytes now shared. A tensor whose bytes differ keeps its own memory."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(size))
        if meta.get("format") != FORMAT:
            return 0
        start = -(-(size + 8) // ALIGN) * ALIGN
        memory = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    raw = torch.frombuffer(memory, dtype=torch.uint8)  # holds the mapping while a view lives
    where = {e["name"]: e for e in meta["entries"]}
    modules = dict(model.named_modules())
    shared = 0
    for mod_name, table, attr, t in list(_tensors(model)):
        e = where.get(f"{mod_name}:{table}:{attr}")
        nbytes = t.numel() * t.element_size()
        if e is None or not _mappable(t) or e["nbytes"] != nbytes or e["shape"] != list(t.shape):
            continue
        view = raw[start + e["offset"] : start + e["offset"] + nbytes]
        if not torch.equal(view, _bytes(t)):
            continue
        data = view.view(t.dtype).view(t.shape)
        if isinstance(t, nn.Parameter):
            new = type(t)(data, requires_grad=t.requires_grad)  # e.g. a packed weight keeps its class
            new.__dict__.update(t.__dict__)  # and its attributes (a packed weight's plain shape)
        else:
            new = data
        getattr(modules[mod_name], table)[attr] = new
        shared += nbytes
    return shared


@contextlib.contextmanager
def _locked(path: Path):
    """One writer per machine: the others wait here, then map what it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def share(model: nn.Module, seed: int) -> nn.Module:
    """`model` (built for `seed`) with its tensors on the machine's shared file where they match."""
    sig = signature(model)
    path = weights_path(seed, sig)
    if not path.exists():
        with _locked(path):
            if not path.exists():
                write_weights(model, sig, path)
    if adopt(model, path):
        release = getattr(book, "release_free_memory", None)
        if release is not None:
            release()  # the freed private copy goes back to the OS now, not at the next malloc
    return model


def untrained_model(seed: int = SHARED_SEED) -> nn.Module:
    """The book's untrained model for `seed`, built as always; the book's seed then shared."""
    model = seeded_untrained_model(seed)
    return share(model, seed) if seed == SHARED_SEED else model


def install() -> bool:
    """Serve the book's model from the shared file in this process, where enabled (ENV).

    The registry's book model keeps its key, label and seeds; only how it is loaded changes."""
    if not enabled():
        return False
    from dataclasses import replace

    from core.models import registry

    spec = registry.get_spec(registry.BOOK_MODEL)
    if spec.load is not untrained_model:
        registry.register(replace(spec, load=untrained_model))
    return True
