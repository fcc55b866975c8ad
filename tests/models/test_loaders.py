"""Section 5.1.3's data for the app: the split, the lazy sliding windows, the loaders and their
counts, checked against the book's own code (core.book.data and llms_from_scratch.ch02)."""

from __future__ import annotations

import pytest
import torch

from core.book.data import GPTDatasetV1
from core.errors import InvalidParameterError
from core.models.loaders import (
    BookShuffle,
    LoaderSettings,
    TokenWindows,
    create_loader,
    make_loaders,
    split_text,
    token_tensor,
)
from core.runtime.tokenizer_files import encode, seed_tiktoken_cache


@pytest.fixture(scope="module")
def verdict(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def book_ch02(tmp_path_factory):
    """The book's ch02 module, with tiktoken.get_encoding("gpt2") served offline."""
    ch02 = pytest.importorskip(
        "llms_from_scratch.ch02",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))))
        yield ch02


@pytest.fixture(scope="module")
def book_split(verdict):
    return make_loaders(verdict, LoaderSettings())


# --- windows ---------------------------------------------------------------------


def test_windows_shift_by_one(verdict, tokenizer):
    ids = encode(verdict, tokenizer)
    ds = TokenWindows(token_tensor(verdict, tokenizer), max_length=4, stride=1)
    assert len(ds) == len(ids) - 4
    for idx in (0, 1, 100, len(ds) - 1, -1):
        x, y = ds[idx]
        start = idx % len(ds)
        assert x.tolist() == ids[start : start + 4]
        assert y.tolist() == ids[start + 1 : start + 5]
        assert x[1:].tolist() == y[:-1].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_windows_are_made_lazily(tokenizer):
    # One tensor of token ids, windows are views of it: nothing per window is stored.
    ids = torch.arange(1_000_000)
    ds = TokenWindows(ids, max_length=256, stride=1)
    assert len(ds) == 1_000_000 - 256
    tensors = [v for v in vars(ds).values() if isinstance(v, (torch.Tensor, list))]
    assert [t.data_ptr() for t in tensors] == [ids.data_ptr()]
    x, y = ds[500_000]
    assert x.data_ptr() == ids[500_000:].data_ptr() and y[0].item() == 500_001


