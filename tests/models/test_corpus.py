"""Corpus loading: The Verdict from a path, the env var or the packaged copy (checked);
bad uploads refused with a message that says why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import CorpusError, LossLensError
from core.models import corpus
from core.models.corpus import (
    MAX_CORPUS_BYTES,
    VERDICT_ENV,
    VERDICT_PACKAGED,
    VERDICT_SHA256,
    decode_corpus_bytes,
    load_verdict,
    read_corpus_file,
    validate_corpus_text,
)


@pytest.fixture
def verdict_bytes(verdict_path) -> bytes:
    return verdict_path.read_bytes()


# --- the packaged file------------------------------------------------------------


def test_read_verdict_file(verdict_path, verdict_bytes):
    text = read_corpus_file(verdict_path)
    assert len(text) == 20479
    assert hashlib.sha256(verdict_bytes).hexdigest() == VERDICT_SHA256
    assert text == verdict_bytes.decode("utf-8")
    assert text.startswith("I HAD always thought Jack Gisburn")


def test_corpus_error_is_a_losslens_error():
    assert issubclass(CorpusError, LossLensError)


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   \n\t  "])
def test_empty_is_refused(data):
    with pytest.raises(CorpusError, match="empty"):
        decode_corpus_bytes(data, "notes.txt")


def test_binary_with_nul_bytes_is_refused():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    with pytest.raises(CorpusError, match="binary"):
        decode_corpus_bytes(png, "picture.png")


@pytest.mark.parametrize(
    ("encoding", "named"),
    [
        ("utf-16", "UTF-16"),  # with its byte-order mark, as Windows' Notepad saves "Unicode"
        ("utf-16-le", "UTF-16"),
        ("utf-16-be", "UTF-16"),
        ("utf-32", "UTF-32"),
        ("utf-32-be", "UTF-32"),
    ],
)
def test_a_utf16_or_utf32_text_is_named_so_not_called_binary(verdict_path, tmp_path, encoding, named):
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    path = tmp_path / f"verdict-{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(CorpusError) as e:
        read_corpus_file(path)
    message = str(e.value)
    assert f"is {named} text, not UTF-8: save it as UTF-8" in message and "binary" not in message


def test_utf8_with_a_byte_order_mark_is_still_read(verdict_path):
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    assert decode_corpus_bytes(text.encode("utf-8-sig"), "bom.txt") == text


def test_mostly_control_characters_is_refused():
    data = bytes([1, 2, 3, 4, 5, 6, 7, 8] * 50) + b"some words"
    with pytest.raises(CorpusError, match="control characters"):
        decode_corpus_bytes(data, "blob.bin")


def test_non_utf8_is_refused_with_the_offset():
    data = "Le café est prêt.".encode("latin-1")
    with pytest.raises(CorpusError, match=r"not UTF-8.*0xE9 at offset 6"):
        decode_corpus_bytes(data, "latin1.txt")


def test_too_large_is_refused_and_states_the_limit_why_and_what_to_do():
    data = b"a" * (MAX_CORPUS_BYTES + 1)
    why_and_what = r"20 MB.*hold the server's memory and take hours.*use a part of it \(at most 20 MB\)"
    with pytest.raises(CorpusError, match=why_and_what):
        decode_corpus_bytes(data, "big.txt")
    with pytest.raises(CorpusError, match=why_and_what):
        validate_corpus_text("a" * (MAX_CORPUS_BYTES + 1))


def test_too_large_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(MAX_CORPUS_BYTES + 10)  # sparse: refused on its size, never read
    with pytest.raises(CorpusError, match=r"20\.0 MB.*20 MB"):
        read_corpus_file(big)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CorpusError, match="No corpus file"):
        read_corpus_file(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="No corpus file"):
        read_corpus_file(tmp_path)


def test_valid_text_passes_unchanged_and_bom_is_dropped():
    text = "Ünïcödé, emoji 🙂, tabs\tand\r\nnewlines <|endoftext|> ok"
    assert decode_corpus_bytes(text.encode("utf-8")) == text
    assert decode_corpus_bytes(b"\xef\xbb\xbf" + text.encode("utf-8")) == text
    assert validate_corpus_text(text) == text


def test_pasted_text_with_nul_is_refused():
    with pytest.raises(CorpusError, match="NUL"):
        validate_corpus_text("text\x00text")
    with pytest.raises(CorpusError, match="must be text"):
        validate_corpus_text(b"bytes")  # type: ignore[arg-type]


# --- where The Verdict comes from ------------------------------------------------


def test_explicit_path_wins(verdict_path, tmp_path, monkeypatch):
    other = tmp_path / "other.txt"
    other.write_text("a different corpus " * 10, encoding="utf-8")
    monkeypatch.setenv(VERDICT_ENV, str(other))
    assert len(load_verdict(verdict_path)) == 20479
    assert load_verdict() == other.read_text(encoding="utf-8")  # then the env var


def test_env_var_to_a_missing_file_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(VERDICT_ENV, str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="missing.txt"):
        load_verdict()


def test_the_packaged_copy_is_the_default_and_is_the_books(monkeypatch, verdict_bytes):
    monkeypatch.delenv(VERDICT_ENV, raising=False)
    text = load_verdict()
    assert VERDICT_PACKAGED.parent.name == "data" and VERDICT_PACKAGED.parent.parent.name == "models"
    assert hashlib.sha256(VERDICT_PACKAGED.read_bytes()).hexdigest() == VERDICT_SHA256
    assert len(text) == 20479 and text.encode("utf-8") == verdict_bytes
    assert text.startswith("I HAD always thought Jack Gisburn")


def test_no_network_is_needed(monkeypatch):
    """The default path opens no socket: a workshop's wifi can be down."""
    import socket

    def refuse(*a, **k):
        raise AssertionError("load_verdict tried the network")

    monkeypatch.delenv(VERDICT_ENV, raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(load_verdict()) == 20479


def test_a_damaged_packaged_copy_is_refused(tmp_path, monkeypatch, verdict_bytes):
    damaged = tmp_path / "the-verdict.txt"
    damaged.write_bytes(verdict_bytes.replace(b"Gisburn", b"Gisborn", 1))
    monkeypatch.delenv(VERDICT_ENV, raising=False)
    monkeypatch.setattr(corpus, "VERDICT_PACKAGED", damaged)
    with pytest.raises(CorpusError) as e:
        load_verdict()
    message = str(e.value)
    assert "damaged" in message and VERDICT_SHA256[:12] in message
    for hint in ("Upload", "paste", "--corpus", VERDICT_ENV):
        assert hint in message


def test_a_missing_packaged_copy_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.delenv(VERDICT_ENV, raising=False)
    monkeypatch.setattr(corpus, "VERDICT_PACKAGED", tmp_path / "gone.txt")
    with pytest.raises(CorpusError, match="missing.*Reinstall.*Upload"):
        load_verdict()


def test_nothing_in_the_repository_reads_a_folder_beside_it():
    """A bare clone has nothing beside it: no code, test or bench may look there."""
    root = Path(corpus.__file__).resolve().parents[2]
    offenders = []
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".sh", ".toml", ".txt") and path.name != "run":
            continue
        if ".git" in path.parts or "data" in path.relative_to(root).parts[:2]:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if '"' + "shared" + '" / "data"' in text or "../" + "shared" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
