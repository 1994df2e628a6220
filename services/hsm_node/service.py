"""hsm-node: owns exactly one PKCS#11 token and serves it over NATS, behind its guard.

The node holds the token's PIN, so it is the last line: every operation passes
``libs.hsm.guard.Guard`` (the evidence check, the replay record) before the token is
asked, and every operation done or refused becomes a receipt published for the audit
trail. Endpoints are NATS micro-service endpoints (``$SRV.PING|INFO|STATS`` come free),
one subject per operation: ``lantau.hsm.rpc.<node>.<op>``. Health beats go to
``lantau.hsm.beat.<node>`` so callers notice a dead or hung node without asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats import micro
from nats.micro.request import Request

from libs import chains, metrics, tracing
from libs.bus import kv
from libs.bus.publish import publish
from libs.clock import now_ms, wait_or_stop
from libs.config import ConfigError, HsmNodeConfig, read_pin
from libs.credentials import Registry, records_from
from libs.evidence import Pins, PinsMemo
from libs.hsm.ceremony import sealing_label
from libs.hsm.guard import Guard
from libs.hsm.replay import ReplayLog
from libs.hsm.sealed_keys import SealedKeys
from libs.hsm.sealed_store import KvIndexLedger, KvSealedStore
from libs.hsm.token import Pkcs11Token
from libs.policy_store import PolicyStore
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import (
    COMMANDS,
    HealthBeat,
    HsmCapabilitiesQuery,
    HsmCloneCheck,
    HsmCommand,
    HsmFailure,
    HsmGenerate,
    HsmPublicKey,
    HsmReceipt,
    HsmReceipts,
    HsmReply,
    HsmSign,
    HsmSignature,
    HsmSignCheckpoint,
    HsmUnwrap,
    HsmWrap,
    HsmWrapped,
)
from proto.subjects import (
    CREDENTIALS_BUCKET,
    HSM_SERVICE_NAME,
    hsm_beat_subject,
    hsm_rpc_subject,
    receipt_subject,
)

log = logging.getLogger("lantau.hsm_node")

# Token errors in a row after which the node reports itself unhealthy in its beats.
UNHEALTHY_AFTER = 3
# Receipts wait at most this long to share one durable write.
RECEIPT_FLUSH_S = 0.02
RECEIPTS_PER_MESSAGE = 256


class HsmNode:
    def __init__(self, rt: Runtime, node: HsmNodeConfig, make_guard: Callable[[HsmNode], Guard]):
        self.rt = rt
        self.node = node
        self.guard = make_guard(self)
        self.in_flight = 0
        self.token_errors = 0
        self.started_at_ms = now_ms()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(node.sessions * 8)
        self._receipts: list[HsmReceipt] = []
        self._receipts_ready = asyncio.Event()

    def on_receipt(self, receipt: HsmReceipt) -> None:
        self._receipts.append(receipt)
        self._receipts_ready.set()

    async def on_request(self, op: str, req: Request) -> None:
        # micro delivers one message at a time per endpoint: serve each in its own task
        # so the token's sessions work in parallel.
        task = asyncio.create_task(self._serve(op, req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, op: str, req: Request) -> None:
        async with self._slots:
            self.in_flight += 1
            started = time.perf_counter()
            outcome = "ok"
            try:
                with tracing.span(
                    f"hsm-node {op}",
                    parent_headers=req.headers,
                    kind=tracing.SpanKind.SERVER,
                    node=self.node.id,
                ):
                    reply = await self._execute(op, req.data)
            except LantauError as e:
                outcome = "refused"
                reply = HsmFailure(code=str(e.code), message=e.message, retryable=False)
            except TransientError as e:
                outcome = "error"
                self.token_errors += 1
                reply = HsmFailure(code=str(e.code), message=e.message, retryable=True)
            except Exception as e:  # never let a request go unanswered
                outcome = "error"
                self.token_errors += 1
                log.exception("hsm %s failed", op)
                reply = HsmFailure(
                    code=str(ErrorCode.HSM_ERROR), message=f"{op} failed: {type(e).__name__}"
                )
            finally:
                self.in_flight -= 1
            if outcome == "ok":
                self.token_errors = 0
            metrics.TOKEN_OPERATIONS.labels(self.node.id, op, outcome).inc()
            metrics.TOKEN_OPERATION_DURATION.labels(self.node.id, op).observe(
                time.perf_counter() - started
            )
            with contextlib.suppress(Exception):
                await req.respond(codec.encode(reply))

    async def _execute(self, op: str, data: bytes) -> HsmReply:
        command: HsmCommand = codec.HSM_COMMAND.decode(data)
        if not isinstance(command, COMMANDS[op]):
            raise LantauError(
                ErrorCode.WRONG_MESSAGE_TYPE,
                f"{type(command).__name__} sent to the {op} endpoint",
            )
        g = self.guard
        if isinstance(command, HsmSign):
            return await g.sign_reply(command)
        if isinstance(command, HsmSignCheckpoint):
            signature = await g.sign_checkpoint(command)
            return HsmSignature(key_id=command.key_id, signatures=[signature])
        if isinstance(command, HsmCloneCheck):
            signature = await g.clone_check(command)
            return HsmSignature(key_id=command.key_id, signatures=[signature])
        if isinstance(command, HsmGenerate):
            key = await g.generate(command)
            if key.created:
                log.info("generated %s key %s", command.curve, command.key_id)
            return key
        if isinstance(command, HsmWrap):
            return HsmWrapped(key_id=command.key_id, wrapped=await g.wrap(command))
        if isinstance(command, HsmUnwrap):
            return await g.unwrap(command)
        if isinstance(command, HsmCapabilitiesQuery):
            return await g.capabilities()
        assert isinstance(command, HsmPublicKey)
        return await g.public_key(command.key_id, command.path)

    async def publish_receipts_forever(self) -> None:
        """Receipts go out in small batches, each one durable write on the bus; a batch
        the bus refuses is kept and sent again (the audit intent already recorded the
        operation, the receipt confirms it happened)."""
        subject = receipt_subject(self.node.id)
        while not self.rt.stopping.is_set() or self._receipts:
            await self._receipts_ready.wait()
            await asyncio.sleep(RECEIPT_FLUSH_S)
            batch = self._receipts[:RECEIPTS_PER_MESSAGE]
            try:
                await publish(self.rt.js, subject, HsmReceipts(node=self.node.id, receipts=batch))
            except Exception as e:
                log.warning("receipts not published yet (%s); retrying", type(e).__name__)
                if self.rt.stopping.is_set():
                    return
                await asyncio.sleep(0.5)
                continue
            del self._receipts[: len(batch)]
            if not self._receipts:
                self._receipts_ready.clear()

    async def beat_forever(self) -> None:
        seq = 0
        subject = hsm_beat_subject(self.node.id)
        while not self.rt.stopping.is_set():
            seq += 1
            beat = HealthBeat(
                node_id=self.node.id,
                region=self.node.region,
                seq=seq,
                sent_at_ms=now_ms(),
                started_at_ms=self.started_at_ms,
                in_flight=self.in_flight,
                ok=self.token_errors < UNHEALTHY_AFTER,
                detail="" if self.token_errors < UNHEALTHY_AFTER else "token errors",
            )
            with contextlib.suppress(Exception):
                await self.rt.nc.publish(subject, codec.encode(beat))
            await wait_or_stop(self.rt.stopping, self.node.beat_interval_ms / 1000)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def check(node: HsmNodeConfig) -> None:
    if not node.state_dir:
        raise ConfigError(f"hsm node {node.id}: set state_dir (its replay record lives there)")


async def serve(rt: Runtime, node: HsmNodeConfig) -> None:
    check(node)
    chains.preload()
    assert node.state_dir is not None
    if node.softhsm_conf:
        # SoftHSM reads its config once, at C_Initialize: set it before loading the module.
        os.environ["SOFTHSM2_CONF"] = node.softhsm_conf
    # The node pins what the config and the policy file say; the file may change (a new
    # approver) and is reloaded like policy reloads it.
    policies = PolicyStore(rt.config.policy.rules_file)
    policies.load()
    # The approvers' security keys: read from the credentials bucket every reload
    # interval, their enrolment quorums recounted here (a revocation counts within it).
    registry = Registry()
    memo = PinsMemo(rt.config)

    def pins() -> Pins:
        if not rt.config.policy.rules_file:
            return memo.get(None)
        policy = policies.current
        return memo.get(policy, registry.active(policy.file))

    replays = await asyncio.to_thread(ReplayLog, Path(node.state_dir) / "replay.sqlite")
    token = await asyncio.to_thread(
        Pkcs11Token, node.module, node.token_label, read_pin(node), sessions=node.sessions
    )

    def make_guard(n: HsmNode) -> Guard:
        guard = Guard(token, node_id=node.id, pins=pins, replays=replays, on_receipt=n.on_receipt)
        # Key types the token has no mechanism for: sealed under the domain's sealing
        # key, the blobs and HSS index ledgers shared with every node through JetStream KV.
        guard.sealed = SealedKeys(
            token,
            node_id=node.id,
            sealing_label=sealing_label(rt.config.backup.kek_label),
            store=KvSealedStore(rt.js),
            ledger=KvIndexLedger(rt.js),
            on_lease=guard.on_lease,
        )
        return guard

    hsm = HsmNode(rt, node, make_guard)
    service = await micro.add_service(
        rt.nc,
        name=HSM_SERVICE_NAME,
        version="0.1.0",
        description=f"HSM node {node.id} (token {node.token_label})",
        metadata={"node": node.id, "region": node.region or ""},
    )

    def handler_for(op: str) -> Callable[[Request], Awaitable[None]]:
        return lambda req: hsm.on_request(op, req)

    for op in COMMANDS:
        await service.add_endpoint(
            name=op, subject=hsm_rpc_subject(node.id, op), handler=handler_for(op)
        )
    background = [
        asyncio.create_task(hsm.beat_forever()),
        asyncio.create_task(policies.watch(rt.stopping, rt.config.policy.reload_interval_s)),
        asyncio.create_task(_prune_forever(rt, replays)),
        asyncio.create_task(_read_credentials_forever(rt, registry)),
    ]
    receipts = asyncio.create_task(hsm.publish_receipts_forever())
    rt.set_ready("startup", True)
    log.info("hsm node %s serving token %s", node.id, node.token_label)
    await rt.stopping.wait()
    await service.stop()
    await hsm.drain()
    for task in background:
        task.cancel()
    hsm._receipts_ready.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receipts, timeout=5)
    await hsm.guard.close()
    replays.close()


async def _read_credentials_forever(rt: Runtime, registry: Registry) -> None:
    bucket = None
    while True:
        try:
            if bucket is None:
                bucket = await rt.js.key_value(CREDENTIALS_BUCKET)
            registry.update(records_from(await kv.values(bucket)))
        except Exception as e:  # the bus is away: keep the last view
            log.warning("cannot read the approvers' credentials: %s", type(e).__name__)
        if await wait_or_stop(rt.stopping, rt.config.policy.reload_interval_s):
            return


async def _prune_forever(rt: Runtime, replays: ReplayLog) -> None:
    while not await wait_or_stop(rt.stopping, 60.0):
        await asyncio.to_thread(replays.prune, now_ms())


ENTRY = ServiceEntry(section="hsm-node", serve=serve, per_node=True)
