"""One way to print each kind of number, and user text that always shows literally."""

from __future__ import annotations

from ui import formats


def test_two_different_values_never_print_the_same():
    assert formats.proba(7.4541e-05) == "7.4541e-05"
    assert formats.distinct([1.156e-05, 1.034e-05]) == ["1.1560e-05", "1.0340e-05"]
    assert formats.distinct([1.23456e-05, 1.23457e-05]) == ["1.23456e-05", "1.23457e-05"]
    assert formats.distinct([0.5, 0.5]) == ["5.0000e-01", "5.0000e-01"]  # equal values may


def test_values_where_float_ran_out_print_as_symbols():
    assert formats.num(10.79401) == "10.7940"
    assert formats.num(None) == "n/a" and formats.num("inf") == "∞" and formats.num("-inf") == "−∞"
    assert formats.ppl("inf") == "∞"
    assert formats.to_float("-inf") == float("-inf")


def test_user_text_is_escaped_for_html_and_markdown():
    assert formats.esc('<b x="1">') == "&lt;b x=&quot;1&quot;&gt;"
    assert formats.md("*a* [b](c) $x$") == r"\*a\* \[b\]\(c\) \$x\$"
