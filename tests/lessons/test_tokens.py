"""Every token piece is shown visibly: whitespace, split characters, controls, the whole vocabulary."""

from __future__ import annotations

import unicodedata

import pytest

from core.book.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE
from core.lessons.tokens import token_piece, token_pieces
from core.runtime.tokenizer_files import encode

# Categories a piece's display must never contain: they are invisible or reorder the page.
INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"}


def test_endoftext_shows_as_one_special_piece(tokenizer):
    piece = token_piece(ENDOFTEXT_ID, tokenizer)
    assert piece.is_special and piece.display == ENDOFTEXT and not piece.is_bytes


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
