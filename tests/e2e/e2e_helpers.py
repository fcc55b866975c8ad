"""What only the browser tests need on top of devtools.harness: pytest's skip-or-fail on Chromium,
and a page whose requests may not leave the machine."""

from __future__ import annotations

import os

import pytest

from devtools.harness import find_chromium


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
