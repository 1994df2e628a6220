"""Replication planning is pure: which nodes get a key, from where, and what waits."""

from __future__ import annotations

from libs.config import HsmNodeConfig
from libs.keys.residency import eligible, fully_replicated, plan
from proto.keys import KeyRecord


def node(node_id: str, region: str | None, role: str = "pool") -> HsmNodeConfig:
    return HsmNodeConfig(id=node_id, token_label=node_id, region=region, role=role)  # type: ignore[arg-type]


NODES = [node("hk-1", "hk"), node("hk-2", "hk"), node("sg-1", "sg"), node("hk-bak", "hk", "backup")]


def key(region: str | None, holders: list[str], status: str = "active") -> KeyRecord:
    return KeyRecord(
        key_id="k",
        curve="secp256k1",
        status=status,  # type: ignore[arg-type]
        region=region,
        owner="desk",
        nodes=holders,
        created_at_ms=1,
        created_by_request="r",
    )


def test_a_region_tagged_key_is_eligible_only_in_its_region():
    assert eligible(key("hk", ["hk-1"]), NODES) == ["hk-1", "hk-2", "hk-bak"]
    assert eligible(key("sg", ["sg-1"]), NODES) == ["sg-1"]


def test_an_untagged_key_goes_everywhere_in_the_domain():
    assert eligible(key(None, ["hk-1"]), NODES) == ["hk-1", "hk-2", "sg-1", "hk-bak"]


def test_plan_clones_from_a_live_holder_to_live_missing_nodes():
    p = plan(key("hk", ["hk-1"]), NODES, up={"hk-1", "hk-2", "sg-1"})
    assert p.source == "hk-1"
    assert p.targets == ["hk-2"]
    assert p.waiting == ["hk-bak"]  # down: waits
    assert "sg-1" not in p.targets + p.waiting  # never outside the region


def test_no_live_holder_means_nothing_moves_and_everyone_waits():
    p = plan(key("hk", ["hk-1"]), NODES, up={"hk-2", "hk-bak"})
    assert p.source is None and p.targets == []
    assert p.waiting == ["hk-2", "hk-bak"]


def test_pending_keys_are_never_cloned():
    assert plan(key("hk", ["hk-1"], status="pending"), NODES, up={"hk-1", "hk-2"}).targets == []


def test_fully_replicated_ignores_nodes_outside_the_region():
    assert fully_replicated(key("hk", ["hk-1", "hk-2", "hk-bak"]), NODES)
    assert not fully_replicated(key("hk", ["hk-1", "hk-2"]), NODES)
    assert not fully_replicated(key(None, ["hk-1", "hk-2", "hk-bak"]), NODES)
