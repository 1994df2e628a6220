"""What the backup ceremonies do, decided without I/O: which keys a backup set takes,
which online nodes get each key back, and why a key has no offline copy yet.

Residency is the rule throughout: a key tagged with a region is held only by HSMs (online
or backup) of that region; an untagged key may go to any. An explicit request to break
it is refused as a whole (RESIDENCY_VIOLATION), before anything is copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libs.config import BackupSetConfig, HsmNodeConfig
from proto.errors import ErrorCode, LantauError
from proto.keys import KeyRecord

# Why a key has no offline copy (keys list, manifests, the metric's `reason` label).
KEY_NOT_WRAPPABLE = "KEY_NOT_WRAPPABLE"  # no HSM holding it can export it, even wrapped
NO_BACKUP_SET = "NO_BACKUP_SET"  # no backup set of its region is configured
AWAITING_BACKUP_RUN = "AWAITING_BACKUP_RUN"  # it can be copied: the next ceremony will
NO_HOLDER_UP = "HSM_UNAVAILABLE"  # no node holding it answered the ceremony
NOT_IN_BACKUP_SET = "NOT_IN_BACKUP_SET"  # the directory says the set holds it; it does not


def may_hold(key_region: str | None, holder_region: str | None) -> bool:
    """Residency: a tagged key only where its region is; an untagged key anywhere."""
    return key_region is None or key_region == holder_region


def _refuse_residency(record: KeyRecord, where: str, region: str | None) -> LantauError:
    return LantauError(
        ErrorCode.RESIDENCY_VIOLATION,
        f"key {record.key_id} belongs in region {record.region}; {where} is in "
        f"{region or 'no region'}: refused, nothing was changed",
    )


def _pick(records: Mapping[str, KeyRecord], keys: Iterable[str] | None) -> list[KeyRecord]:
    if keys is None:
        return [r for _, r in sorted(records.items()) if r.status == "active"]
    picked = []
    for key_id in keys:
        record = records.get(key_id)
        if record is None or record.status != "active":
            raise LantauError(
                ErrorCode.UNKNOWN_KEY, f"key {key_id} is not an active key of the directory"
            )
        picked.append(record)
    return picked


@dataclass(frozen=True)
class CopyPlan:
    """One `lantau backup run`: what to copy into the set, from which online nodes."""

    copy: list[tuple[KeyRecord, list[str]]] = field(default_factory=list)
    held: list[KeyRecord] = field(default_factory=list)
    # (record, reason): eligible keys the ceremony cannot copy, and why.
    skipped: list[tuple[KeyRecord, str]] = field(default_factory=list)


def copy_plan(
    records: Mapping[str, KeyRecord],
    backup_set: BackupSetConfig,
    held: Iterable[str],
    wrappable: Mapping[str, frozenset[str] | None],
    *,
    keys: Iterable[str] | None = None,
) -> CopyPlan:
    """Every active key the set may hold and does not, with the nodes to wrap it on.

    ``wrappable``: per online node that answered, the curves it can wrap (None: it did
    not say). ``keys``: only these, each of which must belong in the set's region.
    """
    explicit = keys is not None
    in_set = set(held)
    plan = CopyPlan()
    for record in _pick(records, keys):
        if not may_hold(record.region, backup_set.region):
            if explicit:
                raise _refuse_residency(record, f"backup set {backup_set.id}", backup_set.region)
            continue
        if record.key_id in in_set:
            plan.held.append(record)
            continue
        answered = [n for n in record.nodes if n in wrappable]
        sources = [n for n in answered if _can_wrap(wrappable[n], record.curve)]
        if sources:
            plan.copy.append((record, sources))
        elif answered:
            plan.skipped.append((record, KEY_NOT_WRAPPABLE))
        else:
            plan.skipped.append((record, NO_HOLDER_UP))
    return plan


def _can_wrap(curves: frozenset[str] | None, curve: str) -> bool:
    return curves is None or curve in curves


@dataclass(frozen=True)
class RestorePlan:
    """One `lantau backup restore`: each key of the set, and the online nodes to give it."""

    restore: list[tuple[KeyRecord, list[str]]] = field(default_factory=list)
    # (key id, reason): what cannot be restored and why.
    missing: list[tuple[str, str]] = field(default_factory=list)


def restore_plan(
    records: Mapping[str, KeyRecord],
    backup_set: BackupSetConfig,
    held: Iterable[str],
    nodes: list[HsmNodeConfig],
    *,
    targets: Iterable[str] | None = None,
    keys: Iterable[str] | None = None,
) -> RestorePlan:
    """Where each key of the set goes back: the online nodes named (each must be allowed
    to hold every key restored to it), or every online node of the key's region.

    Keys the directory expects in this set but the set does not hold are listed as
    missing; keys of the set the directory does not know cannot be restored (no
    creation record proves where they may live).
    """
    in_set = set(held)
    by_id = {n.id: n for n in nodes}
    named = list(targets) if targets is not None else None
    for node_id in named or []:
        if node_id not in by_id:
            raise LantauError(ErrorCode.INVALID_FIELD, f"no [[hsm_nodes]] entry {node_id!r}")
    asked = sorted(set(keys)) if keys is not None else None
    plan = RestorePlan()
    every = sorted(in_set | _expected_in(records, backup_set.id))
    for key_id in asked if asked is not None else every:
        record = records.get(key_id)
        if key_id not in in_set:
            plan.missing.append((key_id, NOT_IN_BACKUP_SET))
            continue
        if record is None or record.status != "active":
            plan.missing.append((key_id, ErrorCode.UNKNOWN_KEY.value))
            continue
        if named is None:
            chosen = [n.id for n in nodes if may_hold(record.region, n.region)]
        else:
            for node_id in named:
                if not may_hold(record.region, by_id[node_id].region):
                    raise _refuse_residency(record, f"node {node_id}", by_id[node_id].region)
            chosen = named
        plan.restore.append((record, chosen))
    return plan


def _expected_in(records: Mapping[str, KeyRecord], set_id: str) -> set[str]:
    return {k for k, r in records.items() if set_id in r.backup_sets}


@dataclass(frozen=True)
class OfflineStatus:
    """Where a key's offline copies are, or why it has none."""

    copies: list[str]
    reason: str | None


def offline_status(
    record: KeyRecord,
    backup_sets: list[BackupSetConfig],
    wrappable: Mapping[str, frozenset[str] | None],
) -> OfflineStatus:
    """The key's offline copies (configured sets that hold it), else the reason it has
    none. ``wrappable``: curves each online node can wrap, None where unknown."""
    configured = {b.id for b in backup_sets}
    copies = [s for s in record.backup_sets if s in configured]
    if copies:
        return OfflineStatus(copies, None)
    if not any(may_hold(record.region, b.region) for b in backup_sets):
        return OfflineStatus([], NO_BACKUP_SET)
    known = [wrappable[n] for n in record.nodes if wrappable.get(n) is not None]
    if known and not any(record.curve in curves for curves in known if curves is not None):
        return OfflineStatus([], KEY_NOT_WRAPPABLE)
    return OfflineStatus([], AWAITING_BACKUP_RUN)
