"""Operator queries answered by running services (``lantau hsm status``)."""

from __future__ import annotations

import msgspec

from proto.base import Message
from proto.common import TimestampMs


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    state: str
    circuit: str
    in_flight: int
    remote_in_flight: int
    errors: int
    timeouts: int
    successes: int
    last_beat_age_ms: int | None = None
    region: str | None = None


class PoolStatus(Message, tag="pool_status", frozen=True, kw_only=True):
    """One signer replica's view of the HSM pool."""

    signer: str
    at_ms: TimestampMs
    nodes: list[NodeStatus]