@pytest.mark.parametrize("max_length,stride", [(256, 256), (4, 1), (64, 32), (100, 300)])
def test_windows_equal_the_books_dataset(verdict, tokenizer, max_length, stride):
    ref = GPTDatasetV1(verdict, tokenizer, max_length, stride)
    ours = TokenWindows(token_tensor(verdict, tokenizer), max_length, stride)
    assert len(ours) == len(ref)
    for idx in range(0, len(ref), max(1, len(ref) // 50)):
        assert torch.equal(ours[idx][0], ref[idx][0]) and torch.equal(ours[idx][1], ref[idx][1])


def test_special_token_is_one_token(tokenizer):
    assert 50256 in token_tensor("Hello.<|endoftext|>Bye now, friend.", tokenizer).tolist()


# --- split -----------------------------------------------------------------------


def test_split_by_characters(verdict):
    train, val = split_text(verdict, 0.9)
    assert len(train) == 18431 == int(0.9 * len(verdict))
    assert len(val) == 20479 - 18431
    assert train + val == verdict
    train, val = split_text(verdict, 0.5)
    assert len(train) == 10239


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, "0.9", True, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(InvalidParameterError, match="between 0 and 1"):
        split_text("some text", ratio)


# --- loaders and counts ----------------------------------------------------------


def test_counts_for_the_verdict(book_split):
    s = book_split
    assert (s.characters, s.tokens) == (20479, 5145)
    assert (s.train_tokens, s.val_tokens) == (4608, 512)
    assert (s.train.characters, s.val.characters) == (18431, 2048)
    assert (s.train.windows, s.train.batches, s.train.dropped_windows) == (18, 9, 0)
    assert (s.val.windows, s.val.batches) == (2, 1)
    assert s.warnings == []
    # The book's own count: input tokens over the loader's batches.
    assert sum(x.numel() for x, _ in s.train_loader) == 4608
    assert sum(x.numel() for x, _ in s.val_loader) == 512
    d = s.to_dict()
    assert d["train_tokens"] == 4608 and d["train"]["tokens"] == len(s.train_loader.dataset.token_ids)


def test_loaders_equal_the_books_after_manual_seed(book_ch02, verdict, book_split):
    train_text, val_text = split_text(verdict, 0.9)
    torch.manual_seed(123)
    ref_train = book_ch02.create_dataloader_v1(
        train_text, batch_size=2, max_length=256, stride=256, drop_last=True, shuffle=True, num_workers=0
    )
    ref_val = book_ch02.create_dataloader_v1(
        val_text, batch_size=2, max_length=256, stride=256, drop_last=False, shuffle=False, num_workers=0
    )
    torch.manual_seed(123)  # the notebook seeds again before calc_loss_loader
    ref_batches = list(ref_train)
    ours = list(book_split.train_loader)
    assert len(ours) == len(ref_batches) == 9
    for (x, y), (rx, ry) in zip(ours, ref_batches, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    for (x, y), (rx, ry) in zip(book_split.val_loader, ref_val, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # The shuffle is not the identity (else the comparison above would prove little).
    assert [int(x[0, 0]) for x, _ in ours] != [int(x[0, 0]) for x, _ in book_split.val_loader] + [0] * 8


def test_shuffle_repeats_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    order = list(BookShuffle(18, 123))
    assert sorted(order) == list(range(18)) and order != list(range(18))
    assert list(BookShuffle(18, 123)) == order
    assert list(BookShuffle(18, 124)) != order
    assert torch.equal(torch.get_rng_state(), state)


def test_make_loaders_leave_the_global_generator_alone(verdict):
    """Evaluating in one session must not shift another session's seeded model build."""
    split = make_loaders(verdict, LoaderSettings())
    state = torch.get_rng_state()
    for loader in (split.train_loader, split.val_loader):
        assert sum(1 for _ in loader) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_create_loader_makes_the_books_batches(verdict, tokenizer):
    loader = create_loader(verdict, tokenizer, 2, 256, 256, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (2, 256) and x.dtype == torch.long
    assert loader.drop_last and len(loader) == len(GPTDatasetV1(verdict, tokenizer, 256, 256)) // 2


def test_short_split_warns_like_the_book(verdict):
    text = verdict[:1500]  # ~360 tokens: the validation tenth has ~36
    s = make_loaders(text, LoaderSettings())
    assert len(s.warnings) == 2 and s.warnings[0].startswith("Not enough tokens for the validation loader")
    assert s.warnings[1].startswith(
        "The training loader has no batch: its 1 window(s) do not fill one batch of 2"
    )
    assert (s.val.windows, s.val.batches, s.val_tokens) == (0, 0, 0)
    assert s.train.windows == 1 and s.train.batches == 0 and s.train.dropped_windows == 1


def test_too_short_for_both_splits_warns_twice():
    s = make_loaders("A short text of a few words.", LoaderSettings(context_length=16))
    assert [w.split(":")[0] for w in s.warnings] == [
        "Not enough tokens for the training loader",
        "Not enough tokens for the validation loader",
    ]
    assert s.train.batches == 0 and s.val.batches == 0


def test_dropped_windows_are_reported(verdict):
    s = make_loaders(verdict, LoaderSettings(batch_size=4))
    assert (s.train.windows, s.train.batches, s.train.dropped_windows) == (18, 4, 2)
    assert s.train_tokens == 16 * 256
    assert any("drops 2 of its 18 windows" in w for w in s.warnings)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"context_length": 0},
        {"stride": -1},
        {"batch_size": 0},
        {"batch_size": 1000},
        {"batch_size": 2.5},
        {"train_ratio": 1.0},
        {"seed": -1},
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(InvalidParameterError):
        LoaderSettings(**kwargs).validate()


def test_context_longer_than_the_model():
    with pytest.raises(InvalidParameterError, match="longer than the model's 256"):
        LoaderSettings(context_length=512).validate(256)
