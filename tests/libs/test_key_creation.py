"""Key creation as a table: the next step for every state of the directory record."""

from __future__ import annotations

import msgspec

from libs.keys.creation import Done, Generate, Refuse, Reserve, after_failed_generate, next_step
from proto.errors import ErrorCode
from proto.keys import KeyRecord

PENDING = KeyRecord(
    key_id="k",
    curve="secp256k1",
    status="pending",
    owner="desk",
    nodes=["hsm-2"],
    created_at_ms=1,
    created_by_request="req-1",
)
ACTIVE = msgspec.structs.replace(PENDING, status="active", public_key=b"\x02" * 33)


def test_no_record_reserves():
    assert next_step(None, request_id="req-1", curve="secp256k1") == Reserve()


def test_own_reservation_generates_on_the_reserved_node_only():
    assert next_step(PENDING, request_id="req-1", curve="secp256k1") == Generate("hsm-2")


def test_own_active_key_is_done():
    assert next_step(ACTIVE, request_id="req-1", curve="secp256k1") == Done(ACTIVE)


def test_someone_elses_key_is_refused_as_existing():
    step = next_step(ACTIVE, request_id="req-2", curve="secp256k1")
    assert isinstance(step, Refuse) and step.code == ErrorCode.KEY_EXISTS


def test_a_reservation_for_another_curve_is_refused():
    step = next_step(PENDING, request_id="req-1", curve="ed25519")
    assert isinstance(step, Refuse) and step.code == ErrorCode.CURVE_MISMATCH


def test_only_an_undelivered_generate_of_a_fresh_reservation_releases_it():
    assert after_failed_generate(reserved_now=True, delivered=False) == "release"
    assert after_failed_generate(reserved_now=True, delivered=True) == "keep"
    assert after_failed_generate(reserved_now=False, delivered=False) == "keep"
    assert after_failed_generate(reserved_now=False, delivered=True) == "keep"
