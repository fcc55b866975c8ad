"""Section 2.6's dataset and loader in core.book equal the book's own code (llms_from_scratch.ch02)."""

from __future__ import annotations

import pytest
import torch

from core.book.data import GPTDatasetV1, create_dataloader_v1
from core.runtime.tokenizer_files import seed_tiktoken_cache


@pytest.fixture(scope="module")
def verdict(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def book_ch02(tmp_path_factory):
    """The book's ch02 module, with tiktoken.get_encoding("gpt2") served offline (for both)."""
    ch02 = pytest.importorskip(
        "llms_from_scratch.ch02",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))))
        yield ch02


@pytest.mark.parametrize("max_length,stride", [(256, 256), (4, 1), (64, 32), (100, 300)])
def test_dataset_equals_the_books(book_ch02, verdict, tokenizer, max_length, stride):
    ref = book_ch02.GPTDatasetV1(verdict, tokenizer, max_length, stride)
    ours = GPTDatasetV1(verdict, tokenizer, max_length, stride)
    assert len(ours) == len(ref)
    for idx in range(len(ref)):
        assert torch.equal(ours[idx][0], ref[idx][0]) and torch.equal(ours[idx][1], ref[idx][1])


def test_windows_shift_by_one_and_keep_endoftext(tokenizer):
    ds = GPTDatasetV1("Hello.<|endoftext|>Bye now, friend.", tokenizer, max_length=3, stride=1)
    x, y = ds[0]
    assert x[1:].tolist() == y[:-1].tolist()
    assert 50256 in torch.cat([x for x, _ in ds]).tolist()


def test_loader_equals_the_books_after_manual_seed(book_ch02, verdict):
    """The book's defaults (batch_size=4, max_length=256, stride=128) and its shuffle."""
    batches = []
    for make in (book_ch02.create_dataloader_v1, create_dataloader_v1):
        torch.manual_seed(123)
        batches.append(list(make(verdict)))
    assert len(batches[0]) == len(batches[1]) == 9
    for (x, y), (rx, ry) in zip(batches[1], batches[0], strict=True):
        assert x.shape == (4, 256) and torch.equal(x, rx) and torch.equal(y, ry)
