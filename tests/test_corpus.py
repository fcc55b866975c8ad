"""Corpus loading: The Verdict from a path, the env var, the cache or a (mocked) download;
bad uploads refused with a message that says why."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest

from core import corpus
from core.corpus import (
    MAX_CORPUS_BYTES,
    VERDICT_ENV,
    VERDICT_SHA256,
    VERDICT_URL,
    decode_corpus_bytes,
    load_verdict,
    read_corpus_file,
    validate_corpus_text,
    verdict_cache_path,
)
from core.errors import CorpusError, LossLensError


@pytest.fixture
def verdict_bytes(verdict_path) -> bytes:
    return verdict_path.read_bytes()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder and no env var override."""
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(VERDICT_ENV, raising=False)
    return tmp_path / "cache"


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mock_urlopen(monkeypatch, payload=None, error=None):
    calls = []

    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        if error is not None:
            raise error
        return FakeResponse(payload)

    monkeypatch.setattr(corpus.urllib.request, "urlopen", urlopen)
    return calls


# --- the shared file -------------------------------------------------------------


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


def test_mostly_control_characters_is_refused():
    data = bytes([1, 2, 3, 4, 5, 6, 7, 8] * 50) + b"some words"
    with pytest.raises(CorpusError, match="control characters"):
        decode_corpus_bytes(data, "blob.bin")


def test_non_utf8_is_refused_with_the_offset():
    data = "Le café est prêt.".encode("latin-1")
    with pytest.raises(CorpusError, match=r"not UTF-8.*0xE9 at offset 6"):
        decode_corpus_bytes(data, "latin1.txt")


def test_too_large_is_refused_and_states_the_limit():
    data = b"a" * (MAX_CORPUS_BYTES + 1)
    with pytest.raises(CorpusError, match="20 MB"):
        decode_corpus_bytes(data, "big.txt")
    with pytest.raises(CorpusError, match="20 MB"):
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


def test_explicit_path_wins(fresh_cache, verdict_path, tmp_path, monkeypatch):
    other = tmp_path / "other.txt"
    other.write_text("a different corpus " * 10, encoding="utf-8")
    monkeypatch.setenv(VERDICT_ENV, str(other))
    calls = mock_urlopen(monkeypatch, error=AssertionError("no download expected"))
    assert len(load_verdict(verdict_path)) == 20479
    assert load_verdict() == other.read_text(encoding="utf-8")  # then the env var
    assert calls == []


def test_env_var_points_to_a_local_copy(fresh_cache, verdict_path, monkeypatch):
    monkeypatch.setenv(VERDICT_ENV, str(verdict_path))
    calls = mock_urlopen(monkeypatch, error=AssertionError("no download expected"))
    assert len(load_verdict()) == 20479
    assert calls == []
    assert not verdict_cache_path().exists()


def test_env_var_to_a_missing_file_says_so(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(VERDICT_ENV, str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="missing.txt"):
        load_verdict()


def test_download_verifies_and_caches(fresh_cache, verdict_bytes, monkeypatch):
    calls = mock_urlopen(monkeypatch, payload=verdict_bytes)
    text = load_verdict(timeout=3.5)
    assert calls == [(VERDICT_URL, 3.5)]
    assert len(text) == 20479
    cached = verdict_cache_path()
    assert cached.parent == fresh_cache
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == VERDICT_SHA256
    assert [p.name for p in fresh_cache.iterdir()] == ["the-verdict.txt"]  # no temp file left

    # Second use: from the cache, no network.
    calls.clear()
    mock_urlopen(monkeypatch, error=AssertionError("no download expected"))
    assert load_verdict() == text


def test_offline_gives_a_how_to_message(fresh_cache, monkeypatch):
    mock_urlopen(monkeypatch, error=urllib.error.URLError("Name or service not known"))
    with pytest.raises(CorpusError) as e:
        load_verdict()
    message = str(e.value)
    assert "Could not download The Verdict (Name or service not known)" in message
    for hint in ("Upload", "paste", "--corpus", VERDICT_ENV):
        assert hint in message
    assert not verdict_cache_path().exists()


def test_timeout_gives_a_how_to_message(fresh_cache, monkeypatch):
    mock_urlopen(monkeypatch, error=TimeoutError("timed out"))
    with pytest.raises(CorpusError, match="timed out.*Upload"):
        load_verdict()


def test_hash_mismatch_is_refused_and_not_cached(fresh_cache, verdict_bytes, monkeypatch):
    tampered = verdict_bytes.replace(b"Gisburn", b"Gisborn", 1)
    mock_urlopen(monkeypatch, payload=tampered)
    with pytest.raises(CorpusError, match="does not match its published hash.*Upload"):
        load_verdict()
    assert list(fresh_cache.iterdir()) == []


def test_damaged_cache_is_downloaded_again(fresh_cache, verdict_bytes, monkeypatch):
    verdict_cache_path().write_bytes(b"half a file")
    calls = mock_urlopen(monkeypatch, payload=verdict_bytes)
    assert len(load_verdict()) == 20479
    assert len(calls) == 1
    assert verdict_cache_path().read_bytes() == verdict_bytes


def test_no_cache_and_no_download(fresh_cache, monkeypatch):
    mock_urlopen(monkeypatch, error=AssertionError("no download expected"))
    with pytest.raises(CorpusError, match="not in the cache.*Upload"):
        load_verdict(download=False)


def test_unusable_cache_folder_still_gives_the_text(tmp_path, verdict_bytes, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(not_a_folder))
    monkeypatch.delenv(VERDICT_ENV, raising=False)
    calls = mock_urlopen(monkeypatch, payload=verdict_bytes)
    assert len(load_verdict()) == 20479
    assert len(calls) == 1 and not_a_folder.is_file()
