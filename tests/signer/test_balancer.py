"""The pool's decisions as pure logic: states, circuit breaker, least-in-flight choice."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.hsm.balancer import Balancer, BalancerSettings, Circuit, NodeState

S = BalancerSettings(
    suspect_after_ms=1500, down_after_ms=3000, open_for_ms=1000, max_open_for_ms=8000
)
NODES = ["a", "b", "c"]


def healthy(now: int = 1) -> Balancer:
    """Three nodes that beat and answered their admission probe."""
    b = Balancer(S, now, NODES)
    for n in NODES:
        b.on_beat(n, now, ok=True, in_flight=0)
        b.started(n)
        b.succeeded(n, now)
    return b


def view(b: Balancer, node: str):
    return next(v for v in b.views() if v.node_id == node)


def test_configured_nodes_get_no_work_before_they_beat_and_answer():
    b = Balancer(S, 0, NODES)
    assert b.choose(NODES, 0) is None
    b.on_beat("a", 10, ok=True, in_flight=0)
    assert view(b, "a").state == NodeState.RECOVERING
    assert b.probes_due(10) == ["a"]
    assert b.choose(NODES, 10) == "a"  # the one probe
    b.started("a")
    assert b.choose(NODES, 10) is None  # one probe at a time
    changes = b.succeeded("a", 20)
    assert [c.new for c in changes] == [NodeState.UP]


def test_idle_load_spreads_evenly():
    b = healthy()
    picks = Counter()
    for _ in range(300):
        node = b.choose(NODES, 100)
        b.started(node)
        b.succeeded(node, 100)
        picks[node] += 1
    assert set(picks.values()) == {100}


def test_least_in_flight_wins():
    b = healthy()
    for _ in range(3):
        b.started("a")
    b.started("b")
    assert b.choose(NODES, 100) == "c"
    assert b.choose(["a", "b"], 100) == "b"


def test_failover_skips_tried_nodes_and_non_holders():
    b = healthy()
    assert b.choose(["a", "b"], 100, exclude=["a"]) == "b"
    assert b.choose(["a"], 100, exclude=["a"]) is None
    assert b.choose(["zzz"], 100) is None


def test_timeout_opens_the_circuit_at_once_and_a_probe_readmits():
    b = healthy()
    b.started("b")
    changes = b.failed("b", 100, "timeout")
    assert view(b, "b").circuit == Circuit.OPEN and changes[0].new == NodeState.SUSPECT
    for t in range(100, 1100, 100):
        b.on_beat("a", t, ok=True, in_flight=0)
        b.on_beat("c", t, ok=True, in_flight=0)
        b.on_beat("b", t, ok=True, in_flight=0)
        b.tick(t)
        assert b.choose(NODES, t, exclude=["a", "c"]) is None, "hung node got traffic"
    b.tick(1100)
    assert view(b, "b").circuit == Circuit.HALF_OPEN and b.probes_due(1100) == ["b"]
    b.started("b")
    b.succeeded("b", 1150)
    assert view(b, "b").circuit == Circuit.CLOSED and view(b, "b").state == NodeState.UP


def test_failed_probes_back_off_exponentially_up_to_a_cap():
    b = healthy()
    t, waits = 0, []
    b.started("a")
    b.failed("a", t, "error")
    for _ in range(6):
        opened = t
        while view(b, "a").circuit != Circuit.HALF_OPEN:
            t += 100
            b.on_beat("a", t, ok=True, in_flight=0)
            b.tick(t)
        waits.append(t - opened)
        b.started("a")
        b.failed("a", t, "timeout")
    assert waits == [1000, 2000, 4000, 8000, 8000, 8000]


def test_silent_node_goes_suspect_then_down_and_returns_through_recovery():
    b = healthy()
    assert [c.new for c in b.tick(1600)] == [NodeState.SUSPECT] * 3
    assert {c.new for c in b.tick(3100)} == {NodeState.DOWN}
    assert b.choose(["b"], 3100) is None
    b.on_beat("b", 5000, ok=True, in_flight=0)
    assert view(b, "b").state == NodeState.RECOVERING
    b.started("b")
    b.succeeded("b", 5010)
    assert view(b, "b").state == NodeState.UP


def test_restarted_node_is_probed_at_once_despite_a_long_back_off():
    b = healthy()
    for t in (0, 1000, 3000, 7000):  # failures while it was dying: long back-off
        b.started("c")
        b.failed("c", t, "error")
    b.on_beat("c", 9000, ok=True, in_flight=0)  # it restarted: beats after a silence
    assert view(b, "c").circuit == Circuit.HALF_OPEN and b.probes_due(9000) == ["c"]


def test_unhealthy_beat_makes_a_node_suspect_and_it_is_avoided():
    b = healthy()
    b.on_beat("a", 10, ok=False, in_flight=0)
    assert view(b, "a").state == NodeState.SUSPECT
    for _ in range(10):
        assert b.choose(NODES, 10) != "a"


event = st.one_of(
    st.tuples(st.just("beat"), st.sampled_from(NODES), st.booleans()),
    st.tuples(st.just("tick"), st.just(""), st.just(True)),
    st.tuples(st.just("op"), st.sampled_from(["ok", "timeout", "error"]), st.just(True)),
    st.tuples(st.just("done"), st.sampled_from(["ok", "timeout", "error"]), st.just(True)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(event, st.integers(0, 700)), max_size=120))
def test_invariants_hold_for_any_sequence(steps):
    b = Balancer(S, 0, NODES)
    now, running = 0, []
    for (kind, arg, flag), dt in steps:
        now += dt
        if kind == "beat":
            b.on_beat(arg, now, ok=flag, in_flight=0)
        elif kind == "tick":
            b.tick(now)
        elif kind == "op":
            tried = running[-1][1] if running else []
            node = b.choose(NODES, now, exclude=tried)
            if node is not None:
                v = view(b, node)
                assert v.state != NodeState.DOWN and v.circuit != Circuit.OPEN
                assert node not in tried
                if v.circuit == Circuit.HALF_OPEN:
                    assert v.probing == 0, "two probes at once on a half-open node"
                b.started(node)
                running.append((node, [*tried, node]))
        elif running:
            node, _ = running.pop(0)
            if arg == "ok":
                b.succeeded(node, now)
            else:
                b.failed(node, now, arg)
        for v in b.views():
            assert v.in_flight >= 0 and v.probing >= 0
