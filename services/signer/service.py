"""signer: turns approved orders into verified signatures through the HSM pool.

For one sign order: skip if a result exists (redelivery) -> expired? -> find the key
-> for each attempt: durable audit intent, then HSM sign with a deadline -> normalise
and verify in software -> publish the one result -> ack.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from nats import micro
from nats.micro.request import Request

from libs import chains, curves, evidence, metrics, tracing
from libs.audit import gate
from libs.bus.consume import Consumer, Delivery
from libs.bus.publish import last_on_subject, publish
from libs.clock import now_ms
from libs.headers import safe_for_log
from libs.hsm.backend import HsmBackend
from libs.hsm.pool import HsmPool
from libs.keys import creation
from libs.keys.directory import KeyDirectory
from libs.keys.signing import signing_public
from libs.keytypes import kinds
from libs.logs import request_id_var
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.admin import XpubAnswer
from proto.audit import AuditIntent
from proto.common import TX_KINDS, ErrorInfo
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import KeyCreated
from proto.hsm import HsmGenerate, HsmKey, HsmSign
from proto.orders import CreateKeyOrder, Order, SignOrder, order_subject
from proto.requests import SignRequest
from proto.results import KeyResult, SignResult, unsuccessful
from proto.subjects import (
    ADMIN_POOL_STATUS,
    ADMIN_XPUB,
    EVENT_KEY_CREATED,
    RESULTS,
    SIGNER_ORDERS,
    SIGNER_SERVICE_NAME,
    result_subject,
)
from services.signer.intents import EarlierAttempt, IntentLog
from services.signer.xpub import answer as xpub_answer

log = logging.getLogger("lantau.signer")


class Signer:
    def __init__(self, rt: Runtime, pool: HsmPool, keys: KeyDirectory) -> None:
        self.rt = rt
        self.cfg = rt.config.signer
        self.max_attempts = rt.config.hsm.max_attempts
        self.pins = evidence.pins_from(rt.config, None)
        self.pool = pool
        self.keys = keys
        # Offline backup HSMs hold clones but are never asked to sign.
        self.signing_nodes = {n.id for n in rt.config.hsm_nodes if n.role == "pool"}

    # -- consumer callbacks --------------------------------------------------

    async def handle(self, order: Order, delivery: Delivery) -> None:
        await gate.wait_until_witnessed(self.rt, delivery)  # fail closed: none unwitnessed
        request_id_var.set(order.request_id)
        tracing.annotate(request_id=order.request_id, key_id=order.key_id)
        # An order is policy's word or nothing: a forgery on the bus stops here (and
        # would stop at the hsm-node anyway, which checks everything again).
        self._authentic(order)
        if delivery.subject != order_subject(order):
            # Audit finds each signature's order by its subject: one elsewhere is junk.
            raise LantauError(
                ErrorCode.SUBJECT_MISMATCH,
                f"an order for {order.requester}/{order.request_id} came on "
                f"{safe_for_log(delivery.subject)}",
            )
        # Policy sends one order per request (one msg id; a resend that finds a result
        # stops at policy), so only a redelivery can find its request already answered.
        if delivery.count > 1 and await self._answered(order):
            return  # already answered before a crash
        if now_ms() > order.deadline_ms:
            await self._finish(
                order,
                "expired",
                ErrorCode.DEADLINE_EXCEEDED,
                "the order's deadline passed before signing",
            )
            return
        if isinstance(order, SignOrder):
            await self._sign(order, delivery.count)
        else:
            await self._create_key(order)

    async def on_reject(self, order: Order | None, error: LantauError, _d: Delivery) -> None:
        """Tell the requester why its order cannot be done (bad order or retries exhausted).
        Junk and forged orders go to the dead-letter stream only: nobody may write a
        result under a requester's name but for an order policy really issued."""
        if order is None or error.code == ErrorCode.SUBJECT_MISMATCH:
            return  # a real order replayed elsewhere says nothing about its request
        try:
            self._authentic(order)
        except LantauError:
            return
        await self._finish(order, "failed", error.code, error.message)

    def _authentic(self, order: Order) -> None:
        """Policy signed this order's authorization (a pinned key), for this very order."""
        a = order.authorization
        evidence.check_policy_statement(a, self.pins)
        if (a.requester, a.request_id, a.key_id, a.request_hash) != (
            order.requester,
            order.request_id,
            order.key_id,
            order.request_hash,
        ):
            raise LantauError(
                ErrorCode.AUTHORIZATION_MISMATCH, "the order does not match its authorization"
            )

    async def _answered(self, order: Order) -> bool:
        subject = result_subject(order.requester, order.request_id)
        return await last_on_subject(self.rt.js, RESULTS.name, subject) is not None

    # -- signing -------------------------------------------------------------

    async def _sign(self, order: SignOrder, delivery: int) -> None:
        request = codec.REQUEST.decode(order.request)
        assert isinstance(request, SignRequest)  # check_sign refused anything else
        record, _ = await self.keys.get(order.key_id)
        if record is None or record.status != "active":
            await self._finish(
                order, "failed", ErrorCode.UNKNOWN_KEY, f"key {order.key_id} does not exist"
            )
            return
        curve = record.curve
        # The key that signs: an HD key's child at the request's path. Known here when an
        # exported xpub leads to it; else (a blind payload only: policy refused anything
        # else) the node says which child signed and its signature must verify under it.
        expected = signing_public(record, request.path)
        if expected is None and request.payload_kind in TX_KINDS:
            await self._finish(
                order,
                "failed",
                ErrorCode.XPUB_NOT_EXPORTED,
                f"the public key of {record.key_id} at {request.path} is not known",
            )
            return
        # What the node will sign, from the request itself; the node computes it again.
        data = evidence.bytes_to_sign(request, expected or b"")
        payload_sha256 = hashlib.sha256(request.payload).hexdigest()
        queued_s = max(0.0, (now_ms() - order.requested_at_ms) / 1000)
        metrics.STAGE_DURATION.labels("queue").observe(queued_s)
        intents = IntentLog(self.rt.js, order.requester, order.request_id)
        command = HsmSign(
            key_id=order.key_id,
            curve=curve,
            request=order.request,
            authorization=order.authorization,
            approvals=order.approvals,
        )

        async def attempt(remote: HsmBackend, _n: int) -> tuple[list[curves.FinalSignature], bytes]:
            t0 = time.perf_counter()
            if not intents.covers(remote.name):
                # Fail closed: this attempt's intent is durable before the HSM is asked.
                await intents.record(
                    AuditIntent(
                        requester=order.requester,
                        request_id=order.request_id,
                        key_id=order.key_id,
                        node=remote.name,
                        payload_sha256=payload_sha256,
                        attempt=len(intents.nodes) + 1,
                        earlier_nodes=list(intents.nodes),
                        actor=self.cfg.id,
                        at_ms=now_ms(),
                    )
                )
            t1 = time.perf_counter()
            reply = await remote.sign_reply(command)
            raws = reply.signatures
            t2 = time.perf_counter()
            try:
                if len(raws) != len(data):
                    raise LantauError(ErrorCode.SIGNATURE_VERIFICATION_FAILED, "wrong count")
                signer_key = _signer_key(record.curve, expected, reply.public_key)
                finals = [
                    curves.finalize(curve, signer_key, d, raw)
                    for d, raw in zip(data, raws, strict=True)
                ]
            except LantauError as e:
                # A node that returns a bad signature is faulty: fail over, never publish it.
                raise TransientError(e.code, f"{remote.name}: {e.message}") from None
            metrics.STAGE_DURATION.labels("audit_intent").observe(t1 - t0)
            metrics.STAGE_DURATION.labels("hsm").observe(t2 - t1)
            metrics.STAGE_DURATION.labels("verify").observe(time.perf_counter() - t2)
            return finals, signer_key

        holders = [n for n in record.nodes if n in self.signing_nodes]
        for _ in range(3):
            try:
                (finals, signer_key), node = await self.pool.run(
                    "sign", holders, attempt, max_attempts=self.max_attempts, prefer=intents.nodes
                )
                break
            except EarlierAttempt:
                # Another delivery of this order got there first (a restart, a replica):
                # never sign blindly. Its result may exist; else ask its nodes first.
                if await self._answered(order):
                    return
                await intents.load()
        else:
            raise TransientError(ErrorCode.INTERNAL, "attempts on this request kept racing")
        signed_payload = None
        if request.payload_kind in TX_KINDS:
            signed_payload = chains.assemble(
                request.payload_kind,
                request.payload,
                signer_key,
                [(f.signature, f.recovery_id) for f in finals],
                chain_hint=request.chain,
            )
        t0 = time.perf_counter()
        result = SignResult(
            request_id=order.request_id,
            request_hash=order.request_hash,
            status="signed",
            key_id=order.key_id,
            curve=curve,
            signature=finals[0].signature,
            recovery_id=finals[0].recovery_id,
            signatures=[f.signature for f in finals],
            signed_payload=signed_payload,
            public_key=signer_key,
            node=node,
            completed_at_ms=now_ms(),
            path=request.path,
        )
        await self._publish_result(order, result)
        metrics.STAGE_DURATION.labels("publish").observe(time.perf_counter() - t0)

    # -- key creation --------------------------------------------------------

    async def _create_key(self, order: CreateKeyOrder) -> None:
        async def generate(node: str) -> HsmKey:
            command = HsmGenerate(
                key_id=order.key_id,
                curve=order.curve,
                request=order.request,
                authorization=order.authorization,
            )

            async def on_node(backend: HsmBackend, _n: int) -> HsmKey:
                made = await backend.generate(command)
                if made.curve != order.curve:
                    raise TransientError(
                        ErrorCode.HSM_ERROR, f"{backend.name} made a {made.curve} key"
                    )
                return made

            # On the reserved node only: never two different keys under one id.
            made, _ = await self.pool.run(
                "generate", [node], on_node, max_attempts=1, delivery_matters=True
            )
            return made

        try:
            record = await creation.create(
                self.keys,
                key_id=order.key_id,
                curve=order.curve,
                request_id=order.request_id,
                owner=order.requester,
                region=order.region,
                choose_node=lambda: self._placement(order),
                generate=generate,
                authorization=order.authorization,
            )
        except LantauError as e:
            status = "rejected" if e.code == ErrorCode.KEY_EXISTS else "failed"
            await self._finish(order, status, e.code, e.message)
            return
        event = KeyCreated(
            key_id=record.key_id,
            curve=record.curve,
            public_key=record.public_key,
            node=record.nodes[0],
            region=record.region,
            request_id=order.request_id,
            at_ms=now_ms(),
        )
        await publish(self.rt.js, EVENT_KEY_CREATED, event, msg_id=f"key-created:{record.key_id}")
        result = KeyResult(
            request_id=order.request_id,
            request_hash=order.request_hash,
            status="created",
            key_id=record.key_id,
            curve=record.curve,
            public_key=record.public_key,
            node=record.nodes[0],
            completed_at_ms=now_ms(),
            protection=record.protection,
            xpub=next((x.xpub for x in record.xpubs if x.path == "m" and x.xpub), None),
        )
        await self._publish_result(order, result)

    def _placement(self, order: CreateKeyOrder) -> str:
        candidates = [
            v.node_id
            for v in self.pool.balancer.views()
            if v.node_id in self.signing_nodes
            and (order.region is None or v.region == order.region)
        ]
        node = self.pool.balancer.choose(candidates, now_ms())
        if node is None:
            where = f" in region {order.region}" if order.region else ""
            raise TransientError(
                ErrorCode.HSM_UNAVAILABLE, f"no healthy HSM node{where} to create the key"
            )
        return node

    # -- results -------------------------------------------------------------

    async def _finish(
        self, order: SignOrder | CreateKeyOrder, status: str, code: ErrorCode, message: str
    ) -> None:
        result = unsuccessful(
            for_key=isinstance(order, CreateKeyOrder),
            request_id=order.request_id,
            request_hash=order.request_hash,
            status=status,
            key_id=order.key_id,
            code=str(code),
            message=message,
            completed_at_ms=now_ms(),
            curve=order.curve if isinstance(order, CreateKeyOrder) else None,
        )
        await self._publish_result(order, result)

    async def _publish_result(
        self, order: SignOrder | CreateKeyOrder, result: SignResult | KeyResult
    ) -> None:
        subject = result_subject(order.requester, order.request_id)
        first = await publish(
            self.rt.js, subject, result, first_on_subject=True, stream=RESULTS.name
        )
        kind = "sign" if isinstance(order, SignOrder) else "create_key"
        code = result.error.code if result.error else ""
        if first:
            metrics.RESULTS.labels("signer", result.status, code).inc()
            metrics.REQUEST_DURATION.labels(kind, result.status).observe(
                max(0.0, (now_ms() - order.requested_at_ms) / 1000)
            )
        else:
            log.info("result for %s already published; keeping the first", order.request_id)


