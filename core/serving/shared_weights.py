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


def layout(model: nn.Module) -> tuple[list[dict], list[tuple]]:
    """Each mappable tensor's place (its storage, and offset within the part of it in use) and
    each storage's part in use. Tensors keep their neighbours: the fast kernel reads the query,
    key and value panels, side by side in one mapping, as one weight."""
    found, storages = [], {}
    for mod_name, table, attr, t in _tensors(model):
        if not _mappable(t):
            continue  # oneDNN's opaque layout has no bytes to map: it stays private
        st = t.untyped_storage()
        start = t.data_ptr() - st.data_ptr()
        nbytes = t.numel() * t.element_size()
        lo, hi, _ = storages.get(st.data_ptr(), (start, start + nbytes, st))
        storages[st.data_ptr()] = (min(lo, start), max(hi, start + nbytes), st)
        found.append((f"{mod_name}:{table}:{attr}", st.data_ptr(), start, nbytes, t))
    order = {ptr: i for i, ptr in enumerate(storages)}
    entries = [
        {"name": name, "storage": order[ptr], "offset": start - storages[ptr][0], "nbytes": nbytes,
         "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        for name, ptr, start, nbytes, t in found
    ]  # fmt: skip
    return entries, list(storages.values())


def weights_path(seed: int, entries: list[dict], storages: list[tuple]) -> Path:
    sizes = [hi - lo for lo, hi, _ in storages]
    what = {"seed": seed, "entries": entries, "sizes": sizes, "torch": torch.__version__, "format": FORMAT}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "shared-weights" / f"untrained-seed{seed}-{digest}.bin"


def _storage_bytes(st, lo: int, hi: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(st, 0, (st.nbytes(),), (1,))[lo:hi]


def _blob_starts(sizes: list[int], header_bytes: int) -> list[int]:
    at, starts = -(-(header_bytes + 8) // ALIGN) * ALIGN, []
    for size in sizes:
        starts.append(at)
        at += -(-size // ALIGN) * ALIGN
    return starts + [at]


def write_weights(entries: list[dict], storages: list[tuple], path: Path) -> None:
    """Write each storage's part in use, as it is in memory, to `path` (atomically)."""
    sizes = [hi - lo for lo, hi, _ in storages]
    head = json.dumps({"format": FORMAT, "entries": entries, "sizes": sizes}).encode()
    starts = _blob_starts(sizes, len(head))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for (lo, hi, st), start in zip(storages, starts, strict=False):
            f.seek(start)
            f.write(memoryview(_storage_bytes(st, lo, hi).numpy()))
        f.truncate(starts[-1])
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def adopt(model: nn.Module, path: Path) -> int:
    """Swap each tensor of `model` whose bytes equal the file's for a view of the file's mapping;
    returns the bytes now shared. A tensor whose bytes differ keeps its own memory."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(size))
        if meta.get("format") != FORMAT:
            return 0
        memory = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    raw = torch.frombuffer(memory, dtype=torch.uint8)  # holds the mapping while a view lives
    starts = _blob_starts(meta["sizes"], size)
    where = {e["name"]: e for e in meta["entries"]}
    modules = dict(model.named_modules())
    shared = 0
    for mod_name, table, attr, t in list(_tensors(model)):
        e = where.get(f"{mod_name}:{table}:{attr}")
        if e is None or not _mappable(t) or e["shape"] != list(t.shape) or e["dtype"] != str(t.dtype)[6:]:
            continue
        at = starts[e["storage"]] + e["offset"]
        view = raw[at : at + e["nbytes"]]
        if not torch.equal(view, _bytes(t)):
            continue
        data = view.view(t.dtype).view(t.shape)
        if isinstance(t, nn.Parameter):
            new = type(t)(data, requires_grad=t.requires_grad)  # e.g. a packed weight keeps its class
            new.__dict__.update(t.__dict__)  # and its attributes (a packed weight's plain shape)
        else:
            new = data
        getattr(modules[mod_name], table)[attr] = new
        shared += e["nbytes"]
    for module in model.modules():  # a block that keeps references to its weights takes the new ones
        remember = getattr(module, "remember_panels", None)
        if callable(remember):
            remember()
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


def _served(model: nn.Module) -> nn.Module:
    """The model as serving hands it out (core.serving.frozen: the fast plug-in's modules)."""
    try:
        from core.serving.frozen import freeze
    except ImportError:  # a book model that packs itself
        return model
    return freeze(model)


def _release() -> None:
    for where in ("core.serving.frozen", "core.book.model"):
        try:
            release = getattr(__import__(where, fromlist=["x"]), "release_free_memory", None)
        except ImportError:
            continue
        if release is not None:
            release()  # the freed private copy goes back to the OS now, not at the next malloc
            return


def share(model: nn.Module, seed: int) -> int:
    """Put `model`'s tensors (built for `seed`, as served) on the machine's shared file where
    they match it, writing the file first if no process has; returns the bytes shared."""
    entries, storages = layout(model)
    path = weights_path(seed, entries, storages)
    if not path.exists():
        with _locked(path):
            if not path.exists():
                write_weights(entries, storages, path)
    del storages  # the private storages go once no tensor holds them
    shared = adopt(model, path)
    _release()
    return shared


def untrained_model(seed: int = SHARED_SEED) -> nn.Module:
    """The book's untrained model for `seed`, built and served as always; the book's seed then
    shared (the pool's own freeze() after this finds it done)."""
    if seed != SHARED_SEED:
        return seeded_untrained_model(seed)
    model = _served(seeded_untrained_model(seed))
    share(model, seed)
    return model


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
