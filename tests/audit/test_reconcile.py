"""Receipts against orders: which HSM operations no order on the bus allowed. Pure."""

from __future__ import annotations

import hashlib

import nacl.signing

from devkit import forge
from proto.authorization import statement_hash
from proto.hsm import HsmReceipt
from services.audit.reconcile import mismatch

POLICY = nacl.signing.SigningKey.generate()
DESK = nacl.signing.SigningKey.generate()
REQUEST = forge.signed_request(DESK, "desk", "desk-btc", hashlib.sha256(b"x").digest())
AUTH = forge.authorization(POLICY, REQUEST, b"")
ORDER = forge.order(REQUEST, AUTH)


def receipt(**kw: object) -> HsmReceipt:
    base: dict[str, object] = {
        "op": "sign",
        "key_id": "desk-btc",
        "request_key": f"desk.{REQUEST.request_id}",
        "authorization": statement_hash(AUTH),
        "outcome": "done",
        "at_ms": 1,
    }
    return HsmReceipt(**{**base, **kw})  # type: ignore[arg-type]


def test_a_signature_with_its_order_is_answered_for():
    assert mismatch(receipt(), ORDER) is None


def test_a_signature_without_an_order_is_named():
    assert mismatch(receipt(), None) == "no order"


def test_a_signature_under_another_authorization_is_named():
    other = forge.authorization(POLICY, REQUEST, b"", rule="another")
    assert mismatch(receipt(authorization=statement_hash(other)), ORDER) is not None


def test_refusals_replays_and_platform_operations_need_no_order():
    assert mismatch(receipt(outcome="refused", code="EVIDENCE_REFUSED"), None) is None
    assert mismatch(receipt(outcome="replayed"), None) is None
    assert mismatch(receipt(op="sign_checkpoint", request_key=""), None) is None
    assert mismatch(receipt(op="clone_check", request_key=""), None) is None


def test_a_generated_key_needs_a_creation_order_not_a_sign_order():
    assert mismatch(receipt(op="generate"), ORDER) == "an order of another kind"
