"""Operator queries answered by running services (``lantau hsm status``)."""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.common import TimestampMs, Version


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


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True, tag="pool_status", tag_field="type"):
    """One signer replica's view of the HSM pool."""

    signer: str
    at_ms: TimestampMs
    nodes: list[NodeStatus]
    v: Version = SCHEMA_VERSION
