"""The offline GPT-2 tokenizer equals tiktoken's gpt2, refuses corrupted files, displays every piece."""

from __future__ import annotations

import shutil
import unicodedata

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from core.book.tokenizer import (
    ENDOFTEXT,
    ENDOFTEXT_ID,
    VOCAB_SIZE,
    TokenizerFilesError,
    encode,
    load_encoding,
    seed_tiktoken_cache,
    token_piece,
    token_pieces,
    vocab_dir,
)

ISSUE_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
ISSUE_IDS = [
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
    ISSUE_TEXT,
    "every effort moves you",
    "  two spaces,\ttab\nnewline\r\n",
    "Emoji 😀👍🏽 and flags 🇩🇪",
    "مرحبا بالعالم",  # Arabic
    "你好，世界",  # Chinese
    "नमस्ते दुनिया",  # Hindi
    "zero\u200bwidth \u202ebidi\u202c nul\x00 bell\x07",
    "<|im_start|>user<|im_end|> <|endoftext",
]
# Categories a piece's display must never contain: they are invisible or reorder the page.
INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"}


def test_issue_sentence_ids(tokenizer):
    assert encode(ISSUE_TEXT, tokenizer) == ISSUE_IDS
    assert tokenizer.decode(ISSUE_IDS) == ISSUE_TEXT
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
    return tiktoken.get_encoding("gpt2")


def test_equals_tiktoken_gpt2(tokenizer, tiktoken_gpt2):
    assert tokenizer._mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    assert tokenizer._special_tokens == tiktoken_gpt2._special_tokens == {ENDOFTEXT: ENDOFTEXT_ID}
    assert tokenizer._pat_str == tiktoken_gpt2._pat_str
    assert tokenizer.n_vocab == tiktoken_gpt2.n_vocab == VOCAB_SIZE
    for text in SAMPLES:
        assert encode(text, tokenizer) == tiktoken_gpt2.encode(text, allowed_special={ENDOFTEXT}), text
    assert tiktoken_gpt2.encode(ISSUE_TEXT, allowed_special={ENDOFTEXT}) == ISSUE_IDS


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
    piece = token_piece(ENDOFTEXT_ID, tokenizer)
    assert piece.is_special and piece.display == ENDOFTEXT and not piece.is_bytes


@pytest.mark.parametrize("text", ["<|im_start|>", "<|endoftext", "<|fim_prefix|>", "<| endoftext |>"])
def test_other_special_looking_strings_are_plain_text(tokenizer, text):
    ids = encode(text, tokenizer)
    assert ENDOFTEXT_ID not in ids and len(ids) > 1
    assert tokenizer.decode(ids) == text


def test_whitespace_is_visible(tokenizer):
    ids = encode("Hi there\n\tyou", tokenizer)
    displays = [p.display for p in token_pieces(ids, tokenizer)]
    assert displays == ["Hi", "␣there", "↵", "⇥", "you"]
    assert token_pieces(encode("a  b", tokenizer), tokenizer)[1].display.startswith("␣")


@pytest.mark.parametrize("text", ["😀", "👍🏽", "🇩🇪", "你好", "नमस्ते", "مرحبا"])
def test_split_characters_show_their_bytes(tokenizer, text):
    ids = encode(text, tokenizer)
    pieces = token_pieces(ids, tokenizer)
    assert b"".join(tokenizer.decode_single_token_bytes(i) for i in ids) == text.encode()
    for p in pieces:
        assert "\ufffd" not in p.display and p.display
        if p.is_bytes:
            assert p.text == "" and "<0x" in p.display
        else:
            assert p.display == p.text  # whole characters are shown as they are
    if text == "😀":  # F0 9F 98 80: no byte of it decodes alone
        assert "".join(p.display for p in pieces) == "<0xF0><0x9F><0x98><0x80>"


def _bytes_shown(ch: str) -> str:
    return "".join(f"<0x{b:02X}>" for b in ch.encode())


@pytest.mark.parametrize(
    "ch, shown",
    [
        ("\x00", "\\x00"),
        ("\x07", "\\x07"),
        ("\x1b", "\\x1b"),
        ("\r", "␍"),
        ("\xa0", "\\xa0"),
        ("\xad", "\\xad"),
        ("\u200b", "\\u200b"),
        # BPE splits these into byte pieces, which are visible as such.
        ("\u202e", _bytes_shown("\u202e")),
        ("\u2066", _bytes_shown("\u2066")),
        ("\ufeff", _bytes_shown("\ufeff")),
    ],
)
def test_control_zero_width_and_bidi_are_visible(tokenizer, ch, shown):
    ids = encode(f"a{ch}b", tokenizer)
    assert tokenizer.decode(ids) == f"a{ch}b"
    joined = "".join(p.display for p in token_pieces(ids, tokenizer))
    assert shown in joined and ch not in joined


def test_every_vocab_piece_is_visible(tokenizer):
    """All 50257 pieces: never empty or blank, never U+FFFD, never an invisible character."""
    for token_id in range(VOCAB_SIZE):
        d = token_piece(token_id, tokenizer).display
        assert d.strip() and "\ufffd" not in d, (token_id, d)
        assert not any(unicodedata.category(c) in INVISIBLE for c in d), (token_id, d)
    # Real U+FFFD characters in the vocabulary are escaped, not shown as a failed decode.
    assert token_piece(4210, tokenizer).display == "\\ufffd"
