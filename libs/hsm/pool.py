"""The HSM pool every caller uses (signer, backup, audit): the I/O around the pure Balancer.

Listens to health beats, ticks the balancer, publishes node state changes, sends
half-open probes, and runs each HSM operation with a deadline, failing over to
another node at once when one errors or misses its deadline. Backends are anything
implementing ``HsmBackend``: remote hsm-nodes, or the slots of an in-process module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs import metrics
from libs.bus.publish import publish
from libs.bus.violations import subscribe_checked
from libs.clock import now_ms, wait_or_stop
from libs.hsm.backend import HsmBackend
from libs.hsm.balancer import Balancer, BalancerSettings, Circuit, NodeState, StateChange
from libs.hsm.remote import RemoteHsm
from proto import codec
from proto.admin import NodeStatus, PoolStatus
from proto.errors import ErrorCode, LantauError, TransientError
from proto.events import NodeStateChanged
from proto.subjects import EVENT_NODE_STATE, HSM_BEAT_PREFIX

log = logging.getLogger("lantau.pool")

T = TypeVar("T")
_CIRCUIT_VALUE = {Circuit.CLOSED: 0, Circuit.HALF_OPEN: 1, Circuit.OPEN: 2}


# "No responders" comes back within a round trip; a call still waiting after this long
# was delivered to the node before it went.
ABANDON_GRACE_S = 0.25


class NoNodeAvailable(TransientError):
    pass


class BusInterrupted(TransientError):
    """The bus itself dropped while a node was asked: the node may have done the work
    and only its answer was lost. Asking another node could sign twice, and the node is
    not at fault; the caller retries later, and the same node answers from its record."""


class HsmPool:
    def __init__(
        self,
        nc: Client | None,
        js: JetStreamContext | None,
        *,
        observer: str,
        backends: Mapping[str, HsmBackend],
        timeout_s: float,
        settings: BalancerSettings | None = None,
        publish_state: bool = True,
    ) -> None:
        """``nc`` carries health beats (for backends observed by beats) and ``js`` the
        node-state events; ``publish_state`` False for a pool that only follows along."""
        self._nc = nc
        self._js = js if publish_state else None
        self._backends = dict(backends)
        self._observer = observer
        self._timeout_s = timeout_s
        self.balancer = Balancer(settings or BalancerSettings(), now_ms(), list(self._backends))
        self._tasks: list[asyncio.Task[None]] = []
        self._probing: set[str] = set()
        self._probe_tasks: set[asyncio.Task[None]] = set()
        # Operations waiting on each node, so that when the node is seen gone they fail
        # over at once instead of each waiting out its deadline.
        self._waiting: dict[str, set[asyncio.Task[Any]]] = {}
        self._abandoned: set[asyncio.Task[Any]] = set()
        # Calls whose caller must know if they reached the node (key creation): abandoned
        # only after ABANDON_GRACE_S, by which an undelivered one has had its own answer.
        self._settling: set[asyncio.Task[Any]] = set()

    @classmethod
    def of_nodes(
        cls,
        nc: Client,
        js: JetStreamContext | None,
        *,
        observer: str,
        node_ids: Iterable[str],
        timeout_s: float,
        publish_state: bool = True,
    ) -> HsmPool:
        """A pool of hsm-node processes reached over NATS."""
        return cls(
            nc,
            js,
            observer=observer,
            backends={n: RemoteHsm(nc, n, timeout_s=timeout_s) for n in node_ids},
            timeout_s=timeout_s,
            publish_state=publish_state,
        )

    def backend(self, node_id: str) -> HsmBackend:
        return self._backends[node_id]

    def node_ids(self) -> list[str]:
        return [v.node_id for v in self.balancer.views()]

    async def start(self, stopping: asyncio.Event) -> None:
        if self._nc is not None and any(b.liveness == "beats" for b in self._backends.values()):
            await subscribe_checked(self._nc, f"{HSM_BEAT_PREFIX}.*", cb=self._on_beat)
        self._tasks.append(asyncio.create_task(self._tick_forever(stopping)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = codec.HEALTH_BEAT.decode(msg.data)
        except LantauError as e:
            log.warning("ignoring bad health beat on %s: %s", msg.subject, e.message)
            return
        if beat.node_id not in self._backends:
            return  # not one of ours (e.g. an offline backup HSM in a signer's pool)
        changes = self.balancer.on_beat(
            beat.node_id, now_ms(), ok=beat.ok, in_flight=beat.in_flight, region=beat.region
        )
        await self._report(changes)

    async def _tick_forever(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            now = now_ms()
            for node, backend in self._backends.items():
                if backend.liveness == "in_process":  # alive as long as we are
                    self.balancer.on_beat(node, now, ok=True, in_flight=0, region=None)
            await self._report(self.balancer.tick(now))
            for node in self.balancer.probes_due(now):
                if node not in self._probing:
                    self._probing.add(node)
                    task = asyncio.create_task(self._probe(node))
                    self._probe_tasks.add(task)
                    task.add_done_callback(self._probe_tasks.discard)
            self._export()
            await wait_or_stop(stopping, 0.1)

    async def _probe(self, node: str) -> None:
        self.balancer.started(node)
        try:
            await self._deadline(node, self._backends[node].probe())
            ok = True
        except (TransientError, LantauError):
            ok = False
        finally:
            self._probing.discard(node)
        now = now_ms()
        changes = (
            self.balancer.succeeded(node, now) if ok else self.balancer.failed(node, now, "timeout")
        )
        await self._report(changes)

    async def _report(self, changes: list[StateChange]) -> None:
        for change in changes:
            level = logging.INFO if change.new == NodeState.UP else logging.WARNING
            log.log(
                level,
                "hsm node %s: %s -> %s (%s)",
                change.node_id,
                change.old,
                change.new,
                change.reason,
            )
            event = NodeStateChanged(
                node_id=change.node_id,
                observer=self._observer,
                old=str(change.old),
                new=str(change.new),
                reason=change.reason,
                at_ms=now_ms(),
            )
            if self._js is not None:
                with contextlib.suppress(Exception):
                    await publish(self._js, EVENT_NODE_STATE, event)

    def _export(self) -> None:
        for v in self.balancer.views():
            metrics.HSM_NODE_UP.labels(v.node_id).set(1 if v.state == NodeState.UP else 0)
            metrics.HSM_NODE_IN_FLIGHT.labels(v.node_id).set(v.in_flight)
            metrics.HSM_CIRCUIT_STATE.labels(v.node_id).set(_CIRCUIT_VALUE[v.circuit])

    def status(self) -> PoolStatus:
        now = now_ms()
        return PoolStatus(
            signer=self._observer,
            at_ms=now,
            nodes=[
                NodeStatus(
                    node_id=v.node_id,
                    state=str(v.state),
                    circuit=str(v.circuit),
                    in_flight=v.in_flight,
                    remote_in_flight=v.remote_in_flight,
                    errors=v.errors,
                    timeouts=v.timeouts,
                    successes=v.successes,
                    last_beat_age_ms=None if not v.last_beat_ms else now - v.last_beat_ms,
                    region=v.region,
                )
                for v in self.balancer.views()
            ],
        )

    async def _deadline(self, node: str, op: Awaitable[T]) -> T:
        """Every operation, on every kind of backend, ends by its deadline."""
        try:
            # A remote call keeps its own (equal) deadline; the margin lets it report first.
            return await asyncio.wait_for(op, timeout=self._timeout_s + 0.05)
        except TimeoutError:
            raise TransientError(
                ErrorCode.DEADLINE_EXCEEDED, f"hsm node {node} did not answer in time"
            ) from None

    def _abandon(self, node: str) -> None:
        """NATS says nobody serves ``node`` any more (killed, or gone from the bus): what
        was sent to it will not be answered, so stop waiting for it."""
        for call in list(self._waiting.get(node, ())):
            if call in self._settling:
                asyncio.get_running_loop().call_later(ABANDON_GRACE_S, self._give_up, call)
            else:
                self._give_up(call)

    def _give_up(self, call: asyncio.Task[Any]) -> None:
        if not call.done():
            self._abandoned.add(call)
            call.cancel()

    def _bus_mark(self) -> int | None:
        """How many times the pool's connection has reconnected (None: no bus involved)."""
        if self._nc is None or not any(b.liveness == "beats" for b in self._backends.values()):
            return None
        return int(self._nc.stats.get("reconnects", 0)) if self._nc.is_connected else -1

    def _raise_if_bus_broke(self, mark: int | None, op: str, node: str) -> None:
        if mark is None or (mark >= 0 and self._bus_mark() == mark):
            return
        self.balancer.released(node)
        log.warning("%s on %s: the bus dropped meanwhile; retrying, not failing over", op, node)
        raise BusInterrupted(
            ErrorCode.HSM_UNAVAILABLE,
            f"the bus dropped while {node} was asked to {op}; it will be asked again",
        )

    async def run(
        self,
        op: str,
        holders: Iterable[str],
        fn: Callable[[Any, int], Awaitable[T]],
        *,
        max_attempts: int,
        prefer: Iterable[str] = (),
        delivery_matters: bool = False,
    ) -> tuple[T, str]:
        """Run ``fn`` on the best node holding the key; fail over on error or missed deadline.

        Nodes in ``prefer`` (usable ones) go first: e.g. nodes an earlier attempt asked.
        ``delivery_matters``: the caller acts on NoNodeAvailable.delivered (key creation),
        so a call on a node NATS says is gone waits a moment for its own "no responders"
        (certainly undelivered) before it is given up as perhaps delivered.

        ``fn`` gets the node's backend and the attempt number. A
        LantauError from ``fn`` (bad request, unknown key) is final and raised as is.
        """
        holders = list(holders)
        preferred = [n for n in prefer if n in holders]
        tried: list[str] = []
        last_error: TransientError | None = None
        delivered = False  # did any attempt possibly reach a node?
        for attempt in range(1, max_attempts + 1):
            bus_mark = self._bus_mark()
            node = self.balancer.choose(preferred, now_ms(), exclude=tried) or self.balancer.choose(
                holders, now_ms(), exclude=tried
            )
            if node is None:
                break
            if tried:
                metrics.HSM_FAILOVERS.labels(tried[-1]).inc()
            tried.append(node)
            self.balancer.started(node)
            started = time.perf_counter()
            call = asyncio.ensure_future(self._deadline(node, fn(self._backends[node], attempt)))
            waiting = self._waiting.setdefault(node, set())
            waiting.add(call)
            if delivery_matters:
                self._settling.add(call)
            try:
                try:
                    result = await call
                finally:
                    waiting.discard(call)
                    self._settling.discard(call)
                self._abandoned.discard(call)  # it answered after all: use the answer
            except asyncio.CancelledError:
                if call not in self._abandoned:
                    raise  # we are being cancelled, not the node abandoned
                self._abandoned.discard(call)
                self._raise_if_bus_broke(bus_mark, op, node)
                metrics.HSM_ERRORS.labels(node, "error").inc()
                await self._report(self.balancer.failed(node, now_ms(), "error"))
                log.warning("%s on %s abandoned: the node is gone; failing over", op, node)
                last_error = TransientError(ErrorCode.HSM_UNAVAILABLE, f"hsm node {node} is gone")
                delivered = True
                continue
            except LantauError:
                self.balancer.succeeded(node, now_ms())
                raise
            except TransientError as e:
                if e.delivered:
                    self._raise_if_bus_broke(bus_mark, op, node)
                kind: Literal["timeout", "error"] = (
                    "timeout" if e.code == ErrorCode.DEADLINE_EXCEEDED else "error"
                )
                metrics.HSM_ERRORS.labels(node, kind).inc()
                await self._report(self.balancer.failed(node, now_ms(), kind))
                log.warning("%s on %s failed (%s); failing over", op, node, e.message)
                last_error = e
                delivered = delivered or e.delivered
                if not e.delivered:
                    self._abandon(node)
                continue
            except Exception as e:
                self._raise_if_bus_broke(bus_mark, op, node)
                delivered = True
                metrics.HSM_ERRORS.labels(node, "error").inc()
                await self._report(self.balancer.failed(node, now_ms(), "error"))
                last_error = TransientError(ErrorCode.HSM_ERROR, f"{node}: {type(e).__name__}")
                continue
            metrics.HSM_OPERATION_DURATION.labels(node, op).observe(time.perf_counter() - started)
            await self._report(self.balancer.succeeded(node, now_ms()))
            return result, node
        if last_error is not None:
            raise NoNodeAvailable(
                ErrorCode.HSM_UNAVAILABLE,
                f"{op} failed on {', '.join(tried)}; last error: {last_error.message}",
                delivered=delivered,
            )
        raise NoNodeAvailable(
            ErrorCode.HSM_UNAVAILABLE,
            f"no healthy HSM node among {', '.join(holders) or 'none'}",
            delivered=False,
        )
