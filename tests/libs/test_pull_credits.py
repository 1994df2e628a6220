"""The consumer's pull-credit accounting: pure, with time passed in."""

from __future__ import annotations

from libs.bus.consume import PullCredits


def test_first_pull_asks_for_a_batch_within_concurrency():
    c = PullCredits(batch=64, concurrency=100)
    assert c.to_request(now=0.0, in_flight=0) == 64
    assert c.credits == 64


def test_no_new_pull_while_more_than_half_a_batch_is_outstanding():
    c = PullCredits(batch=64, concurrency=1000)
    c.to_request(now=0.0, in_flight=0)
    for _ in range(31):
        c.received()
    assert c.to_request(now=0.1, in_flight=31) == 0  # 33 still granted
    c.received()
    assert c.to_request(now=0.2, in_flight=32) == 64  # 32 left: half a batch


def test_never_more_than_concurrency_in_flight_plus_granted():
    c = PullCredits(batch=64, concurrency=50)
    assert c.to_request(now=0.0, in_flight=40) == 10
    assert c.to_request(now=0.1, in_flight=40) == 0
    for _ in range(10):
        c.received()
    assert c.to_request(now=0.2, in_flight=50) == 0  # handlers still busy


def test_an_expired_request_takes_its_credits_with_it():
    c = PullCredits(batch=64, concurrency=64, expires_s=2.0)
    c.to_request(now=0.0, in_flight=0)
    assert c.to_request(now=1.0, in_flight=0) == 0
    # Past expiry (+0.5 s grace) the server forgot the request: ask again in full.
    assert c.to_request(now=2.6, in_flight=0) == 64


def test_status_ends_request_with_pending_count():
    c = PullCredits(batch=64, concurrency=64)
    c.to_request(now=0.0, in_flight=0)
    c.request_ended(pending=60)
    assert c.credits == 4
    c.request_ended(pending=None)
    assert c.credits == 0


def test_a_request_that_was_not_sent_is_forgotten_and_retried():
    c = PullCredits(batch=8, concurrency=8)
    asked = c.to_request(now=0.0, in_flight=0)
    c.not_sent(asked)
    assert c.credits == 0
    assert c.to_request(now=0.01, in_flight=0) == 8
