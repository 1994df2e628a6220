"""policy: authenticates requests, enforces need-to-know and rules, and issues orders.

For one request: decode -> authenticate -> claim the request id (KV create) ->
freshness -> need-to-know -> payload fits the key -> order (or a typed rejection).
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from libs import bus, curves, metrics, tracing
from libs.bus import Consumer, now_ms
from libs.logs import request_id_var
from libs.service import Runtime
from proto import codec
from proto.common import ErrorInfo
from proto.errors import ErrorCode, LantauError
from proto.orders import CreateKeyOrder, Decision, SignOrder
from proto.requests import CreateKeyRequest, Request, SignRequest, request_hash
from proto.results import KeyResult, SignResult
from proto.subjects import (
    CREATE_KEY_ORDER,
    HDR_REQUEST_ID,
    POLICY_REQUESTS,
    REQUESTS_BUCKET,
    SIGN_ORDER,
    result_subject,
)
from services.policy import auth
from services.signer.keydir import KeyDirectory

log = logging.getLogger("lantau.policy")

# Failures before the requester is proven: such a result must not claim someone else's id.
_UNAUTHENTICATED = {ErrorCode.UNKNOWN_REQUESTER, ErrorCode.BAD_SIGNATURE}


class Policy:
    def __init__(self, rt: Runtime, requests_kv: KeyValue, keys: KeyDirectory) -> None:
        self.rt = rt
        self.cfg = rt.config.policy
        self.requests_kv = requests_kv
        self.keys = keys

    async def handle(self, msg: Msg) -> None:
        request = codec.REQUEST.decode(msg.data)
        request_id_var.set(request.request_id)
        tracing.annotate(request_id=request.request_id, key_id=request.key_id)
        requester = auth.authenticate(request, self.rt.config.requester(request.requester))
        digest = request_hash(request)
        await self._claim(request.request_id, digest)
        now = now_ms()
        auth.check_freshness(request, self.cfg, now)
        pattern = auth.check_access(request, requester)
        decision = Decision(
            policy_version="config",
            rule="need-to-know",
            explanation=f"{requester.name} may use keys matching {pattern!r}",
        )
        deadline = now + self.cfg.order_deadline_ms
        order: SignOrder | CreateKeyOrder
        if isinstance(request, SignRequest):
            record, _ = await self.keys.get(request.key_id)
            if record is None or record.status != "active":
                raise LantauError(ErrorCode.UNKNOWN_KEY, f"key {request.key_id} does not exist")
            curves.check_payload(record.curve, request.payload_kind, request.payload)
            order = SignOrder(
                request_id=request.request_id,
                request_hash=digest,
                requester=requester.name,
                key_id=request.key_id,
                payload=request.payload,
                payload_kind=request.payload_kind,
                decision=decision,
                requested_at_ms=request.created_at_ms,
                deadline_ms=min(deadline, request.expires_at_ms),
            )
            subject = SIGN_ORDER
        else:
            order = CreateKeyOrder(
                request_id=request.request_id,
                request_hash=digest,
                requester=requester.name,
                key_id=request.key_id,
                curve=request.curve,
                region=request.region,
                decision=decision,
                requested_at_ms=request.created_at_ms,
                deadline_ms=deadline,
            )
            subject = CREATE_KEY_ORDER
        metrics.POLICY_DECISIONS.labels(decision.rule, "allow").inc()
        # Same msg id on every redelivery: JetStream keeps one order per request.
        await bus.publish(
            self.rt.js,
            subject,
            order,
            msg_id=f"order:{request.request_id}",
            headers={HDR_REQUEST_ID: request.request_id},
        )

    async def _claim(self, request_id: str, digest: str) -> None:
        """Bind the id to this content forever; reusing it for other content is refused."""
        try:
            await self.requests_kv.create(request_id, digest.encode())
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        entry = await self.requests_kv.get(request_id)
        if entry.value is not None and entry.value.decode() != digest:
            raise LantauError(
                ErrorCode.REQUEST_ID_CONFLICT,
                f"request id {request_id} was already used for a different request",
            )
        # Same content: a resend or a redelivery; continuing is idempotent downstream.

    async def on_reject(self, msg: Msg, error: LantauError) -> None:
        try:
            request: Request | None = codec.REQUEST.decode(msg.data)
        except LantauError:
            request = None
        request_id = request.request_id if request else bus.request_id_header(msg)
        if not request_id or error.code == ErrorCode.REQUEST_ID_CONFLICT:
            # No id to answer on, or the id belongs to another request: the dead-letter
            # record is the answer (the client sees the other request's hash and knows).
            return
        if error.code in _UNAUTHENTICATED:
            try:
                if (await self.requests_kv.get(request_id)).value is not None:
                    return  # a genuine request owns this id: never answer for it
            except nats.js.errors.KeyNotFoundError:
                pass
        status = "expired" if error.code == ErrorCode.REQUEST_EXPIRED else "rejected"
        info = ErrorInfo(code=str(error.code), message=error.message)
        digest = request_hash(request) if request else ""
        result: SignResult | KeyResult
        if isinstance(request, CreateKeyRequest):
            result = KeyResult(
                request_id=request_id,
                request_hash=digest,
                status=status,  # type: ignore[arg-type]
                key_id=request.key_id,
                error=info,
                completed_at_ms=now_ms(),
            )
        else:
            result = SignResult(
                request_id=request_id,
                request_hash=digest,
                status=status,  # type: ignore[arg-type]
                key_id=request.key_id if request else "",
                error=info,
                completed_at_ms=now_ms(),
            )
        if await bus.publish(self.rt.js, result_subject(request_id), result, first_on_subject=True):
            metrics.RESULTS.labels("policy", status, str(error.code)).inc()
            metrics.POLICY_DECISIONS.labels("need-to-know", "deny").inc()


async def serve(rt: Runtime) -> None:
    policy = Policy(rt, await rt.js.key_value(REQUESTS_BUCKET), await KeyDirectory.open(rt.js))
    consumer = Consumer(
        rt.nc,
        rt.js,
        POLICY_REQUESTS,
        policy.handle,
        batch=rt.config.policy.fetch_batch,
        concurrency=rt.config.policy.fetch_batch * 2,
        on_reject=policy.on_reject,
        name="policy",
    )
    rt.set_ready("startup", True)
    await consumer.run(rt.stopping)
