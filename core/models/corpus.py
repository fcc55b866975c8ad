"""Corpora: The Verdict (shipped with LossLens, checked) or any UTF-8 text the user gives.

The Verdict is looked for in this order: an explicit path, $LOSSLENS_VERDICT_PATH, then the
copy that ships as package data (core/models/data/the-verdict.txt). Every copy of The Verdict read
without an explicit path is checked against the book's sha256, so a damaged install says so
instead of giving other numbers than the book's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.errors import CorpusError

VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
VERDICT_FILENAME = "the-verdict.txt"
VERDICT_PACKAGED = Path(__file__).resolve().parent / "data" / VERDICT_FILENAME
VERDICT_ENV = "LOSSLENS_VERDICT_PATH"

# 20 MB of UTF-8 is ~5 million tokens: the token ids fit easily in memory, and a full pass
# would take hours on a CPU, so anything larger is surely a mistake.
MAX_CORPUS_BYTES = 20_000_000
MAX_CORPUS_LABEL = "20 MB"

# Why the limit, and what to do, for every message that refuses a large corpus.
TOO_LARGE_ADVICE = (
    "A larger one would hold the server's memory and take hours to evaluate; use a part of it "
    f"(at most {MAX_CORPUS_LABEL})."
)

HOW_TO_PROVIDE = (
    "Upload the file or paste its text, or point LossLens to a local copy: "
    f"`--corpus PATH` on the command line or the environment variable {VERDICT_ENV}=PATH."
)

# Characters that do not occur in text: C0 controls other than tab, newline, form feed, CR.
_CONTROL = {c for c in range(32) if c not in (9, 10, 12, 13)} | {127}
_MAX_CONTROL_SHARE = 0.01


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_corpus_text(text: str, name: str = "The text") -> str:
    """Return `text` unchanged if it can be a corpus; raise CorpusError saying why not."""
    if not isinstance(text, str):
        raise CorpusError(f"{name} must be text, got {type(text).__name__}.")
    if len(text) > MAX_CORPUS_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CORPUS_BYTES:
        raise CorpusError(
            f"{name} is larger than {MAX_CORPUS_LABEL}, the largest corpus LossLens accepts. "
            f"{TOO_LARGE_ADVICE}"
        )
    if not text.strip():
        raise CorpusError(f"{name} is empty: give a text of at least a few hundred words.")
    if "\x00" in text:
        raise CorpusError(f"{name} contains NUL bytes: it looks like a binary file, not text.")
    controls = sum(text.count(chr(c)) for c in _CONTROL)
    if controls > _MAX_CONTROL_SHARE * len(text):
        raise CorpusError(
            f"{name} is {controls / len(text):.0%} control characters: it looks like a binary file, not text."
        )
    return text


# Byte-order marks of the wide Unicode encodings; UTF-32's first: its little-endian mark starts
# with UTF-16's.
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _wide_encoding(data: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' for a text saved in one of those (a byte-order mark, or, without one,
    the NUL byte beside each Latin letter), else None: such a file is text, not binary."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    head = data[:4096]
    if len(head) >= 8:
        for encoding, width in (("UTF-32", 4), ("UTF-16", 2)):
            for offset in range(width):  # big- and little-endian: the NULs on one side
                units = [head[i : i + width] for i in range(0, len(head) - width + 1, width)]
                nul_rest = sum(u[:offset] + u[offset + 1 :] == bytes(width - 1) for u in units)
                if nul_rest >= 0.9 * len(units) and sum(u[offset] != 0 for u in units) >= 0.9 * len(units):
                    return encoding
    return None


def decode_corpus_bytes(data: bytes, name: str = "upload") -> str:
    """Decode an uploaded or read file as UTF-8 text, refusing empty, binary or huge input."""
    if len(data) > MAX_CORPUS_BYTES:
        raise CorpusError(
            f"{name} is {len(data) / 1e6:.1f} MB; the largest corpus LossLens accepts is {MAX_CORPUS_LABEL}. "
            + TOO_LARGE_ADVICE
        )
    if not data.strip():
        raise CorpusError(f"{name} is empty.")
    encoding = _wide_encoding(data)
    if encoding:
        raise CorpusError(
            f"{name} is {encoding} text, not UTF-8: save it as UTF-8 (in most editors: Save As, "
            "encoding UTF-8) and try again."
        )
    if b"\x00" in data:
        raise CorpusError(f"{name} contains NUL bytes: it is a binary file, not UTF-8 text.")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the text
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{name} is not UTF-8 text (invalid byte 0x{data[e.start]:02X} at offset {e.start}). "
            "Save it as UTF-8 and try again."
        ) from None
    return validate_corpus_text(text, name)


def read_corpus_file(path: str | os.PathLike) -> str:
    """Read a corpus file, checking its size before reading it."""
    path = Path(path).expanduser()
    try:
        if not path.is_file():
            raise CorpusError(f"No corpus file at {path}.")
        size = path.stat().st_size
        if size > MAX_CORPUS_BYTES:
            raise CorpusError(
                f"{path.name} is {size / 1e6:.1f} MB; "
                f"the largest corpus LossLens accepts is {MAX_CORPUS_LABEL}. " + TOO_LARGE_ADVICE
            )
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"Cannot read {path}: {e.strerror or e}.") from None
    return decode_corpus_bytes(data, path.name)


def load_verdict(path: str | os.PathLike | None = None) -> str:
    """The Verdict's text: from `path`, $LOSSLENS_VERDICT_PATH, or the packaged copy (checked)."""
    if path is not None:
        return read_corpus_file(path)
    if os.environ.get(VERDICT_ENV):
        return read_corpus_file(os.environ[VERDICT_ENV])
    try:
        data = VERDICT_PACKAGED.read_bytes()
    except OSError as e:
        raise CorpusError(
            f"The Verdict that ships with LossLens is missing ({VERDICT_PACKAGED}: {e.strerror or e}). "
            f"Reinstall LossLens, or: {HOW_TO_PROVIDE}"
        ) from None
    digest = sha256_hex(data)
    if digest != VERDICT_SHA256:
        raise CorpusError(
            f"The Verdict that ships with LossLens is damaged (sha256 {digest[:12]}..., expected "
            f"{VERDICT_SHA256[:12]}...), so it was not used. Reinstall LossLens, or: {HOW_TO_PROVIDE}"
        )
    return decode_corpus_bytes(data, VERDICT_FILENAME)
