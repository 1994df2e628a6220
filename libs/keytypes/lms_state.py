"""Which one-time indices of a stateful key each node may use: pure, for compare-and-set.

The state is one `IndexState` per key, stored in JetStream KV and changed only by
compare-and-set: a node reads it, computes the new state with these functions, and
uses a lease only after its write succeeded (a conflict means re-read and retry).

Rules that keep every index single-use:
- Leases only move forward: `next_unleased` never decreases, so a range is handed
  out once. Nothing ever gives an index back.
- A node holds at most one lease. Leasing again replaces it and burns what it had
  left: a node that restarted, a copy on another node, or a key restored from backup
  has no memory of where it stopped, so it always signs from a fresh lease.
- Within its lease a node signs in increasing index order (`LeaseCursor`).
- `retire` drops a dead node's lease; the rest of its range is burnt.
- If the KV state itself is ever lost or rolled back, `fence` it past the end of
  every lease ever granted (the audit log records each one), not only past the
  indices seen used: a node may still be signing inside an old lease.
"""

from __future__ import annotations

import msgspec

from proto.errors import ErrorCode, LantauError


class IndexLease(msgspec.Struct, frozen=True, kw_only=True):
    """Indices [start, end) given to one node."""

    node: str
    start: int
    end: int
    leased_at: float  # unix seconds, from the caller's clock


class IndexState(msgspec.Struct, frozen=True, kw_only=True):
    """The index ledger of one stateful key."""

    key_id: str
    total: int  # signatures the key allows: indices 0..total-1
    alignment: int = 1  # leases start and end on multiples of this (HSS: a top-level subtree)
    next_unleased: int = 0
    leases: tuple[IndexLease, ...] = ()  # the current lease of each node, by node name


class LeaseCursor(msgspec.Struct, frozen=True, kw_only=True):
    """A node's position inside its lease, kept in its memory only."""

    lease: IndexLease
    next: int


def new_index_state(key_id: str, total: int, alignment: int = 1) -> IndexState:
    """The ledger of a new key: nothing leased yet."""
    if total < 1 or alignment < 1 or total % alignment:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"total {total} must be a positive multiple of alignment {alignment}",
        )
    return IndexState(key_id=key_id, total=total, alignment=alignment)


def lease(state: IndexState, node: str, size: int, now: float) -> tuple[IndexState, IndexLease]:
    """Give ``node`` the next ``size`` unleased indices (rounded up to whole alignment units).

    Replaces the node's previous lease, whose unused indices are burnt.
    """
    if not node:
        raise LantauError(ErrorCode.INVALID_FIELD, "a lease needs a node name")
    if size < 1:
        raise LantauError(ErrorCode.INVALID_FIELD, f"lease size must be at least 1, got {size}")
    start = state.next_unleased
    if start >= state.total:
        raise LantauError(
            ErrorCode.KEY_EXHAUSTED,
            f"key {state.key_id} has used or leased all {state.total} one-time signatures",
        )
    units = -(-size // state.alignment)
    end = min(state.total, start + units * state.alignment)
    granted = IndexLease(node=node, start=start, end=end, leased_at=now)
    others = tuple(x for x in state.leases if x.node != node)
    leases = tuple(sorted((*others, granted), key=lambda x: x.node))
    return msgspec.structs.replace(state, next_unleased=end, leases=leases), granted


def retire(state: IndexState, node: str) -> IndexState:
    """Forget a dead node's lease: the rest of its range is never handed out again."""
    return msgspec.structs.replace(state, leases=tuple(x for x in state.leases if x.node != node))


def lease_of(state: IndexState, node: str) -> IndexLease | None:
    """The node's current lease, if it has one."""
    return next((x for x in state.leases if x.node == node), None)


def signatures_left(state: IndexState) -> int:
    """Indices never handed to any node: what leases can still give out.

    Indices inside live leases may still be used by their nodes; the ledger does not
    know how far each node got, so they are not counted here.
    """
    return state.total - state.next_unleased


def leased_outstanding(state: IndexState) -> int:
    """Indices inside live leases: an upper bound on what nodes can still sign there."""
    return sum(x.end - x.start for x in state.leases)


def fence(state: IndexState, at_least: int) -> IndexState:
    """Recovery after the ledger was lost or rolled back: lease nothing below ``at_least``.

    ``at_least`` is one past the highest index ever leased; it is rounded up to the
    alignment. All leases are dropped, so every node leases afresh.
    """
    if at_least < 0:
        raise LantauError(ErrorCode.INVALID_FIELD, f"fence index must be >= 0, got {at_least}")
    aligned = -(-at_least // state.alignment) * state.alignment
    return msgspec.structs.replace(
        state,
        next_unleased=min(state.total, max(state.next_unleased, aligned)),
        leases=(),
    )


def open_cursor(granted: IndexLease) -> LeaseCursor:
    """Start signing in a lease that the compare-and-set has just recorded."""
    return LeaseCursor(lease=granted, next=granted.start)


def take(cursor: LeaseCursor) -> tuple[LeaseCursor, int]:
    """The next index to sign with, and the cursor past it; `KEY_EXHAUSTED` when used up."""
    if cursor.next >= cursor.lease.end:
        raise LantauError(
            ErrorCode.KEY_EXHAUSTED,
            f"lease [{cursor.lease.start}, {cursor.lease.end}) is used up: lease a new range",
        )
    return msgspec.structs.replace(cursor, next=cursor.next + 1), cursor.next
