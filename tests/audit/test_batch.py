"""The next batch: each stream in its own order, contiguous, every message once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.batch import Pending
from services.audit.facts import describe


def test_a_batch_continues_each_streams_cursor_and_merges_by_arrival():
    p = Pending()
    p.add_fact("A", 1, b"a1", 0.0)
    p.add_fact("B", 5, b"b5", 0.0)
    p.add_fact("A", 2, b"a2", 0.0)
    p.add_fact("A", 4, b"a4", 0.0)  # ahead of a hole at 3
    batch = p.take({"B": 4}, 10)
    assert [(w.stream, w.first) for w in batch] == [("A", 1), ("B", 5), ("A", 2)]
    assert p.holes({"A": 2, "B": 5}) == {"A": (3, 3, 0.0)}


def test_gaps_fill_holes_and_limits_keep_runs_contiguous():
    p = Pending()
    for seq in (1, 2, 6, 7):
        p.add_fact("A", seq, bytes([seq]), 0.0)
    p.add_gap("A", 3, 5, "deleted", 1.0)
    batch = p.take({}, 3)
    assert [(w.first, w.last, w.is_gap) for w in batch] == [
        (1, 1, False),
        (2, 2, False),
        (3, 5, True),
        (6, 6, False),
    ]
    done = p.drop_recorded({"A": 6})
    assert {w.first for w in done} == {1, 2, 3, 6} and len(p) == 1


def test_a_second_delivery_of_a_fact_is_the_same_waiting_fact():
    p = Pending()
    first = p.add_fact("A", 1, b"x", 0.0)
    assert p.add_fact("A", 1, b"x", 1.0) is first and len(p) == 1


@settings(max_examples=100, deadline=None)
@given(st.permutations(list(range(1, 30))), st.integers(1, 8))
def test_whatever_the_delivery_order_every_message_is_taken_once_in_order(order, limit):
    p = Pending()
    cursors: dict[str, int] = {}
    taken: list[int] = []
    for seq in order:
        p.add_fact("S", seq, b"", 0.0)
        while batch := p.take(cursors, limit):
            taken.extend(w.first for w in batch)
            cursors["S"] = batch[-1].last
            p.drop_recorded(cursors)
    assert taken == list(range(1, 30))


def test_a_fact_describes_its_message_and_survives_garbage():
    import msgspec

    data = msgspec.msgpack.encode({"type": "sign_request", "request_id": "r1", "requester": "d"})
    f = describe("LANTAU_REQUESTS", 7, data)
    assert (f.event_type, f.actor, f.request_id, f.seq) == ("sign_request", "d", "r1", 7)
    g = describe("LANTAU_REQUESTS", 8, b"\xc1\x00garbage")
    assert g.event_type == "malformed" and g.actor == "platform"


async def test_a_held_handler_keeps_its_delivery_alive():
    import asyncio

    from libs.bus import consume
    from libs.bus.consume import Delivery, hold

    beats = []

    async def keep_alive() -> None:
        beats.append(1)

    delivery = Delivery("s", "S", 1, 1, 0, {}, None, keep_alive=keep_alive)
    consume.KEEP_ALIVE_S, before = 0.05, consume.KEEP_ALIVE_S
    try:
        assert await hold(asyncio.sleep(0.3, result="done"), delivery) == "done"
    finally:
        consume.KEEP_ALIVE_S = before
    assert len(beats) >= 3


async def test_a_held_handler_sends_no_keep_alive_when_released_early_and_stops_after():
    import asyncio

    from libs.bus import consume
    from libs.bus.consume import Delivery, hold

    beats = []

    async def keep_alive() -> None:
        beats.append(1)

    delivery = Delivery("s", "S", 1, 1, 0, {}, None, keep_alive=keep_alive)
    consume.KEEP_ALIVE_S, before = 0.05, consume.KEEP_ALIVE_S
    try:
        assert await hold(asyncio.sleep(0.01, result="quick"), delivery) == "quick"
        await asyncio.sleep(0.2)
        assert beats == []  # released before the first beat, and none after
        assert await hold(asyncio.sleep(0.12, result="slow"), delivery) == "slow"
        n = len(beats)
        assert n >= 1
        await asyncio.sleep(0.2)
        assert len(beats) == n  # the timer stopped with the handler
    finally:
        consume.KEEP_ALIVE_S = before


async def test_a_held_handler_that_fails_or_is_cancelled_stops_beating():
    import asyncio

    import pytest

    from libs.bus import consume
    from libs.bus.consume import Delivery, hold

    beats = []

    async def keep_alive() -> None:
        beats.append(1)
        raise RuntimeError("the bus is away")  # a failed keep-alive never fails the handler

    async def fails() -> None:
        await asyncio.sleep(0.12)
        raise ValueError("handler failed")

    delivery = Delivery("s", "S", 1, 1, 0, {}, None, keep_alive=keep_alive)
    consume.KEEP_ALIVE_S, before = 0.05, consume.KEEP_ALIVE_S
    try:
        with pytest.raises(ValueError):
            await hold(fails(), delivery)
        assert beats
        task = asyncio.create_task(hold(asyncio.sleep(10), delivery))
        await asyncio.sleep(0.12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n = len(beats)
        await asyncio.sleep(0.2)
        assert len(beats) == n
    finally:
        consume.KEEP_ALIVE_S = before
