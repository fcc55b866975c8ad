"""The sidebar's reading of a link: what it cannot show is named, with what it shows instead."""

from __future__ import annotations

from core.models.registry import available_models
from core.runtime.device import describe
from ui.sidebar import url_corrections


def test_a_links_unknown_preset_or_device_is_named_too():
    notes = url_corrections({"preset": "nope", "device": "tpu", "seed": "12.5"}, available_models(), ["cpu"])
    assert notes == [
        "Seed “12.5” is not a whole number from 0 to 2147483647: using 123.",
        "Preset “nope” is not one of the presets: showing the book example.",
        f"Device “tpu” is not available here: using {describe('cpu')}.",
    ]
    assert (
        url_corrections({"seed": "7", "top_k": "3", "temperature": "0.5"}, available_models(), ["cpu"]) == []
    )
