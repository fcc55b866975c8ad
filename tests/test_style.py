"""The house style is checked with the tests: ruff's lint rules (line length 110, no unused noqa)
and its formatter, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_finds_nothing():
    proc = ruff("check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_the_code_is_formatted():
    proc = ruff("format", "--no-cache", "--check", ".")
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_the_rules_include_line_length_and_unused_noqa():
    config = (ROOT / "pyproject.toml").read_text()
    assert "line-length = 110" in config and '"RUF100"' in config
    assert "E501" not in config  # not ignored anywhere
