"""Every signature and key an HSM made is matched against the order that allowed it.

Each hsm-node publishes a receipt of every operation; the receipts are facts in the
trail like any other. This is the second look: a receipt of a signature (or of a key
generated) whose order is not on the bus, or names another authorization, means a
node was made to sign by someone holding policy's key outside the platform's path: an
alert (lantau_audit_unmatched_receipts_total, LantauSignatureWithoutOrder). Orders
live on their request's own subject, so the lookup is one direct get; the orders the
audit itself was just handed (it records the orders stream too) are kept for a while,
and a receipt that matches one of them needs no lookup. Only a lookup raises an alert.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs import metrics
from libs.headers import safe_for_log
from proto import codec
from proto.authorization import statement_hash
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import HsmReceipt
from proto.orders import Order, SignOrder
from proto.subjects import ORDERS, create_key_order_subject, sign_order_subject

log = logging.getLogger("lantau.audit")

# Operations made for a request, and the order kind that allows each.
_ORDERED_OPS = ("sign", "generate")


def mismatch(receipt: HsmReceipt, order: Order | None) -> str | None:
    """Why this receipt has no order to answer for it, or None when it has one. Pure."""
    if receipt.op not in _ORDERED_OPS or receipt.outcome != "done" or not receipt.request_key:
        return None  # refusals, replays and platform operations answer to nobody here
    if order is None:
        return "no order"
    if (receipt.op == "sign") != isinstance(order, SignOrder):
        return "an order of another kind"
    if statement_hash(order.authorization) != receipt.authorization:
        return "an order with another authorization"
    return None


# Orders kept for receipts to match (a receipt normally follows its order by
# milliseconds): an order is ~1 KB, so at most ~16 MB.
SEEN_ORDERS = 16_384


class SeenOrders:
    """The newest order delivered to the audit on each order subject, for the most
    recent ``limit`` subjects. Pure: no bus."""

    def __init__(self, limit: int = SEEN_ORDERS) -> None:
        self._limit = limit
        self._by_subject: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_subject)

    def add(self, subject: str, seq: int, data: bytes) -> None:
        """Keep the message at ``seq`` of the orders stream unless a newer one is kept."""
        kept = self._by_subject.get(subject)
        if kept is not None and kept[0] >= seq:
            return
        self._by_subject[subject] = (seq, data)
        self._by_subject.move_to_end(subject)
        while len(self._by_subject) > self._limit:
            self._by_subject.popitem(last=False)

    def get(self, subject: str) -> Order | None:
        kept = self._by_subject.get(subject)
        if kept is None:
            return None
        try:
            return codec.ORDER.decode(kept[1])
        except LantauError:
            return None


def order_subject(receipt: HsmReceipt) -> str:
    """The subject of the order that allows this (sign or generate) receipt's operation."""
    requester, _, request_id = receipt.request_key.partition(".")
    return (sign_order_subject if receipt.op == "sign" else create_key_order_subject)(
        requester, request_id
    )


class Reconciler:
    def __init__(self, js: JetStreamContext, seen: SeenOrders | None = None) -> None:
        self._js = js
        self.seen = seen if seen is not None else SeenOrders()
        self.lookups = 0

    async def check(self, data: bytes) -> None:
        """Match each receipt of a batch. The fact is recorded before this runs; a bus
        failure during the lookup raises TransientError, so the batch is checked again."""
        try:
            batch = codec.HSM_RECEIPTS.decode(data)
        except LantauError:
            return  # not receipts: the trail records (or quarantines) it regardless
        for receipt in batch.receipts:
            if receipt.op not in _ORDERED_OPS or not receipt.request_key:
                continue
            subject = order_subject(receipt)
            if mismatch(receipt, self.seen.get(subject)) is None:
                continue  # the order the audit was handed answers for it: no lookup
            why = mismatch(receipt, await self._order(subject))
            if why is not None:
                metrics.AUDIT_UNMATCHED_RECEIPTS.labels(receipt.op).inc()
                log.error(
                    "hsm node %s: %s of key %s for %s has %s",
                    safe_for_log(batch.node),
                    receipt.op,
                    safe_for_log(receipt.key_id),
                    safe_for_log(receipt.request_key),
                    why,
                )

    async def _order(self, subject: str) -> Order | None:
        self.lookups += 1
        try:
            raw = await self._js.get_last_msg(ORDERS.name, subject, direct=True)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as e:
            raise TransientError(ErrorCode.BUS_UNAVAILABLE, f"order lookup failed: {e!r}") from e
        try:
            return codec.ORDER.decode(raw.data or b"")
        except LantauError:
            return None
