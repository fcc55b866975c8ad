"""The offline GPT-2 tokenizer: the book's ids, and corrupted or missing vocab files refused."""

from __future__ import annotations

import shutil

import pytest

from core.book.tokenizer import ENDOFTEXT_ID
from core.runtime.tokenizer_files import TokenizerFilesError, encode, load_encoding, vocab_dir


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_corrupted_vocab_file_is_refused(tmp_path, name):
    for f in ("vocab.bpe", "encoder.json"):
        shutil.copy(vocab_dir() / f, tmp_path / f)
    assert load_encoding(tmp_path).encode("every effort moves you") == [16833, 3626, 6100, 345]
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(TokenizerFilesError, match=f"{name} is corrupted"):
        load_encoding(tmp_path)


def test_missing_vocab_file_is_refused(tmp_path):
    shutil.copy(vocab_dir() / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerFilesError, match="not found"):
        load_encoding(tmp_path)


def test_endoftext_is_one_special_token(tokenizer):
    assert encode("a<|endoftext|>b", tokenizer) == [64, ENDOFTEXT_ID, 65]


@pytest.mark.parametrize("text", ["<|im_start|>", "<|endoftext", "<|fim_prefix|>", "<| endoftext |>"])
def test_other_special_looking_strings_are_plain_text(tokenizer, text):
    ids = encode(text, tokenizer)
    assert ENDOFTEXT_ID not in ids and len(ids) > 1
    assert tokenizer.decode(ids) == text
