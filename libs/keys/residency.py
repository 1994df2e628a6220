"""Pure replication planning: which HSM nodes should receive a copy of a key, from where.

Residency (invariant 8): a key tagged with a region only ever goes to HSMs of that
region; an untagged key goes to every HSM of the domain.
"""

from __future__ import annotations

from typing import NamedTuple

from libs.config import HsmNodeConfig
from proto.keys import KeyRecord


class Plan(NamedTuple):
    source: str | None
    targets: list[str]
    # Nodes that should hold the key but cannot be served now (down, or no source up).
    waiting: list[str]


def eligible(record: KeyRecord, nodes: list[HsmNodeConfig]) -> list[str]:
    """Every node that may and should hold this key."""
    return [n.id for n in nodes if record.region is None or n.region == record.region]


def plan(record: KeyRecord, nodes: list[HsmNodeConfig], up: set[str]) -> Plan:
    if record.status != "active":
        return Plan(None, [], [])
    missing = [n for n in eligible(record, nodes) if n not in record.nodes]
    sources = [n for n in record.nodes if n in up]
    if not sources:
        return Plan(None, [], missing)
    targets = [n for n in missing if n in up]
    return Plan(sources[0], targets, [n for n in missing if n not in up])


def fully_replicated(record: KeyRecord, nodes: list[HsmNodeConfig]) -> bool:
    return set(eligible(record, nodes)) <= set(record.nodes)
