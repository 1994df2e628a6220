"""What policy publishes: orders for signers and terminal refusals for clients."""

from __future__ import annotations

from nats.js import JetStreamContext

from libs import metrics
from libs.bus.publish import publish
from libs.clock import now_ms
from proto.orders import CreateKeyOrder, SignOrder, order_subject
from proto.requests import CreateKeyRequest, Request, request_hash
from proto.results import unsuccessful
from proto.subjects import (
    HDR_REQUEST_ID,
    RESULTS,
    request_key,
    result_subject,
)


async def publish_order(js: JetStreamContext, order: SignOrder | CreateKeyOrder) -> None:
    # Same msg id on every redelivery and from every replica: one order per request.
    await publish(
        js,
        order_subject(order),
        order,
        msg_id=f"order:{request_key(order.requester, order.request_id)}",
        headers={HDR_REQUEST_ID: order.request_id},
    )


async def publish_refusal(
    js: JetStreamContext, request: Request, code: str, message: str, status: str
) -> bool:
    """The request's one terminal result, unless it already has one. Only for an
    authenticated request: nobody else may own a result under the requester's name."""
    result = unsuccessful(
        for_key=isinstance(request, CreateKeyRequest),
        request_id=request.request_id,
        request_hash=request_hash(request),
        status=status,
        key_id=request.key_id,
        code=code,
        message=message,
        completed_at_ms=now_ms(),
    )
    subject = result_subject(request.requester, request.request_id)
    published = await publish(js, subject, result, first_on_subject=True, stream=RESULTS.name)
    if published:
        metrics.RESULTS.labels("policy", status, code).inc()
    return published
