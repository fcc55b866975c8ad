"""What only the browser tests need on top of devtools.harness: pytest's skip-or-fail on Chromium,
a view opened from its URL or by the sidebar's link, and a page whose requests may not leave the
machine."""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest

from devtools.harness import find_chromium, shown_value, wait_for_app


def require_chromium() -> str:
    """The Chromium path; skip the browser tests with how to install it, but fail in CI."""
    path = find_chromium()
    if path is None:
        reason = (
            "no Chromium found for the browser tests: install it (Debian/Ubuntu: "
            "`sudo apt-get install chromium`) or set LOSSLENS_CHROMIUM to its path"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: the browser tests must run)")
        pytest.skip(reason)
    return path


# A number as the app writes one: 50,257, 10.7940, -9.5042, 7.4541e-05.
NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?"


def assert_said(expected: str, heard: str) -> None:
    """`expected` (a sentence core's numbers give) is in `heard` (what the page says), word for word,
    each count exact and each value as shown_value has it: the server and this process may compute
    on other kernels or thread counts, so a last printed digit can differ."""
    parts = re.split(f"({NUMBER})", expected)
    words, numbers = parts[0::2], parts[1::2]
    found = re.search(f"({NUMBER})".join(re.escape(w) for w in words), heard)
    assert found, f"{expected!r} not said in {heard!r}"
    for said, number in zip(found.groups(), numbers, strict=True):
        if re.search(r"[.e]", number):
            assert shown_value(said, float(number.replace(",", ""))), (said, number)
        else:
            assert said == number, (said, number)  # a count or a shape


PLAY_SECONDS = 2  # figure 5.7's Play on the shared server: 2 s a step (5 s by default), same logic

LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:", "about:")


def block_the_network(page) -> list[str]:
    """Abort (and record) every browser request that would leave the machine."""
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(LOOPBACK):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return outside


def wait_for_view(page, path: str) -> None:
    """Until the view's own heading is drawn (not the one of the view before it)."""
    from ui.lesson_nav import view

    page.locator('[data-testid="stMainBlockContainer"] h2', has_text=view(path).title).first.wait_for()


def open_from_sidebar(page, path: str) -> None:
    """Open a view as a visitor does, by its link in the sidebar: a page switch inside the app,
    without the seconds of a fresh load. Returns once the view's heading is drawn."""
    from ui.lesson_nav import view

    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=view(path).title, exact=True).click()
    page.wait_for_url(f"**/{path}*")
    wait_for_view(page, path)


def open_url(page, server, path: str = "", **params) -> None:
    """A fresh visit to a view, with its settings in the query string, waited for."""
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    page.goto(f"{server.url}/{path}" + (f"?{query}" if query else ""))
    wait_for_app(page)
