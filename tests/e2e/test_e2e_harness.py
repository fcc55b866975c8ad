"""The browser harness itself: it must see what it is meant to catch, or every other test is blind."""

from __future__ import annotations

import os
import stat

import pytest

from devtools import harness

from . import e2e_helpers


def test_records_console_errors_page_errors_and_dialogs(new_page):
    page = new_page()
    page.set_content("<p>harness</p>")
    page.evaluate("console.error('harness console error')")
    page.evaluate("setTimeout(() => { throw new Error('harness uncaught') }, 0)")
    page.evaluate("alert('harness dialog')")  # dismissed by the recorder, so this returns
    page.wait_for_timeout(200)
    report = page.problems.report()
    assert any("harness console error" in line for line in report), report
    assert any("harness uncaught" in line for line in report), report
    assert any("harness dialog" in line for line in report), report
    page.problems.clear()  # caught on purpose: the teardown check must not fail this test


def test_find_chromium_honours_env(tmp_path, monkeypatch):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("LOSSLENS_CHROMIUM", str(fake))
    assert harness.find_chromium() == str(fake)
    monkeypatch.setenv("LOSSLENS_CHROMIUM", str(tmp_path / "missing"))
    found = harness.find_chromium()
    assert found != str(tmp_path / "missing")
    assert found is None or os.access(found, os.X_OK)


def test_server_is_healthy_on_loopback(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert harness.http_get(f"{server.url}/_stcore/health").strip() == "ok"


def test_without_chromium_skip_with_install_hint_but_fail_in_ci(monkeypatch):
    monkeypatch.setattr(e2e_helpers, "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        e2e_helpers.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        e2e_helpers.require_chromium()


def test_a_tab_handed_on_keeps_nothing_of_its_test(shared_context, server):
    """A finished test's tab goes to the next test (conftest._hand_on): it must arrive as a new tab
    would, or one test's state would reach the next."""
    from .conftest import _hand_on

    page = shared_context.new_page()
    problems = harness.PageProblems()
    problems.attach(page)
    page.goto(f"{server.url}/_stcore/health")  # a document of the server's origin, without the app
    page.evaluate("sessionStorage.setItem('left', 'over')")
    page.emulate_media(reduced_motion="reduce")
    page.route("**/*", lambda route: route.abort())
    tabs = []
    _hand_on(page, problems, tabs)
    assert tabs == [page] and page.url == "about:blank"
    page.goto(f"{server.url}/_stcore/health")  # refused if the route were still there
    assert page.evaluate("sessionStorage.getItem('left')") is None
    assert page.evaluate("matchMedia('(prefers-reduced-motion: reduce)').matches") is False
    page.evaluate("console.error('after the hand-on')")
    page.wait_for_timeout(200)
    assert problems.report() == []
    page.close()
