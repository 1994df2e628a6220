"""The auditor's verifier: pure, over the log's items in order, naming the first bad one.

It reads the whole log with ``Trail`` (records: pinned key, signature, hash, link,
facts continuing every stream; checkpoints: trusted key, sequence, tree, head and
cursors; foreign entries quarantined by a later record), then checks the log against
checkpoints held outside it: one the auditor saved (``since``) and those written to
witness files. Those catch what the log alone cannot show: that it was truncated,
or replaced by a consistent log the attacker wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from libs.audit import checkpoint as cp
from libs.audit.trail import Failure, Keys, LogItem, Trail
from libs.audit.witness import Witnessed
from proto.audit import AuditCheckpoint, AuditRecord

# How many quarantined entries the summary names one by one.
NAMED = 20


@dataclass
class Report:
    trail: Trail
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, log_seq: int, record: int | None, reason: str) -> Report:
        if self.failure is None:
            self.failure = Failure(log_seq, record, reason)
        return self

    def summary(self) -> str:
        if self.failure is not None:
            where = f"log seq {self.failure.log_seq}"
            if self.failure.record is not None:
                where += f" (record {self.failure.record})"
            return "\n".join([f"FAILED at {where}: {self.failure.reason}", *self.notes])
        t = self.trail
        last = t.last_checkpoint
        lines = [
            f"OK: {_n(t.head_seq, 'record')} ({_n(t.facts, 'fact')}) in log seq "
            f"1..{t.last_log_seq}, {_n(t.checkpoints, 'checkpoint')} verified"
            + (
                f"; the last covers {_n(last.tree_size, 'record')} "
                f"(log seq {t.last_checkpoint_log_seq})"
                if last is not None
                else ""
            )
            + (
                f"; {_n(t.head_seq - t.last_cp_size, 'record')} after it not yet signed"
                if last is not None and t.head_seq > t.last_cp_size
                else ""
            )
            + ("; no checkpoint signs them yet" if last is None and t.head_seq else "")
        ]
        if t.quarantined:
            named = "; ".join(f"log seq {s}: {why}" for s, why in t.quarantined[:NAMED])
            more = len(t.quarantined) - NAMED
            lines.append(
                f"quarantined by the audit service ({len(t.quarantined)}): {named}"
                + (f"; and {more} more" if more > 0 else "")
            )
        for stream, first, last_seq, reason in t.gaps:
            span = f"{first}" if first == last_seq else f"{first}..{last_seq}"
            lines.append(f"gap: {stream}:{span} {reason} before it could be recorded")
        lines.extend(self.notes)
        return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def verify(
    items: Iterable[LogItem],
    keys: Keys,
    *,
    since: Witnessed | None = None,
    witnessed: Iterable[Witnessed] = (),
) -> Report:
    """Verify a whole log and check it still holds every checkpoint held outside it."""
    trail = Trail(keys, keep_leaves=True).feed_all(items).finish()
    report = Report(trail, trail.failure)
    if not report.ok:
        return report
    outside = ([since] if since is not None else []) + list(witnessed)
    for w in outside:
        if not cp.verify(w.checkpoint, list(keys.checkpoint_keys)):
            return report.fail(
                trail.last_log_seq + 1,
                None,
                f"{w.label}: that checkpoint is not signed by a trusted checkpoint key",
            )
    newest = max(outside, key=lambda w: w.checkpoint.tree_size, default=None)
    for w in sorted(outside, key=lambda w: w.checkpoint.tree_size):
        problem = against(trail, w, outside)
        if problem is not None:
            log_seq, record, reason = problem
            if newest is not None and newest is not w:
                reason += (
                    f"; the newest checkpoint held outside ({newest.label}) covers "
                    f"{newest.checkpoint.tree_size} records"
                )
            return report.fail(log_seq, record, reason)
    if newest is not None:
        c = newest.checkpoint
        report.notes.append(
            f"held outside the log: {len(outside)} checkpoints, the newest ({newest.label}) "
            f"covers {c.tree_size} records; the log holds all of them unchanged"
        )
    return report


def against(trail: Trail, w: Witnessed, others: list[Witnessed]) -> tuple[int, int, str] | None:
    """Why the log does not hold the tree checkpoint ``w`` signed: (first bad log seq,
    first bad record, reason), or None when it does."""
    c = w.checkpoint
    if c.tree_size > trail.head_seq:
        after = trail.last_log_seq
        return (
            after + 1,
            trail.head_seq + 1,
            f"{w.label} covers {c.tree_size} records, but the log holds {trail.head_seq}: "
            f"records {trail.head_seq + 1}..{c.tree_size} are gone (the log was truncated "
            f"after log seq {after}, or replaced)",
        )
    if trail.root_at(c.tree_size).hex() == c.root:
        return None
    # The rewrite starts after the largest tree held outside that still matches.
    good = max(
        (
            o.checkpoint.tree_size
            for o in others
            if o.checkpoint.tree_size < c.tree_size
            and trail.root_at(o.checkpoint.tree_size).hex() == o.checkpoint.root
        ),
        default=0,
    )
    first = good + 1
    return (
        trail.log_seq_of(first),
        first,
        f"{w.label} signed another tree of {c.tree_size} records: records {first}..{c.tree_size} "
        "are not the ones it covered (rewritten)",
    )


def record_keys_from_checkpoints(
    items: Iterable[LogItem], checkpoint_keys: list[bytes]
) -> set[str]:
    """The record keys named by checkpoints that a trusted checkpoint key signed: what an
    auditor who pinned only the HSM key may use to check the records."""
    return {
        i.entry.record_key
        for i in items
        if isinstance(i.entry, AuditCheckpoint) and cp.verify(i.entry, checkpoint_keys)
    }


def accepted_records(items: Iterable[LogItem], keys: Keys) -> list[tuple[int, AuditRecord]]:
    """(log seq, record) of every record the trail accepts, in order (what ``show`` and
    ``prove`` may rely on; quarantined entries are never among them)."""
    trail = Trail(keys)
    out = []
    for item in items:
        verdict = trail.feed(item)
        if verdict.kind == "record" and isinstance(item.entry, AuditRecord):
            out.append((item.log_seq, item.entry))
        elif verdict.kind == "fail":
            break
    return out


def missing_facts(trail: Trail, expected: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Which (stream, seq) source messages the log does not yet cover."""
    return [(s, n) for s, n in expected if trail.cursors.get(s, 0) < n]
