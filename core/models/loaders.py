"""Section 5.1.3's data for the app: a character split, the book's windows and loaders, and their counts.

The windows are the book's GPTDatasetV1 windows (core/book/data.py), made on demand from one
tensor of token ids: a 10 MB corpus costs its token ids (~20 MB), not every window twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.book.tokenizer import ENDOFTEXT
from core.errors import InvalidParameterError
from core.runtime.tokenizer_files import get_tokenizer


def token_tensor(text: str, tokenizer: tiktoken.Encoding | None = None) -> torch.Tensor:
    """Token ids of `text` as int64, with <|endoftext|> allowed (as the book's dataset)."""
    tokenizer = tokenizer or get_tokenizer()
    # encode_to_numpy skips the Python list of ints (~36 bytes per token).
    ids = tokenizer.encode_to_numpy(text, allowed_special={ENDOFTEXT})
    return torch.from_numpy(ids.astype(np.int64))


class TokenWindows(Dataset):
    """GPTDatasetV1's windows: `max_length` tokens every `stride` tokens, targets shifted by one."""

    def __init__(self, token_ids: torch.Tensor, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise InvalidParameterError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        self.token_ids = token_ids
        self.max_length = max_length
        self.stride = stride

    def __len__(self):
        # The book's range(0, len(token_ids) - max_length, stride).
        return len(range(0, len(self.token_ids) - self.max_length, self.stride))

    def __getitem__(self, idx):
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"window {idx} out of range ({n} windows)")
        i = idx * self.stride
        return self.token_ids[i : i + self.max_length], self.token_ids[i + 1 : i + self.max_length + 1]


class BookShuffle(Sampler):
    """The order a shuffling DataLoader yields right after `torch.manual_seed(seed)`.

    The book seeds the global generator, then the DataLoader draws its base seed and the
    RandomSampler draws the seed of its permutation. Replaying those draws on a private
    generator gives the same order without touching (or depending on) the global one,
    which other threads of the app may be using.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed
        perm_seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(perm_seed))
        for start in range(0, self.n, 65536):  # a Python list of every index would cost ~36 B each
            yield from perm[start : start + 65536].tolist()


def create_loader(
    txt: str | None,
    tokenizer: tiktoken.Encoding | None,
    batch_size: int,
    max_length: int,
    stride: int,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int | None = None,
    token_ids: torch.Tensor | None = None,
) -> DataLoader:
    """The book's create_dataloader_v1 on TokenWindows. With `seed`, a shuffled order equals the
    book's after torch.manual_seed(seed); without it, shuffling uses the global generator as the book's."""
    dataset = TokenWindows(
        token_ids if token_ids is not None else token_tensor(txt, tokenizer), max_length, stride
    )
    shuffle = shuffle and len(dataset) > 0  # RandomSampler refuses an empty dataset
    if shuffle and seed is not None:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=BookShuffle(len(dataset), seed),
            drop_last=drop_last,
            generator=torch.Generator(),  # keeps the DataLoader's own draw off the global generator
        )
    # With a seed the caller wants isolation: even an unshuffled DataLoader draws a base seed
    # from the global generator on every pass, which would disturb other sessions' seeding.
    generator = torch.Generator() if seed is not None else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
    )


def split_text(text: str, train_ratio: float = 0.9) -> tuple[str, str]:
    """The book's split: the first `train_ratio` of the characters train, the rest validate."""
    _check_ratio(train_ratio)
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


def _check_ratio(train_ratio: float) -> None:
    if isinstance(train_ratio, bool) or not isinstance(train_ratio, (int, float)) or not 0 < train_ratio < 1:
        raise InvalidParameterError(
            f"The train ratio must be a number between 0 and 1 (exclusive), got {train_ratio!r}."
        )


@dataclass(frozen=True)
class LoaderSettings:
    """The book's settings in section 5.1.3."""

    train_ratio: float = 0.9
    context_length: int = 256  # the loaders' max_length
    stride: int = 256
    batch_size: int = 2
    seed: int = 123

    @property
    def max_length(self) -> int:
        return self.context_length

    def validate(self, model_context_length: int | None = None) -> LoaderSettings:
        _check_ratio(self.train_ratio)
        for name in ("context_length", "stride", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(
                    f"{name.replace('_', ' ')} must be a whole number >= 1, got {value!r}."
                )
        if model_context_length is not None and self.context_length > model_context_length:
            raise InvalidParameterError(
                f"Context length {self.context_length} is longer than the model's "
                f"{model_context_length} tokens."
            )
        if self.batch_size > 64:
            raise InvalidParameterError(f"Batch size {self.batch_size} is too large; use at most 64.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InvalidParameterError(f"The seed must be a whole number >= 0, got {self.seed!r}.")
        return self


@dataclass
class SplitCounts:
    name: str  # "train" or "val"
    characters: int
    tokens: int  # tokens of this split's text, tokenized on its own (as the book)
    windows: int
    batches: int
    batch_tokens: int  # input tokens in the loader's batches: the book's train_tokens / val_tokens
    dropped_windows: int  # windows drop_last leaves out


@dataclass
class DataSplit:
    settings: LoaderSettings
    characters: int
    tokens: int  # the whole text's tokens (the book's total_tokens)
    train: SplitCounts
    val: SplitCounts
    warnings: list[str] = field(default_factory=list)
    train_loader: DataLoader | None = field(default=None, repr=False)
    val_loader: DataLoader | None = field(default=None, repr=False)

    @property
    def train_tokens(self) -> int:
        return self.train.batch_tokens

    @property
    def val_tokens(self) -> int:
        return self.val.batch_tokens

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "characters": self.characters,
            "tokens": self.tokens,
            "train_tokens": self.train_tokens,
            "val_tokens": self.val_tokens,
            "train": asdict(self.train),
            "val": asdict(self.val),
            "warnings": list(self.warnings),
        }


def _counts(name, text, loader, settings, drop_last) -> SplitCounts:
    windows = len(loader.dataset)
    batches = len(loader)
    used = batches * settings.batch_size if drop_last else windows
    return SplitCounts(
        name=name,
        characters=len(text),
        tokens=len(loader.dataset.token_ids),
        windows=windows,
        batches=batches,
        batch_tokens=used * settings.context_length,
        dropped_windows=windows - used,
    )


def make_loaders(
    text: str, settings: LoaderSettings | None = None, tokenizer: tiktoken.Encoding | None = None
) -> DataSplit:
    """Split, tokenize and batch `text` as section 5.1.3 does, and count what came out."""
    settings = settings or LoaderSettings()
    settings.validate()
    tokenizer = tokenizer or get_tokenizer()
    train_text, val_text = split_text(text, settings.train_ratio)
    L, S, B = settings.context_length, settings.stride, settings.batch_size
    train_loader = create_loader(
        train_text, tokenizer, B, L, S, shuffle=True, drop_last=True, seed=settings.seed
    )
    val_loader = create_loader(
        val_text, tokenizer, B, L, S, shuffle=False, drop_last=False, seed=settings.seed
    )
    total_tokens = len(token_tensor(text, tokenizer))
    train = _counts("train", train_text, train_loader, settings, drop_last=True)
    val = _counts("val", val_text, val_loader, settings, drop_last=False)

    warnings = []
    # The book's sanity check, on the whole text's token count.
    if total_tokens * settings.train_ratio < L:
        warnings.append(
            f"Not enough tokens for the training loader: {total_tokens} tokens x {settings.train_ratio} "
            f"< context length {L}. Try a lower context length or a higher train ratio."
        )
    if total_tokens * (1 - settings.train_ratio) < L:
        warnings.append(
            "Not enough tokens for the validation loader: "
            f"{total_tokens} tokens x {1 - settings.train_ratio:.2f} "
            f"< context length {L}. Try a lower context length or a lower train ratio."
        )
    if train.dropped_windows and not train.batches:
        warnings.append(
            f"The training loader has no batch: its {train.windows} window(s) do not fill one batch of {B} "
            "(drop_last=True keeps only full batches)."
        )
    elif train.dropped_windows:
        warnings.append(
            f"The training loader drops {train.dropped_windows} of its {train.windows} windows "
            f"(drop_last=True keeps only full batches of {B})."
        )
    return DataSplit(settings, len(text), total_tokens, train, val, warnings, train_loader, val_loader)
