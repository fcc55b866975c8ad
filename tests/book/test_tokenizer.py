"""Section 2.5's tokenizer: tiktoken.get_encoding("gpt2"), as the book calls it, is the encoding
LossLens builds offline (core/runtime/tokenizer_files.py)."""

from __future__ import annotations

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from core.book.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE, gpt2_tokenizer
from core.runtime.tokenizer_files import encode, seed_tiktoken_cache

# The book's example in section 2.5.
BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
BOOK_IDS = [
    15496,
    11,
    466,
    345,
    588,
    8887,
    30,
    220,
    50256,
    554,
    262,
    4252,
    18250,
    8812,
    2114,
    286,
    617,
    34680,
    27271,
    13,
]
SAMPLES = [
    BOOK_TEXT,
    "every effort moves you",
    "  two spaces,\ttab\nnewline\r\n",
    "Emoji 😀👍🏽 and flags 🇩🇪",
    "مرحبا بالعالم",  # Arabic
    "你好，世界",  # Chinese
    "नमस्ते दुनिया",  # Hindi
    "zero\u200bwidth \u202ebidi\u202c nul\x00 bell\x07",
    "<|im_start|>user<|im_end|> <|endoftext",
]


def test_the_books_sentence_ids(tokenizer):
    assert encode(BOOK_TEXT, tokenizer) == BOOK_IDS
    assert tokenizer.decode(BOOK_IDS) == BOOK_TEXT
    assert tokenizer.n_vocab == VOCAB_SIZE


@pytest.fixture
def tiktoken_gpt2(tmp_path, monkeypatch):
    """tiktoken.get_encoding("gpt2") loaded from the seeded cache, with the network refused."""

    def no_network(blobpath):
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path / "tiktoken")))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    # An empty registry: loaded here from the seeded files, and the real one restored afterwards.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return gpt2_tokenizer()


def test_the_books_tokenizer_equals_the_offline_one(tokenizer, tiktoken_gpt2):
    assert tokenizer._mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    assert tokenizer._special_tokens == tiktoken_gpt2._special_tokens == {ENDOFTEXT: ENDOFTEXT_ID}
    assert tokenizer._pat_str == tiktoken_gpt2._pat_str
    assert tokenizer.n_vocab == tiktoken_gpt2.n_vocab == VOCAB_SIZE
    for text in SAMPLES:
        assert encode(text, tokenizer) == tiktoken_gpt2.encode(text, allowed_special={ENDOFTEXT}), text
    assert tiktoken_gpt2.encode(BOOK_TEXT, allowed_special={ENDOFTEXT}) == BOOK_IDS
