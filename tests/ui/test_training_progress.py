"""A training run's greedy samples as the Training page prints them."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from ui.training_progress import START_CONTEXT, sample_line


def test_a_wordless_sample_shows_its_spaces_counted_and_says_why():
    assert sample_line(START_CONTEXT + " " * 50) == (START_CONTEXT + " ␣×50", True)
    assert sample_line(START_CONTEXT + ",,,,.") == (START_CONTEXT + ",,,,.", True)
    assert sample_line(START_CONTEXT + " and the the") == (START_CONTEXT + " and the the", False)

    def samples_page():
        from ui.training_progress import START_CONTEXT, show_samples

        show_samples([(1, START_CONTEXT + " " * 50), (2, START_CONTEXT + ", and the")])

    at = AppTest.from_function(samples_page, default_timeout=120).run()
    assert [t.value for t in at.text] == [
        "Epoch 1: Every effort moves you ␣×50",
        "Epoch 2: Every effort moves you, and the",
    ]
    assert at.caption[0].value.startswith("Epoch 1: no word after the prompt yet")
