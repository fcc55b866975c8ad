"""Shared fixtures: the real tokenizer, the book's untrained model, the packaged corpus."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

# pytest-xdist's workers share the cores: OpenMP's idle threads sleep instead of spinning (set before
# torch loads it; the servers and children the tests start inherit it), and each worker computes on
# one thread, or their thread pools crowd each other out.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
VERDICT_PATH = ROOT / "core" / "models" / "data" / "the-verdict.txt"  # the copy LossLens ships
BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep downloads and trained weights of the test run out of the user's cache, and run on the
    CPU, where the book's numbers are exact (tests marked `gpu` choose their device themselves)."""
    os.environ["LOSSLENS_CACHE_DIR"] = str(tmp_path_factory.mktemp("losslens-cache"))
    os.environ["LOSSLENS_DEVICE"] = "cpu"
    yield


STORAGE_ENVS = (
    "LOSSLENS_SHARED",
    "LOSSLENS_MODELS_MAX_MB",
    "LOSSLENS_MODELS_MAX_COUNT",
    "LOSSLENS_MODELS_OWNER_SHARE",
    "LOSSLENS_DISK_RESERVE_MB",
)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache of the test's own, on a local server with no storage setting."""
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(tmp_path / "cache"))
    for env in STORAGE_ENVS:
        monkeypatch.delenv(env, raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tokenizer():
    from core.runtime.tokenizer_files import get_tokenizer

    return get_tokenizer()


def _digest(p) -> int:
    """The bytes' CRC: exact, and the same on any thread count (a float sum's rounding is not)."""
    import zlib

    return zlib.crc32((p.to_dense() if p.is_mkldnn else p).detach().contiguous().numpy())  # no copy


def _fingerprint(model) -> dict:
    """What a test must leave as it was: each module's mode (a dropout left in training mode
    draws), each weight's object, layout, flag and values."""
    import torch

    with torch.inference_mode():
        return {
            **{f"{name or 'model'}.training": m.training for name, m in model.named_modules()},
            **{
                name: (id(p), type(p).__name__, p.is_mkldnn, p.requires_grad, _digest(p))
                for name, p in model.named_parameters()
            },
        }


@pytest.fixture(scope="session")
def model():
    """torch.manual_seed(123); GPTModel(GPT_CONFIG_124M), in eval mode (shared, read-only).

    Read-only is checked: a test that unpacked it (gradients), trained it or changed a weight would
    leave every later test on another model, so the session ends with an error naming it."""
    from core import build_untrained_model

    shared = build_untrained_model(123)
    before = _fingerprint(shared)
    yield shared
    after = _fingerprint(shared)
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, f"a test changed the shared model: {changed[:5]}"


@pytest.fixture(scope="session")
def verdict_path() -> Path:
    if not VERDICT_PATH.is_file():
        pytest.fail(f"The packaged corpus is missing at {VERDICT_PATH}")
    return VERDICT_PATH


@pytest.fixture
def app_env(monkeypatch, verdict_path):
    """For AppTest: The Verdict from the packaged copy (no override), and empty result caches and
    dataset store before and after each test (the model stays cached: it is only read)."""
    import streamlit as st

    from ui import store

    monkeypatch.delenv("LOSSLENS_VERDICT_PATH", raising=False)
    st.cache_data.clear()
    store.clear()
    yield
    st.cache_data.clear()
    store.clear()


@contextlib.contextmanager
def _another_visitor_busy(foreground):
    """Another visitor's request in flight, on a thread of its own, until the block ends."""
    busy, done = threading.Event(), threading.Event()

    def visitor():
        with foreground.request():
            busy.set()
            done.wait(30)

    t = threading.Thread(target=visitor)
    t.start()
    busy.wait(10)
    try:
        yield
    finally:
        done.set()
        t.join(10)


@pytest.fixture
def another_visitor_busy():
    """`with another_visitor_busy(foreground):` a request of another visitor runs meanwhile."""
    return _another_visitor_busy
