"""The audit log read entry by entry, as both its writer and its auditors read it. Pure.

Every log sequence is either accepted (a record that extends the chain, a checkpoint
over records already read), foreign (not an audit entry, not signed by a pinned key, a
replay, or missing from the store) or a failure (the log was tampered with). Foreign
entries are quarantined: the writer never chains or certifies them and names their log
sequences in its next record's ``skipped``; a foreign entry that no later record names
is a failure. The audit service uses this to check the head it builds on; the verifier
uses it to check the whole log. The two agree by construction.

Checkpoints: a checkpoint's place in the log means nothing beyond following the record
it covers. It must be signed by a trusted key, follow the previous checkpoint
(``prev_tree_size``), and match the tree, chain head and cursors of the records it
covers. A correctly signed copy of an earlier checkpoint is a replay: foreign.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from libs.audit import checkpoint as cp
from libs.audit import merkle, records
from proto import codec
from proto.audit import AuditCheckpoint, AuditEntry, AuditRecord
from proto.errors import LantauError

Kind = Literal["record", "checkpoint", "foreign", "fail"]
# Tree sizes remembered for checkpoints that sit later than the record they cover.
RECENT_SIZES = 4096
# Checkpoints the writer remembers (to recognise replays and check witnesses at start).
RECENT_CHECKPOINTS = 1024


@dataclass(frozen=True)
class LogItem:
    """One log sequence as read from the store: an entry, or why there is none."""

    log_seq: int
    entry: AuditEntry | None = None
    # Why ``entry`` is None: "not an audit entry (...)" or "missing from the store (...)".
    problem: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    log_seq: int
    reason: str = ""


@dataclass(frozen=True)
class Keys:
    """What the reader trusts: record keys (Ed25519, 32 bytes) and checkpoint keys
    (secp256k1, 33 bytes compressed)."""

    record_keys: frozenset[bytes]
    checkpoint_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class Snapshot:
    """The tree, chain head and cursors after record ``size``: what a checkpoint over
    that size must say."""

    root: bytes
    head_hash: str
    # None when no longer known (an auditor checking a checkpoint far behind the head).
    cursors: dict[str, int] | None


@dataclass
class Failure:
    log_seq: int
    record: int | None
    reason: str


@dataclass
class Trail:
    """Reads log items in order. ``keep_leaves`` (the auditor) keeps every leaf hash and
    each record's log sequence, for proofs and for checking any checkpoint; the writer
    keeps only the frontier."""

    keys: Keys
    keep_leaves: bool = False
    head_seq: int = 0
    head_hash: str = records.GENESIS_HASH
    head_log_seq: int = 0
    last_log_seq: int = 0
    frontier: merkle.Frontier = field(default_factory=merkle.Frontier)
    cursors: dict[str, int] = field(default_factory=dict)
    # Foreign entries since the last accepted record: (log seq, reason).
    pending: list[tuple[int, str]] = field(default_factory=list)
    # Foreign entries a record accounted for: (log seq, reason), oldest first.
    quarantined: list[tuple[int, str]] = field(default_factory=list)
    last_checkpoint: AuditCheckpoint | None = None
    last_checkpoint_log_seq: int = 0
    # The tree size of the last accepted checkpoint (set on its own when resuming).
    last_cp_size: int = 0
    checkpoints: int = 0
    facts: int = 0
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)
    failure: Failure | None = None
    # Sizes since the last accepted checkpoint (and its own): what a checkpoint may cover.
    recent: dict[int, Snapshot] = field(default_factory=dict)
    # Accepted checkpoints by tree size, with their log seqs (one per hundred records or so).
    checkpoint_roots: dict[int, tuple[AuditCheckpoint, int]] = field(default_factory=dict)
    # keep_leaves only: leaf hashes and the log sequence of each record.
    leaves: list[bytes] = field(default_factory=list)
    record_log_seqs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.recent:
            self.recent[self.head_seq] = Snapshot(
                merkle.frontier_root(self.frontier), self.head_hash, dict(self.cursors)
            )

    # -- reading -------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def checkpoints_seen(self) -> bool:
        return self.last_checkpoint is not None or self.last_cp_size > 0

    def feed_all(self, items: Iterable[LogItem]) -> Trail:
        for item in items:
            if self.feed(item).kind == "fail":
                break
        return self

    def feed(self, item: LogItem) -> Verdict:
        """Read the next log sequence; once the log has failed, nothing more is read."""
        if self.failure is not None:
            return Verdict("fail", item.log_seq, self.failure.reason)
        if item.log_seq <= self.last_log_seq:
            return self._fail(item.log_seq, None, f"log seq {item.log_seq} read twice")
        if item.log_seq != self.last_log_seq + 1:
            return self._fail(
                self.last_log_seq + 1,
                None,
                f"log seqs {self.last_log_seq + 1}..{item.log_seq - 1} were never read",
            )
        self.last_log_seq = item.log_seq
        entry = item.entry
        if entry is None:
            return self._foreign(item.log_seq, item.problem or "not an audit entry")
        if isinstance(entry, AuditRecord):
            return self._record(item.log_seq, entry)
        return self._checkpoint(item.log_seq, entry)

    def finish(self) -> Trail:
        """The end of the log: a foreign entry no record accounted for is a failure."""
        if self.failure is None and self.pending:
            seq, reason = self.pending[0]
            if self.head_seq == 0 and self.checkpoints == 0:
                reason += (
                    f"; none of the log's {len(self.pending)} entries verifies with the pinned "
                    "keys: the log was replaced or rewritten with other keys (or the keys "
                    "pinned are not this platform's)"
                )
            else:
                reason += (
                    "; no record after it says the audit service quarantined it (it does so "
                    "within seconds while it runs: if it is down, start it and verify again)"
                )
            self._fail(seq, None, reason)
        return self

    # -- records -------------------------------------------------------------

    def _record(self, log_seq: int, record: AuditRecord) -> Verdict:
        writer = _unhex(record.writer)
        if writer not in self.keys.record_keys:
            return self._foreign(
                log_seq, f"a record signed by {record.writer[:16]}..., not a pinned record key"
            )
        if not records.signature_ok(record):
            return self._foreign(log_seq, f"record {record.seq}: its signature does not verify")
        # Signed by the audit service: from here on, anything wrong is tampering.
        if records.record_hash(record) != record.hash:
            return self._fail(
                log_seq,
                record.seq,
                f"record {record.seq}: its content does not match its hash "
                "(edited after the audit service signed it)",
            )
        if record.seq <= self.head_seq:
            return self._earlier_record(log_seq, record)
        # Foreign entries before it that it does not name come first: they are earlier.
        problem = self._skipped_problem(log_seq, record)
        if problem is not None:
            return self._fail(*problem)
        if record.seq > self.head_seq + 1:
            missing = f"{self.head_seq + 1}..{record.seq - 1}"
            if record.seq == self.head_seq + 2:
                missing = str(self.head_seq + 1)
            return self._fail(
                log_seq,
                record.seq,
                f"record {missing} missing (deleted): found record {record.seq}",
            )
        if record.prev_hash != self.head_hash:
            return self._fail(
                log_seq,
                record.seq,
                f"record {record.seq} does not link to record {self.head_seq} "
                "(inserted, reordered or rewritten)",
            )
        cursors = dict(self.cursors)
        problem_text = _advance_cursors(cursors, record)
        if problem_text is not None:
            return self._fail(log_seq, record.seq, f"record {record.seq}: {problem_text}")
        # Accepted.
        leaf = records.leaf_hash(record)
        self.frontier = merkle.append(self.frontier, leaf)
        self.cursors = cursors
        self.head_seq, self.head_hash, self.head_log_seq = record.seq, record.hash, log_seq
        self.quarantined.extend(self.pending)
        self.pending = []
        self.facts += len(record.facts)
        self.gaps.extend((g.stream, g.first, g.last, g.reason) for g in record.gaps)
        self.recent[record.seq] = Snapshot(
            merkle.frontier_root(self.frontier), record.hash, dict(cursors)
        )
        if len(self.recent) > RECENT_SIZES:
            del self.recent[min(self.recent)]
        if self.keep_leaves:
            self.leaves.append(leaf)
            self.record_log_seqs.append(log_seq)
        return Verdict("record", log_seq)

    def _earlier_record(self, log_seq: int, record: AuditRecord) -> Verdict:
        if not self.keep_leaves:
            return self._foreign(log_seq, f"a second copy of record {record.seq} (replayed)")
        if self.leaves[record.seq - 1] == records.leaf_hash(record):
            at = self.record_log_seqs[record.seq - 1]
            return self._foreign(log_seq, f"a copy of record {record.seq} (log seq {at}): replayed")
        return self._fail(
            log_seq,
            record.seq,
            f"a second, different record {record.seq} signed with the record key: "
            "the log forked, or the record key was used outside the audit service",
        )

    def _skipped_problem(
        self, log_seq: int, record: AuditRecord
    ) -> tuple[int, int | None, str] | None:
        """Why the record's ``skipped`` is not exactly the foreign entries since the
        previous record, naming the first log sequence at fault."""
        for r in record.skipped:
            first, last = r.first, r.last
            if not self.head_log_seq < first <= last < log_seq:
                return (
                    log_seq,
                    record.seq,
                    f"record {record.seq} says it skipped log seqs {first}..{last}, which do "
                    f"not lie between the previous record (log seq {self.head_log_seq}) and it",
                )
        noted = {s for r in record.skipped for s in range(r.first, r.last + 1)}
        pending = {seq for seq, _ in self.pending}
        lost = record.seq - self.head_seq - 1
        for seq, reason in self.pending:
            if seq not in noted:
                if lost > 0:  # the next record follows records that are not there
                    held = f"record {self.head_seq + 1}" + (
                        f"..{record.seq - 1}" if lost > 1 else ""
                    )
                    return (
                        seq,
                        self.head_seq + 1,
                        f"{held} is gone: this entry ({reason}) is where it stood, and record "
                        f"{record.seq} (log seq {log_seq}) follows it: the log was changed on "
                        "disk after it was written",
                    )
                return (
                    seq,
                    None,
                    f"{reason}, and the next record ({record.seq}, log seq {log_seq}) does not "
                    "say the audit service quarantined it: the log was changed after it was "
                    "written",
                )
        extra = sorted(noted - pending)
        if extra:
            return (
                log_seq,
                record.seq,
                f"record {record.seq} says the audit service quarantined log seq {extra[0]}, "
                "which is not a foreign entry since the previous record",
            )
        return None

    # -- checkpoints ---------------------------------------------------------

    def _checkpoint(self, log_seq: int, c: AuditCheckpoint) -> Verdict:
        if not cp.verify(c, list(self.keys.checkpoint_keys)):
            return self._foreign(
                log_seq, f"a checkpoint of tree size {c.tree_size} not signed by a trusted key"
            )
        last_size = self.last_cp_size
        if self.checkpoints_seen and c.tree_size <= last_size:
            return self._earlier_checkpoint(log_seq, c, last_size)
        if c.prev_tree_size != last_size:
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size} follows tree size {c.prev_tree_size}, "
                f"but the previous checkpoint covers {last_size}: a checkpoint was deleted",
            )
        if c.tree_size > self.head_seq and self.pending:
            first, why = self.pending[0]
            gone = f"record {self.head_seq + 1}" + (
                f"..{c.tree_size}" if c.tree_size > self.head_seq + 1 else ""
            )
            return self._fail(
                first,
                self.head_seq + 1,
                f"{gone} is gone: this entry ({why}) is where it stood, and the checkpoint at "
                f"log seq {log_seq} covers it: the log was changed on disk after it was written",
            )
        if c.tree_size > self.head_seq:
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size} covers record {c.tree_size}, which is "
                "not before it: its head hash matches no record read so far",
            )
        snap = self._snapshot(c)
        if snap is None:
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size} sits more than {RECENT_SIZES} records "
                "after the record it covers: this reader cannot check it",
            )
        if c.head_hash != snap.head_hash:
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size}: its head hash does not match record "
                f"{c.tree_size} (the records were rewritten)",
            )
        if c.root != snap.root.hex():
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size}: its root does not match the records "
                "(rewritten)",
            )
        if snap.cursors is not None and c.cursors != snap.cursors:
            return self._fail(
                log_seq,
                None,
                f"checkpoint of tree size {c.tree_size}: its cursors do not match the facts "
                "recorded",
            )
        self.last_checkpoint, self.last_checkpoint_log_seq = c, log_seq
        self.last_cp_size = c.tree_size
        self.checkpoints += 1
        self.recent = {size: s for size, s in self.recent.items() if size >= c.tree_size}
        self.checkpoint_roots[c.tree_size] = (c, log_seq)
        if not self.keep_leaves and len(self.checkpoint_roots) > RECENT_CHECKPOINTS:
            del self.checkpoint_roots[min(self.checkpoint_roots)]  # the writer's memory stays flat
        return Verdict("checkpoint", log_seq)

    def _earlier_checkpoint(self, log_seq: int, c: AuditCheckpoint, last_size: int) -> Verdict:
        known = self.checkpoint_roots.get(c.tree_size)
        if known is not None and known[0] == c:
            return self._foreign(
                log_seq,
                f"a copy of the checkpoint of tree size {c.tree_size} (log seq {known[1]}): "
                "replayed",
            )
        if self.keep_leaves:
            if c.root != self.root_at(c.tree_size).hex():
                return self._fail(
                    log_seq,
                    None,
                    f"a checkpoint signed by the trusted key says tree size {c.tree_size} has "
                    "another root: the log was rewritten after that checkpoint was signed",
                )
        return self._foreign(
            log_seq,
            f"a checkpoint of tree size {c.tree_size} after one of tree size {last_size}: replayed",
        )

    def _snapshot(self, c: AuditCheckpoint) -> Snapshot | None:
        snap = self.recent.get(c.tree_size)
        if snap is not None or not self.keep_leaves:
            return snap
        leaf = self.leaves[c.tree_size - 1] if c.tree_size else b""
        head = c.head_hash if c.tree_size and merkle.leaf_hash(_unhex(c.head_hash)) == leaf else ""
        if not c.tree_size:
            head = records.GENESIS_HASH
        return Snapshot(self.root_at(c.tree_size), head, None)

    # -- queries -------------------------------------------------------------

    def root_at(self, size: int) -> bytes:
        """The root of the first ``size`` records (keep_leaves only)."""
        if size == self.head_seq:
            return merkle.frontier_root(self.frontier)
        return merkle.root(self.leaves[:size])

    def log_seq_of(self, record_seq: int) -> int:
        return self.record_log_seqs[record_seq - 1] if self.keep_leaves else 0

    # -- helpers -------------------------------------------------------------

    def _foreign(self, log_seq: int, reason: str) -> Verdict:
        self.pending.append((log_seq, reason))
        return Verdict("foreign", log_seq, reason)

    def _fail(self, log_seq: int, record: int | None, reason: str) -> Verdict:
        if self.pending and self.pending[0][0] < log_seq:
            # A foreign entry nobody accounted for comes first: most often it is the
            # entry that was changed (a record that no longer verifies).
            first, why = self.pending[0]
            log_seq, record = first, None
            reason = f"{why}; and then, at the next entry that verifies: {reason}"
        self.failure = Failure(log_seq, record, reason)
        return Verdict("fail", log_seq, reason)


def _advance_cursors(cursors: dict[str, int], record: AuditRecord) -> str | None:
    """Move each stream's cursor over the record's facts and gaps, which must continue
    it without a hole or an overlap; the reason if they do not."""
    spans: dict[str, list[tuple[int, int, bool]]] = {}
    for fact in record.facts:
        spans.setdefault(fact.stream, []).append((fact.seq, fact.seq, True))
    for stream, seqs in spans.items():
        order = [s for s, _, _ in seqs]
        if order != sorted(order):
            return f"the facts of {stream} are not in the stream's order"
    for gap in record.gaps:
        if gap.last < gap.first:
            return f"gap {gap.stream}:{gap.first}..{gap.last} is empty"
        spans.setdefault(gap.stream, []).append((gap.first, gap.last, False))
    for stream, items in spans.items():
        at = cursors.get(stream, 0)
        for first, last, is_fact in sorted(items):
            what = "fact" if is_fact else "gap"
            if first <= at:
                return (
                    f"{what} {stream}:{first} was already recorded "
                    f"(the stream is recorded up to {at})"
                )
            if first > at + 1:
                span = f"{at + 1}" if first == at + 2 else f"{at + 1}..{first - 1}"
                return f"messages {stream}:{span} were skipped without a gap note"
            at = last
        cursors[stream] = at
    return None


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (ValueError, TypeError):
        return b""


def decode_item(log_seq: int, data: bytes) -> LogItem:
    """A log message's bytes as a LogItem: the entry, or why it is not one."""
    try:
        return LogItem(log_seq, codec.AUDIT_ENTRY.decode(data))
    except LantauError as e:
        return LogItem(log_seq, None, f"not an audit entry ({len(data)} bytes: {e.message})")
