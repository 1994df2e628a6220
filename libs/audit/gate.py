"""Signing waits while the audit trail is not witnessed (fail closed).

The audit service keeps a ``WitnessStatus`` in the lantau_audit_state bucket. While it
says no sink holds the newest checkpoint, every signer holds the orders it received
(and, with all its handlers waiting, takes no more: they wait durably on their stream).
Only the audit service's word closes the gate: a missing status (no audit service has
run yet) or a stale one (the audit service is down) leaves it as it was last said, so a
dead audit service does not stop signing (its intents wait on their stream), and a
trail that lost its witnesses stays closed until they are back.

The status is read every ``POLL_S`` with a KV get (no consumer, no watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs import metrics
from libs.bus import kv
from libs.bus.consume import Delivery, hold
from proto import codec
from proto.errors import ErrorCode, LantauError, TransientError
from proto.subjects import AUDIT_STATE_BUCKET, AUDIT_STATE_WITNESS

log = logging.getLogger("lantau.audit.gate")

POLL_S = 0.25


def decide(value: bytes | None) -> tuple[bool, str]:
    """Pure: may signing go on, given the stored status (None: no status yet)?"""
    if value is None:
        return True, ""
    try:
        status = codec.WITNESS_STATUS.decode(value)
    except LantauError as e:
        return False, f"the audit witness status is unreadable ({e.message})"
    if status.witnessed:
        return True, ""
    return False, status.reason or "the audit trail is not witnessed"


class _Runtime(Protocol):
    @property
    def js(self) -> JetStreamContext: ...

    stopping: asyncio.Event


class WitnessGate:
    def __init__(self, js: JetStreamContext, stopping: asyncio.Event) -> None:
        self._js = js
        self._stopping = stopping
        self._open = asyncio.Event()
        self._open.set()
        self.reason = ""
        self._task: asyncio.Task[None] | None = None
        self._bucket: KeyValue | None = None

    async def start(self) -> WitnessGate:
        await self._read()
        self._task = asyncio.create_task(self._poll())
        return self

    async def _read(self) -> None:
        try:
            if self._bucket is None:
                self._bucket = await self._js.key_value(AUDIT_STATE_BUCKET)
            value, _ = await kv.read(self._bucket, AUDIT_STATE_WITNESS)
        except Exception as e:  # the bus hiccuped: keep the last word
            log.debug("witness status not read: %s", type(e).__name__)
            return
        self._set(*decide(value))

    def _set(self, allowed: bool, reason: str) -> None:
        if allowed and not self._open.is_set():
            log.warning("the audit trail is witnessed again: taking orders")
            self._open.set()
        elif not allowed and self._open.is_set():
            log.error("signing paused: %s", reason)
            self._open.clear()
        self.reason = reason
        metrics.SIGNING_PAUSED.set(0 if allowed else 1)

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=POLL_S)
            await self._read()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait(self) -> None:
        """Return when signing may go on; raises TransientError when stopping first."""
        if self._open.is_set():
            return
        waiters = [
            asyncio.ensure_future(self._open.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if not self._open.is_set():
            raise TransientError(
                ErrorCode.AUDIT_UNWITNESSED, f"stopping while signing is paused: {self.reason}"
            )


_gates: dict[int, WitnessGate] = {}
_starting: dict[int, asyncio.Lock] = {}


async def wait_until_witnessed(rt: _Runtime, delivery: Delivery) -> None:
    """The signer's one call: wait while the audit trail is not witnessed, keeping the
    order's delivery alive (no redelivery to another replica while it waits)."""
    gate = _gates.get(id(rt))
    if gate is None:
        lock = _starting.setdefault(id(rt), asyncio.Lock())
        async with lock:
            gate = _gates.get(id(rt))
            if gate is None:
                gate = _gates[id(rt)] = await WitnessGate(rt.js, rt.stopping).start()
    if not gate.is_open:
        await hold(gate.wait(), delivery)
