"""The auditor's verifier: pure, over entries in log order, naming the first bad one.

Checks every record's hash, its link to the previous record, contiguous sequence
numbers, that no source message is recorded twice, and every checkpoint's signature
(against keys the auditor trusts) and head hash. Records after the last checkpoint
are reported as an unsigned tail: their links hold, but only a checkpoint proves
nobody rewrote the end of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from libs.audit import checkpoint as cp
from libs.audit.chain import GENESIS_HASH, record_hash
from proto.audit import AuditCheckpoint, AuditEntry, AuditRecord


@dataclass
class VerifyReport:
    ok: bool = True
    records: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    last_checkpoint_seq: int = 0
    unsigned_tail: int = 0
    bad_seq: int | None = None
    reason: str = ""

    def fail(self, seq: int | None, reason: str) -> VerifyReport:
        self.ok, self.bad_seq, self.reason = False, seq, reason
        return self

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED at seq {self.bad_seq}: {self.reason}"
        span = f"{self.first_seq}..{self.last_seq}" if self.records else "none"
        tail = (
            f"; {self.unsigned_tail} records after the last checkpoint"
            if self.unsigned_tail
            else ""
        )
        return (
            f"OK: {self.records} records (seq {span}), {self.checkpoints} checkpoints verified, "
            f"last checkpoint at seq {self.last_checkpoint_seq}{tail}"
        )


def verify(
    entries: Iterable[AuditEntry],
    trusted_keys: list[bytes],
    *,
    start: AuditCheckpoint | None = None,
) -> VerifyReport:
    """Verify a whole log, or (with ``start``, a checkpoint the auditor already trusts)
    only what follows it."""
    report = VerifyReport()
    prev_hash, expected_seq = GENESIS_HASH, 1
    last_cp_seq = 0
    if start is not None:
        if not cp.verify(start, trusted_keys):
            return report.fail(start.seq, "the starting checkpoint is not signed by a trusted key")
        prev_hash, expected_seq, last_cp_seq = start.head_hash, start.seq + 1, start.seq
    hashes: dict[int, str] = {}
    sources: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, AuditRecord):
            if start is not None and entry.seq <= start.seq:
                continue
            if entry.seq != expected_seq:
                what = (
                    "missing (deleted)" if entry.seq > expected_seq else "out of order or inserted"
                )
                return report.fail(
                    expected_seq, f"record {expected_seq} {what}: found seq {entry.seq}"
                )
            if record_hash(entry) != entry.hash:
                return report.fail(entry.seq, "content does not match its hash (edited)")
            if entry.prev_hash != prev_hash:
                return report.fail(
                    entry.seq, "does not link to the previous record (inserted or reordered)"
                )
            if entry.source in sources:
                return report.fail(
                    entry.seq,
                    f"source {entry.source} already recorded at seq {sources[entry.source]}",
                )
            sources[entry.source] = entry.seq
            hashes[entry.seq] = entry.hash
            prev_hash, expected_seq = entry.hash, expected_seq + 1
            report.records += 1
            report.first_seq = report.first_seq or entry.seq
            report.last_seq = entry.seq
        else:
            if start is not None and entry.seq <= start.seq:
                continue
            if not cp.verify(entry, trusted_keys):
                return report.fail(
                    entry.seq, "checkpoint signature is not from a trusted key (forged)"
                )
            if hashes.get(entry.seq) != entry.head_hash:
                return report.fail(entry.seq, "checkpoint head hash does not match the chain")
            if entry.prev_checkpoint_seq != last_cp_seq:
                return report.fail(
                    entry.seq,
                    f"checkpoint follows {entry.prev_checkpoint_seq}, "
                    f"expected {last_cp_seq} (deleted)",
                )
            last_cp_seq = entry.seq
            report.checkpoints += 1
    report.last_checkpoint_seq = last_cp_seq
    report.unsigned_tail = max(0, report.last_seq - last_cp_seq) if report.records else 0
    return report


def missing_sources(entries: Iterable[AuditEntry], expected: Iterable[str]) -> list[str]:
    """Which of the expected source messages ("<stream>:<seq>") have no record."""
    seen = {e.source for e in entries if isinstance(e, AuditRecord)}
    return [s for s in expected if s not in seen]
