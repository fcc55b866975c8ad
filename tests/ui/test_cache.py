"""The shared caches' words to a visitor who waits for a model."""

from __future__ import annotations

from ui import cache


def test_the_load_spinner_speaks_of_a_download_only_for_weights():
    assert "download" not in cache.spinner_text("Building the model for seed 7", seeded=True)
    assert "download" in cache.spinner_text("Loading GPT-2 124M", seeded=False)