def _signer_key(key_type: str, expected: bytes | None, reported: bytes) -> bytes:
    """The key a node's signatures must verify under: the key's own, or an HD child's
    (cross-checked with the one derived from the exported xpubs when that is known)."""
    if not kinds.is_hd(key_type):
        if expected is None:
            raise LantauError(ErrorCode.INTERNAL, "a key without its public key")
        return expected
    if expected is not None and reported != expected:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED,
            "the node signed with another child key than the exported xpub derives",
        )
    if not reported:
        raise LantauError(
            ErrorCode.SIGNATURE_VERIFICATION_FAILED, "the node did not say which child signed"
        )
    return reported


async def serve(rt: Runtime) -> None:
    chains.preload()
    cfg = rt.config.signer
    pool = HsmPool.of_nodes(
        rt.nc,
        rt.js,
        observer=cfg.id,
        node_ids=[n.id for n in rt.config.hsm_nodes if n.role == "pool"],
        timeout_s=rt.config.hsm.timeout_ms / 1000,
    )
    await pool.start(rt.stopping)
    signer = Signer(rt, pool, await KeyDirectory.open(rt.js))
    consumer = Consumer(
        rt.nc,
        rt.js,
        SIGNER_ORDERS,
        codec.ORDER.decode,
        signer.handle,
        batch=cfg.fetch_batch,
        concurrency=cfg.max_concurrency,
        on_reject=signer.on_reject,
        name="signer",
    )
    admin = await micro.add_service(
        rt.nc, name=SIGNER_SERVICE_NAME, version="0.1.0", description="Lantau signer"
    )

    async def pool_status(req: Request) -> None:
        await req.respond(codec.encode(pool.status()))

    # A queue group per replica: `lantau hsm status` hears from every signer.
    await admin.add_endpoint(
        name="pool",
        subject=ADMIN_POOL_STATUS,
        queue_group=f"signer-{uuid.uuid4().hex}",
        handler=pool_status,
    )

    async def xpub(req: Request) -> None:
        try:
            query = codec.XPUB_QUERY.decode(req.data)
        except LantauError as e:
            await req.respond(
                codec.encode(
                    XpubAnswer(key_id="", error=ErrorInfo(code=str(e.code), message=e.message))
                )
            )
            return
        reply = await xpub_answer(pool, signer.keys, signer.signing_nodes, query)
        await req.respond(codec.encode(reply))

    # One queue group: one replica derives and records each xpub.
    await admin.add_endpoint(
        name="xpub", subject=ADMIN_XPUB, queue_group="signer-xpub", handler=xpub
    )
    rt.set_ready("startup", True)
    await consumer.run(rt.stopping)
    await admin.stop()
    await pool.stop()


ENTRY = ServiceEntry(section="signer", serve=serve)
