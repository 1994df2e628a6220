"""The index ledger of stateful keys: unit rules, and a stateful model of nodes sharing
it through compare-and-set while they sign, crash, are restored from backup, and race."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from libs.keytypes import lms_state as ls
from proto.errors import ErrorCode, LantauError


def test_leases_move_forward_and_round_up_to_the_alignment() -> None:
    state = ls.new_index_state("k", total=1024, alignment=32)
    state, a = ls.lease(state, "n1", 10, now=1.0)
    state, b = ls.lease(state, "n2", 33, now=2.0)
    assert (a.start, a.end, b.start, b.end) == (0, 32, 32, 96)
    assert state.next_unleased == 96
    assert ls.signatures_left(state) == 1024 - 96
    assert ls.leased_outstanding(state) == 96


def test_leasing_again_replaces_the_lease_and_burns_its_rest() -> None:
    state = ls.new_index_state("k", total=100)
    state, first = ls.lease(state, "n1", 10, now=0.0)
    state, second = ls.lease(state, "n1", 10, now=1.0)
    assert ls.lease_of(state, "n1") == second
    assert second.start == first.end  # 0..9 are never handed out again
    assert len(state.leases) == 1


def test_retire_drops_the_lease_but_never_gives_indices_back() -> None:
    state = ls.new_index_state("k", total=100)
    state, _ = ls.lease(state, "n1", 10, now=0.0)
    state = ls.retire(state, "n1")
    assert ls.lease_of(state, "n1") is None and state.next_unleased == 10
    _, again = ls.lease(state, "n2", 5, now=0.0)
    assert again.start == 10


def test_the_last_lease_is_cut_at_the_total_then_the_key_is_exhausted() -> None:
    state = ls.new_index_state("k", total=64, alignment=32)
    state, _ = ls.lease(state, "n1", 40, now=0.0)
    assert state.next_unleased == 64 and ls.signatures_left(state) == 0
    with pytest.raises(LantauError) as e:
        ls.lease(state, "n2", 1, now=0.0)
    assert e.value.code == ErrorCode.KEY_EXHAUSTED


def test_a_cursor_walks_its_lease_once() -> None:
    _, granted = ls.lease(ls.new_index_state("k", total=10), "n1", 3, now=0.0)
    cursor = ls.open_cursor(granted)
    taken = []
    for _ in range(3):
        cursor, index = ls.take(cursor)
        taken.append(index)
    assert taken == [0, 1, 2]
    with pytest.raises(LantauError) as e:
        ls.take(cursor)
    assert e.value.code == ErrorCode.KEY_EXHAUSTED


def test_fence_skips_everything_below_and_drops_all_leases() -> None:
    state = ls.new_index_state("k", total=1024, alignment=32)
    state, _ = ls.lease(state, "n1", 32, now=0.0)
    fenced = ls.fence(state, 100)
    assert fenced.next_unleased == 128 and fenced.leases == ()
    assert ls.fence(fenced, 5).next_unleased == 128  # never backwards
    assert ls.fence(fenced, 5000).next_unleased == 1024


@pytest.mark.parametrize(
    "call",
    [
        lambda: ls.new_index_state("k", total=0),
        lambda: ls.new_index_state("k", total=100, alignment=32),
        lambda: ls.lease(ls.new_index_state("k", total=10), "", 1, now=0.0),
        lambda: ls.lease(ls.new_index_state("k", total=10), "n", 0, now=0.0),
        lambda: ls.fence(ls.new_index_state("k", total=10), -1),
    ],
)
def test_bad_arguments_are_typed_errors(call: object) -> None:
    with pytest.raises(LantauError) as e:
        call()  # type: ignore[operator]
    assert e.value.code == ErrorCode.INVALID_FIELD


def test_the_state_round_trips_through_msgpack() -> None:
    state = ls.new_index_state("k", total=1024, alignment=32)
    state, _ = ls.lease(state, "n1", 1, now=12.5)
    encoded = msgspec.msgpack.encode(state)
    assert msgspec.msgpack.decode(encoded, type=ls.IndexState) == state


# -- the stateful model ---------------------------------------------------------------

TOTAL, ALIGN = 512, 16


@dataclass
class Node:
    """What one hsm-node holds: its last read of the ledger, and its lease in memory."""

    name: str
    snapshot: tuple[ls.IndexState, int] | None = None  # (state, KV revision)
    cursor: ls.LeaseCursor | None = None
    last_used: dict[int, int] = field(default_factory=dict)  # lease start -> last index


class Ledger(RuleBasedStateMachine):
    """JetStream KV semantics: a write succeeds only at the revision it read."""

    def __init__(self) -> None:
        super().__init__()
        self.value = ls.new_index_state("k", TOTAL, ALIGN)
        self.revision = 1
        self.nodes = {f"n{i}": Node(f"n{i}") for i in range(3)}
        self.restored = 0
        self.granted: list[ls.IndexLease] = []  # every lease a successful write recorded
        self.used: dict[int, str] = {}  # index -> node that signed with it

    def _cas(self, node: Node, new: ls.IndexState) -> bool:
        assert node.snapshot is not None
        if node.snapshot[1] != self.revision:
            node.snapshot = None  # conflict: the node must read again
            return False
        self.value, self.revision = new, self.revision + 1
        node.snapshot = (new, self.revision)
        return True

    names = st.sampled_from(["n0", "n1", "n2"])

    @rule(name=names)
    def read(self, name: str) -> None:
        self.nodes[name].snapshot = (self.value, self.revision)

    @rule(name=names, size=st.integers(min_value=1, max_value=70))
    def lease(self, name: str, size: int) -> None:
        node = self.nodes[name]
        if node.snapshot is None:
            return
        try:
            new, granted = ls.lease(node.snapshot[0], name, size, now=float(self.revision))
        except LantauError as e:
            assert e.code == ErrorCode.KEY_EXHAUSTED
            assert ls.signatures_left(node.snapshot[0]) == 0
            return
        if self._cas(node, new):  # only a recorded lease may be used
            node.cursor = ls.open_cursor(granted)
            self.granted.append(granted)

    @rule(name=names, count=st.integers(min_value=1, max_value=20))
    def sign(self, name: str, count: int) -> None:
        node = self.nodes[name]
        for _ in range(count):
            if node.cursor is None or node.cursor.next >= node.cursor.lease.end:
                return
            node.cursor, index = ls.take(node.cursor)
            assert index not in self.used, f"index {index} used twice"
            assert any(g.node == name and g.start <= index < g.end for g in self.granted), (
                f"index {index} is outside every lease {name} was granted"
            )
            start = node.cursor.lease.start
            assert index > node.last_used.get(start, -1), "indices go backwards in a lease"
            node.last_used[start] = index
            self.used[index] = name

    @rule(name=names)
    def crash(self, name: str) -> None:
        """The process dies: memory (cursor, snapshot) is gone; the ledger keeps its lease."""
        self.nodes[name] = Node(name)

    @rule()
    def restore_from_backup(self) -> None:
        """A copy of the key restored on a new node: it knows nothing of where others are."""
        self.restored += 1
        name = f"restored{self.restored}"
        self.nodes[name] = Node(name, snapshot=(self.value, self.revision))
        new, granted = self._try_lease(name)
        if new is not None and granted is not None:
            self.nodes[name].cursor = ls.open_cursor(granted)

    def _try_lease(self, name: str) -> tuple[ls.IndexState | None, ls.IndexLease | None]:
        node = self.nodes[name]
        assert node.snapshot is not None
        try:
            new, granted = ls.lease(node.snapshot[0], name, ALIGN, now=0.0)
        except LantauError:
            return None, None
        if not self._cas(node, new):
            return None, None
        self.granted.append(granted)
        return new, granted

    @rule(name=st.sampled_from(["n0", "n1", "n2", "restored1"]))
    def retire(self, name: str) -> None:
        reader = Node("operator", snapshot=(self.value, self.revision))
        self._cas(reader, ls.retire(self.value, name))

    @precondition(lambda self: self.granted)
    @rule()
    def rebuild_lost_ledger(self) -> None:
        """The KV entry was lost: rebuild it fenced past every lease ever granted."""
        highest = max(g.end for g in self.granted)
        self.value = ls.fence(ls.new_index_state("k", TOTAL, ALIGN), highest)
        self.revision += 1

    @rule(name=names, other=names)
    def race(self, name: str, other: str) -> None:
        """Two nodes read the same revision and both try to lease: one write must lose."""
        if name == other:
            return
        self.read(name)
        self.read(other)
        before = len(self.granted)
        self.lease(name, ALIGN)
        self.lease(other, ALIGN)
        assert len(self.granted) - before <= 1

    @invariant()
    def leases_never_overlap_and_stay_below_next_unleased(self) -> None:
        spans = sorted((g.start, g.end) for g in self.granted)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
        assert all(g.end <= self.value.next_unleased for g in self.value.leases)
        assert all(g.start % ALIGN == 0 for g in self.granted)


Ledger.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedger = Ledger.TestCase
