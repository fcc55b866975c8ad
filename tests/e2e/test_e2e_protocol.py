"""Visitors at protocol level (devtools/protocol.py, the client of bench/load_protocol.py) against a
real server: each gets its own loss, and the check would catch a wrong one."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import replace

import pytest

from devtools.protocol import Plan, Session, crowd, expected_numbers, visit, visitor_text

TIMEOUT = 180  # s per interaction: the first run builds the 124M model on a busy machine


def run(coro):
    """asyncio.run in a thread of its own: the browser tests' Playwright (sync API) keeps an event
    loop running in this thread for the whole session, and asyncio.run refuses to nest in it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_three_visitors_each_get_their_own_loss(server):
    texts = {i: visitor_text(i) for i in range(3)}
    plans = [Plan("text", {"text": texts[i]}) for i in range(3)]
    expected_numbers(plans, texts, {})
    assert len({round(p.expected, 4) for p in plans}) == 3  # distinct, so cross-talk would show
    assert plans[0].open_expected == pytest.approx(10.7940, abs=5e-4)  # the book's number on opening

    outcomes = run(crowd(server.port, plans, ramp=0.5, timeout=TIMEOUT))

    assert [o.error for o in outcomes] == [None, None, None]
    assert all(o.t_open is not None and o.t_own >= o.t_open for o in outcomes)


def test_a_wrong_number_counts_as_an_error(server):
    texts = {0: visitor_text(7)}
    [plan] = [Plan("text", {"text": texts[0]})]
    expected_numbers([plan], texts, {})
    wrong = replace(plan, expected=plan.expected + 0.01)

    outcome = run(visit(server.port, wrong, TIMEOUT))

    assert outcome.error is not None and "!= own" in outcome.error
    assert outcome.t_own is None


def test_running_server_uses_the_production_config(server):
    """The shared server, started without flags (.streamlit/config.toml only, the production set-up),
    reports run-on-save off in its first message."""

    async def first_session() -> bool:
        session = await Session.open(server.port, TIMEOUT)
        try:
            await session.rerun()
            return session.run_on_save
        finally:
            await session.close()

    assert run(first_session()) is False
