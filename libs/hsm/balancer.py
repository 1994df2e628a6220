"""The HSM pool's decisions, with no I/O and no clock of its own (time is passed in).

Node state from health beats:
    UP --beat late (> suspect_after)--> SUSPECT --no beat (> down_after)--> DOWN
    DOWN, or back after a silence with an open circuit --beat--> RECOVERING
        (circuit half-open, back-off forgotten: must answer a probe) --success--> UP
    any --beat with ok=False--> SUSPECT;  SUSPECT --fresh ok beat--> UP
Circuit breaker from operations:
    CLOSED --failure or missed deadline--> OPEN --open_for elapsed--> HALF_OPEN
    HALF_OPEN --probe succeeds--> CLOSED;  HALF_OPEN --probe fails--> OPEN (open_for doubles)
Choice: among the key's holders not yet tried for this request, the UP node with a
closed circuit and the fewest operations in flight (ties: fewest remote in-flight,
then round-robin); else a SUSPECT closed node; else one probe to a HALF_OPEN node.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple


class NodeState(enum.StrEnum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    RECOVERING = "recovering"


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class StateChange(NamedTuple):
    node_id: str
    old: NodeState
    new: NodeState
    reason: str


@dataclass(frozen=True)
class BalancerSettings:
    suspect_after_ms: int = 1500
    down_after_ms: int = 3000
    open_for_ms: int = 1000
    max_open_for_ms: int = 10_000


@dataclass
class NodeView:
    node_id: str
    state: NodeState = NodeState.DOWN
    circuit: Circuit = Circuit.CLOSED
    in_flight: int = 0
    remote_in_flight: int = 0
    errors: int = 0
    timeouts: int = 0
    successes: int = 0
    consecutive_failures: int = 0
    last_beat_ms: int = 0
    region: str | None = None
    opened_at_ms: int = 0
    open_for_ms: int = 0
    probing: int = 0
    beat_ok: bool = True


class Balancer:
    def __init__(
        self, settings: BalancerSettings, now_ms: int, node_ids: Iterable[str] = ()
    ) -> None:
        self.settings = settings
        self._nodes: dict[str, NodeView] = {}
        self._turn = itertools.count()
        for node_id in node_ids:
            self.add_node(node_id, now_ms)

    def add_node(self, node_id: str, now_ms: int) -> None:
        # A configured node is DOWN until it beats: never send work on faith.
        self._nodes.setdefault(node_id, NodeView(node_id=node_id))

    # -- inputs ----------------------------------------------------------------

    def on_beat(
        self, node_id: str, now_ms: int, *, ok: bool, in_flight: int, region: str | None = None
    ) -> list[StateChange]:
        self.add_node(node_id, now_ms)
        n = self._nodes[node_id]
        silent = bool(n.last_beat_ms) and now_ms - n.last_beat_ms > self.settings.suspect_after_ms
        n.last_beat_ms, n.remote_in_flight, n.beat_ok = now_ms, in_flight, ok
        if region is not None:
            n.region = region
        if not ok:
            return self._move(n, NodeState.SUSPECT, "node reports itself unhealthy")
        if n.state == NodeState.DOWN or (silent and n.circuit != Circuit.CLOSED):
            # Back after a silence (restarted, or unfrozen): probe now, forget the back-off.
            n.circuit, n.probing, n.open_for_ms = Circuit.HALF_OPEN, 0, 0
            return self._move(n, NodeState.RECOVERING, "beats again; must answer a probe")
        if n.state == NodeState.SUSPECT and n.circuit == Circuit.CLOSED:
            return self._move(n, NodeState.UP, "fresh healthy beat")
        return []

    def tick(self, now_ms: int) -> list[StateChange]:
        changes: list[StateChange] = []
        s = self.settings
        for n in self._nodes.values():
            age = now_ms - n.last_beat_ms
            if n.state != NodeState.DOWN and n.last_beat_ms and age > s.down_after_ms:
                n.circuit, n.probing = Circuit.CLOSED, 0
                changes += self._move(n, NodeState.DOWN, f"no beat for {age} ms")
            elif n.state == NodeState.UP and age > s.suspect_after_ms:
                changes += self._move(n, NodeState.SUSPECT, f"beat late by {age} ms")
            if n.circuit == Circuit.OPEN and now_ms - n.opened_at_ms >= n.open_for_ms:
                n.circuit, n.probing = Circuit.HALF_OPEN, 0
        return changes

    def started(self, node_id: str) -> None:
        n = self._nodes.get(node_id)
        if n is not None:
            n.in_flight += 1
            if n.circuit == Circuit.HALF_OPEN:
                n.probing += 1

    def succeeded(self, node_id: str, now_ms: int) -> list[StateChange]:
        n = self._nodes.get(node_id)
        if n is None:
            return []
        self._finish(n)
        n.successes += 1
        n.consecutive_failures = 0
        changes: list[StateChange] = []
        if n.circuit != Circuit.CLOSED:
            n.circuit, n.open_for_ms, n.probing = Circuit.CLOSED, 0, 0
            fresh = now_ms - n.last_beat_ms <= self.settings.suspect_after_ms and n.beat_ok
            if fresh and n.state != NodeState.UP:
                changes += self._move(n, NodeState.UP, "answered its probe; in service")
        return changes

    def released(self, node_id: str) -> None:
        """An operation ended with no verdict on the node (the bus dropped meanwhile)."""
        n = self._nodes.get(node_id)
        if n is not None:
            self._finish(n)

    def failed(
        self, node_id: str, now_ms: int, kind: Literal["timeout", "error"]
    ) -> list[StateChange]:
        n = self._nodes.get(node_id)
        if n is None:
            return []
        self._finish(n)
        n.consecutive_failures += 1
        if kind == "timeout":
            n.timeouts += 1
        else:
            n.errors += 1
        # Open at once: the caller fails over immediately; back off on repeated failures.
        s = self.settings
        n.open_for_ms = min(max(n.open_for_ms * 2, s.open_for_ms), s.max_open_for_ms)
        n.circuit, n.opened_at_ms, n.probing = Circuit.OPEN, now_ms, 0
        if n.state == NodeState.UP:
            return self._move(n, NodeState.SUSPECT, f"operation {kind}; circuit open")
        return []

    # -- decisions -------------------------------------------------------------

    def choose(
        self, holders: Iterable[str], now_ms: int, exclude: Collection[str] = ()
    ) -> str | None:
        candidates = [
            self._nodes[h] for h in dict.fromkeys(holders) if h in self._nodes and h not in exclude
        ]
        turn = next(self._turn)
        for usable in (
            lambda n: n.state == NodeState.UP and n.circuit == Circuit.CLOSED,
            lambda n: n.state == NodeState.SUSPECT and n.circuit == Circuit.CLOSED,
            lambda n: (
                n.state != NodeState.DOWN and n.circuit == Circuit.HALF_OPEN and n.probing == 0
            ),
        ):
            pool = [n for n in candidates if usable(n)]
            if pool:
                size = len(pool)
                best = min(
                    enumerate(pool),
                    key=lambda p: (p[1].in_flight, p[1].remote_in_flight, (p[0] - turn) % size),
                )
                return best[1].node_id
        return None

    def probes_due(self, now_ms: int) -> list[str]:
        """HALF_OPEN nodes with no probe running: the caller sends each one cheap request."""
        return [
            n.node_id
            for n in self._nodes.values()
            if n.circuit == Circuit.HALF_OPEN and n.probing == 0 and n.state != NodeState.DOWN
        ]

    def views(self) -> list[NodeView]:
        return [NodeView(**vars(n)) for n in self._nodes.values()]

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _finish(n: NodeView) -> None:
        n.in_flight = max(0, n.in_flight - 1)
        if n.probing:
            n.probing -= 1

    @staticmethod
    def _move(n: NodeView, new: NodeState, reason: str) -> list[StateChange]:
        if n.state == new:
            return []
        old, n.state = n.state, new
        return [StateChange(n.node_id, old, new, reason)]
