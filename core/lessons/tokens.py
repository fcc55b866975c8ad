"""How each token looks in the lessons: visible whitespace, escaped controls, split bytes."""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import tiktoken

from core.book.tokenizer import ENDOFTEXT, ENDOFTEXT_ID
from core.runtime.tokenizer_files import get_tokenizer

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@dataclass(frozen=True)
class TokenPiece:
    """How one token looks in the UI."""

    id: int
    text: str  # the piece decoded, or "" when its bytes are not UTF-8 on their own
    display: str  # visible whitespace, byte pieces as <0xF0>, control chars as \x00
    is_bytes: bool  # the piece is part of a multi-byte character
    is_special: bool


# Control (Cc), format (Cf: zero-width, bidi, soft hyphen), other spaces (Zs: no-break
# space), line/paragraph separators, private-use, surrogate and unassigned characters would
# be invisible, look like a plain space, or reorder the page: they are shown as escapes.
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"}


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def _visible(text: str) -> str:
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ch == "\ufffd" or unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            # A real U+FFFD in the text is escaped too: shown as is, it would look like a failed decode.
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=1 << 17)  # pieces are immutable; a long top-k list repeats them
def token_piece(token_id: int, tokenizer: tiktoken.Encoding | None = None) -> TokenPiece:
    tokenizer = tokenizer or get_tokenizer()
    if token_id == ENDOFTEXT_ID:
        return TokenPiece(token_id, ENDOFTEXT, ENDOFTEXT, False, True)
    raw = tokenizer.decode_single_token_bytes(token_id)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return TokenPiece(token_id, "", _visible_bytes(raw), True, False)
    return TokenPiece(token_id, text, _visible(text), False, False)


def _visible_bytes(raw: bytes) -> str:
    """Valid UTF-8 runs as text, the bytes of a split character as <0xF0>."""
    out = []
    while raw:
        try:
            out.append(_visible(raw.decode("utf-8")))
            break
        except UnicodeDecodeError as e:
            out.append(_visible(raw[: e.start].decode("utf-8")))
            out.append(f"<0x{raw[e.start]:02X}>")
            raw = raw[e.start + 1 :]
    return "".join(out)


def token_pieces(ids: list[int], tokenizer: tiktoken.Encoding | None = None) -> list[TokenPiece]:
    tokenizer = tokenizer or get_tokenizer()
    return [token_piece(i, tokenizer) for i in ids]
