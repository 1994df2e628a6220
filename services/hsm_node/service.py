"""hsm-node: owns exactly one PKCS#11 token and serves it to signers over NATS.

Endpoints are NATS micro-service endpoints (``$SRV.PING|INFO|STATS`` come free),
one subject per operation: ``lantau.hsm.rpc.<node>.<op>``. Health beats go to
``lantau.hsm.beat.<node>`` so signers notice a dead or hung node without asking.
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

from libs import metrics, tracing
from libs.clock import now_ms, wait_or_stop
from libs.config import ConfigError, HsmNodeConfig, read_pin
from libs.hsm.pkcs11_backend import Pkcs11Backend
from libs.service import Runtime, ServiceEntry
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import (
    COMMANDS,
    HealthBeat,
    HsmCapabilitiesQuery,
    HsmCommand,
    HsmFailure,
    HsmGenerate,
    HsmKey,
    HsmPublicKey,
    HsmReply,
    HsmSign,
    HsmSignature,
    HsmUnwrap,
    HsmWrap,
    HsmWrapped,
)
from proto.subjects import HSM_SERVICE_NAME, hsm_beat_subject, hsm_rpc_subject
from services.hsm_node.replay import ReplayLog, Signed, replay, sign_content

log = logging.getLogger("lantau.hsm_node")

# Token errors in a row after which the node reports itself unhealthy in its beats.
UNHEALTHY_AFTER = 3


class HsmNode:
    def __init__(
        self, rt: Runtime, node: HsmNodeConfig, backend: Pkcs11Backend, replays: ReplayLog
    ) -> None:
        self.rt = rt
        self.node = node
        self.backend = backend
        self.replays = replays
        # Signatures being made now, by request: a concurrent repeat waits for the first.
        self._signing: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        self.in_flight = 0
        self.token_errors = 0
        self.started_at_ms = now_ms()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(node.sessions * 8)

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
        if isinstance(command, HsmSign):
            signature = await self._sign(command)
            return HsmSignature(key_id=command.key_id, signature=signature)
        if isinstance(command, HsmGenerate):
            key: HsmKey = await self.backend.generate(command.key_id, command.curve)
            if key.created:
                log.info("generated %s key %s", command.curve, command.key_id)
            return key
        if isinstance(command, HsmWrap):
            wrapped = await self.backend.wrap(command.key_id, command.kek_label)
            return HsmWrapped(key_id=command.key_id, wrapped=wrapped)
        if isinstance(command, HsmUnwrap):
            return await self.backend.unwrap(
                command.key_id,
                command.curve,
                command.kek_label,
                command.wrapped,
                command.public_key,
            )
        if isinstance(command, HsmCapabilitiesQuery):
            return await self.backend.capabilities()
        assert isinstance(command, HsmPublicKey)
        return await self.backend.public_key(command.key_id)

    async def _sign(self, command: HsmSign) -> bytes:
        """Sign, once per request: a repeat gets the signature already made."""
        if not command.request_key:
            return await self.backend.sign(command.key_id, command.curve, command.data)
        key = command.request_key
        content = sign_content(command)
        if (done := replay(self.replays.get(key), key, content)) is not None:
            metrics.TOKEN_OPERATIONS.labels(self.node.id, "sign", "replayed").inc()
            return done
        if key in self._signing:
            running_content, running = self._signing[key]
            replay(Signed(running_content, b""), key, content)  # refuses other content
            return await asyncio.shield(running)
        running = asyncio.get_running_loop().create_future()
        self._signing[key] = (content, running)
        try:
            signature = await self.backend.sign(command.key_id, command.curve, command.data)
            # Durable before it leaves the node: a repeat can never make a second one.
            await self.replays.record(key, Signed(content, signature), command.deadline_ms)
            log.info("signed request %s with key %s", key, command.key_id)
            running.set_result(signature)
            return signature
        except BaseException as e:
            running.set_exception(e)
            running.exception()  # retrieved: a waiter may not exist
            raise
        finally:
            self._signing.pop(key, None)

    async def prune_forever(self) -> None:
        while not await wait_or_stop(self.rt.stopping, 60.0):
            await asyncio.to_thread(self.replays.prune, now_ms())

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


async def serve(rt: Runtime, node: HsmNodeConfig) -> None:
    if node.softhsm_conf:
        # SoftHSM reads its config once, at C_Initialize: set it before loading the module.
        os.environ["SOFTHSM2_CONF"] = node.softhsm_conf
    if not node.state_dir:
        raise ConfigError(f"hsm node {node.id}: set state_dir (its replay record lives there)")
    replays = await asyncio.to_thread(ReplayLog, Path(node.state_dir) / "replay.sqlite")
    backend = await asyncio.to_thread(
        Pkcs11Backend, node.module, node.token_label, read_pin(node), sessions=node.sessions
    )
    hsm = HsmNode(rt, node, backend, replays)
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
    beats = asyncio.create_task(hsm.beat_forever())
    pruning = asyncio.create_task(hsm.prune_forever())
    rt.set_ready("startup", True)
    log.info("hsm node %s serving token %s", node.id, node.token_label)
    await rt.stopping.wait()
    await service.stop()
    await hsm.drain()
    beats.cancel()
    pruning.cancel()
    await backend.close()
    replays.close()


ENTRY = ServiceEntry(section="hsm-node", serve=serve, per_node=True)
