"""The book's model from one file per machine (core/serving/shared_weights.py): the same bytes, the
same numbers, and a mapping that a write never reaches the file through."""

from __future__ import annotations

import pytest
import torch

from core import compute_loss
from core.serving import shared_weights

BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]
pytestmark = pytest.mark.slow


def _bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.to_dense() if t.is_mkldnn else t  # oneDNN's opaque layout (kept private): its values
    return t.detach().reshape(-1).view(torch.uint8)


def _same_tensors(a, b) -> bool:
    ta, tb = list(shared_weights._tensors(a)), list(shared_weights._tensors(b))
    return [x[:3] for x in ta] == [x[:3] for x in tb] and all(
        type(x[3]) is type(y[3]) and x[3].shape == y[3].shape and torch.equal(_bytes(x[3]), _bytes(y[3]))
        for x, y in zip(ta, tb, strict=True)
    )


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _private(seed: int = 123):
    """The model as a process serves it without the shared file."""
    return shared_weights._served(shared_weights.seeded_untrained_model(seed))


@pytest.fixture(scope="module")
def served_book():
    """_private() for the tests that only read it (test_every_weight_is_a_view_of_the_file maps its own)."""
    return _private()


def test_the_shared_model_is_the_served_book_model_byte_for_byte(cache, served_book):
    first = shared_weights.untrained_model(123)  # writes the file
    files = list((cache / "shared-weights").glob("untrained-seed123-*.bin"))
    assert len(files) == 1
    second = shared_weights.untrained_model(123)  # maps it
    private = served_book
    for m in (first, second):
        assert _same_tensors(m, private)
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    result = compute_loss(second, BOOK_TEXTS)
    assert float(result.loss) == pytest.approx(10.7940, abs=1e-4)
    assert float(result.loss) == float(compute_loss(private, BOOK_TEXTS).loss)  # the very same float


def test_every_weight_is_a_view_of_the_file(cache):
    m = _private()
    entries, storages = shared_weights.layout(m)
    path = shared_weights.weights_path(123, entries, storages)
    shared_weights.write_weights(entries, storages, path)
    before = compute_loss(m, BOOK_TEXTS).loss
    shared = shared_weights.adopt(m, path)
    assert shared == sum(e["nbytes"] for e in entries) > 0
    if not any(t.is_mkldnn for *_, t in shared_weights._tensors(m)):  # all on panels: the whole model
        assert shared >= 600 * 2**20 and path.stat().st_size >= 600 * 2**20
    assert float(compute_loss(m, BOOK_TEXTS).loss) == float(before)


def test_a_tensor_whose_bytes_differ_keeps_its_own_memory(cache, served_book):
    entries, storages = shared_weights.layout(served_book)
    path = shared_weights.weights_path(123, entries, storages)
    shared_weights.write_weights(entries, storages, path)
    del storages
    other = _private(124)
    before = compute_loss(other, BOOK_TEXTS).loss
    emb = other.tok_emb.weight
    shared_weights.adopt(other, path)  # only the identical ones (norms, masks) are swapped
    assert other.tok_emb.weight is emb
    assert float(compute_loss(other, BOOK_TEXTS).loss) == float(before)


def test_a_write_to_the_mapping_never_reaches_the_file(cache):
    m = shared_weights.untrained_model(123)
    scale = m.final_norm.scale
    with torch.no_grad():
        scale.add_(1.0)  # copy-on-write: this process's page only
    again = shared_weights.untrained_model(123)
    assert torch.equal(again.final_norm.scale, torch.ones_like(scale))
    assert compute_loss(again, BOOK_TEXTS).loss == pytest.approx(10.7940, abs=1e-4)


def test_install_serves_the_book_model_from_the_file_only_where_enabled(cache, monkeypatch):
    from core.models import registry

    monkeypatch.setitem(registry._REGISTRY, registry.BOOK_MODEL, registry.get_spec(registry.BOOK_MODEL))
    monkeypatch.delenv(shared_weights.ENV, raising=False)
    assert not shared_weights.install()
    assert registry.get_spec(registry.BOOK_MODEL).load is not shared_weights.untrained_model
    monkeypatch.setenv(shared_weights.ENV, "1")
    assert shared_weights.install()
    spec = registry.get_spec(registry.BOOK_MODEL)
    assert spec.load is shared_weights.untrained_model and spec.seeded
