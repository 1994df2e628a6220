"""Receipts against orders: which HSM operations no order on the bus allowed."""

from __future__ import annotations

import hashlib
import types

import nacl.signing
from nats.js.errors import NotFoundError

from devkit import forge
from libs import metrics
from proto import codec
from proto.authorization import statement_hash
from proto.hsm import HsmReceipt, HsmReceipts
from proto.orders import SignOrder
from services.audit.reconcile import Reconciler, SeenOrders, mismatch, order_subject

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


# -- orders the audit was handed: a matching one spares the lookup ---------------------

ORDER_SUBJECT = order_subject(receipt())


class _Bus:
    """The one JetStream call the reconciler makes: the last order on a subject."""

    def __init__(self, order: SignOrder | None) -> None:
        self.order = order
        self.asked: list[str] = []

    async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> object:
        self.asked.append(subject)
        if self.order is None:
            raise NotFoundError()
        return types.SimpleNamespace(data=codec.encode(self.order), seq=9)


def _batch(*receipts: HsmReceipt) -> bytes:
    return codec.encode(HsmReceipts(node="hsm-1", receipts=list(receipts)))


def _unmatched() -> float:
    return metrics.AUDIT_UNMATCHED_RECEIPTS.labels("sign")._value.get()


def test_seen_orders_keep_the_newest_order_per_subject_and_forget_the_oldest():
    seen = SeenOrders(limit=2)
    seen.add("a", 5, codec.encode(ORDER))
    seen.add("a", 3, b"older: ignored")
    assert seen.get("a") == ORDER
    seen.add("b", 1, b"not an order")
    assert seen.get("b") is None  # undecodable: the lookup decides
    seen.add("c", 2, codec.encode(ORDER))
    assert len(seen) == 2 and seen.get("a") is None  # the oldest subject went first


async def test_a_receipt_matching_an_order_the_audit_was_handed_needs_no_lookup():
    bus = _Bus(ORDER)
    reconciler = Reconciler(bus)
    reconciler.seen.add(ORDER_SUBJECT, 4, codec.encode(ORDER))
    before = _unmatched()
    await reconciler.check(_batch(receipt()))
    assert bus.asked == [] and reconciler.lookups == 0
    assert _unmatched() == before


async def test_an_order_not_seen_is_looked_up():
    bus = _Bus(ORDER)
    reconciler = Reconciler(bus)
    before = _unmatched()
    await reconciler.check(_batch(receipt()))
    assert bus.asked == [ORDER_SUBJECT] and _unmatched() == before


async def test_a_seen_order_that_does_not_match_is_looked_up_before_any_alert():
    other = forge.order(REQUEST, forge.authorization(POLICY, REQUEST, b"", rule="another"))
    # The bus holds the matching order (newer than the one the audit kept): no alert.
    bus = _Bus(ORDER)
    reconciler = Reconciler(bus)
    reconciler.seen.add(ORDER_SUBJECT, 4, codec.encode(other))
    before = _unmatched()
    await reconciler.check(_batch(receipt()))
    assert bus.asked == [ORDER_SUBJECT] and _unmatched() == before
    # The bus agrees with the mismatch: the alert is raised, as without the cache.
    bus = _Bus(other)
    reconciler = Reconciler(bus)
    reconciler.seen.add(ORDER_SUBJECT, 4, codec.encode(other))
    await reconciler.check(_batch(receipt()))
    assert bus.asked == [ORDER_SUBJECT] and _unmatched() == before + 1


async def test_a_signature_with_no_order_anywhere_is_an_alert():
    bus = _Bus(None)
    reconciler = Reconciler(bus)
    before = _unmatched()
    await reconciler.check(_batch(receipt()))
    assert _unmatched() == before + 1
