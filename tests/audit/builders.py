"""Audit logs built in memory for the pure tests: records in batches, signed checkpoints."""

from __future__ import annotations

import coincurve
import msgspec

from libs import curves
from libs.audit import checkpoint as cp
from libs.audit import merkle, records
from libs.audit.trail import Keys, LogItem
from proto.audit import AuditCheckpoint, AuditEntry, AuditFact, AuditRecord

CP_KEY = coincurve.PrivateKey(b"\x01" * 32)
CP_PUB = CP_KEY.public_key.format()
RECORD_KEY = records.RecordKey(b"\x07" * 32)
OTHER_RECORD_KEY = records.RecordKey(b"\x08" * 32)
KEYS = Keys(frozenset({RECORD_KEY.public_key}), (CP_PUB,))
STREAMS = ("LANTAU_REQUESTS", "LANTAU_ORDERS", "LANTAU_RESULTS")


def sign_checkpoint(c: AuditCheckpoint, key: coincurve.PrivateKey = CP_KEY) -> AuditCheckpoint:
    digest = cp.digest(c)
    raw = key.sign_recoverable(digest, hasher=None)[:64]
    final = curves.finalize("secp256k1", key.public_key.format(), digest, raw)
    return msgspec.structs.replace(c, signature=final.signature)


def fact(stream: str, seq: int, request_id: str | None = None) -> AuditFact:
    return AuditFact(
        stream=stream,
        seq=seq,
        sha256=records.content_hash(f"{stream}:{seq}".encode()),
        event_type="sign_request",
        actor="desk-a",
        request_id=request_id or f"r{seq}",
    )


def build(
    n_records: int = 60,
    every: int = 10,
    batch: int = 3,
    key: records.RecordKey = RECORD_KEY,
    cp_key: coincurve.PrivateKey = CP_KEY,
) -> list[AuditEntry]:
    """``n_records`` records of ``batch`` facts each (round-robin over STREAMS), a signed
    checkpoint after every ``every`` records."""
    entries: list[AuditEntry] = []
    head_hash, frontier, last_cp = records.GENESIS_HASH, merkle.Frontier(), 0
    cursors: dict[str, int] = {}
    for seq in range(1, n_records + 1):
        facts = []
        for k in range(batch):
            stream = STREAMS[(seq + k) % len(STREAMS)]
            cursors[stream] = cursors.get(stream, 0) + 1
            facts.append(fact(stream, cursors[stream]))
        record = records.new_record(
            seq=seq, prev_hash=head_hash, at_ms=1000 + seq, facts=facts, key=key
        )
        entries.append(record)
        head_hash = record.hash
        frontier = merkle.append(frontier, records.leaf_hash(record))
        if seq % every == 0:
            entries.append(
                sign_checkpoint(
                    AuditCheckpoint(
                        tree_size=seq,
                        root=merkle.frontier_root(frontier).hex(),
                        head_hash=head_hash,
                        cursors=dict(cursors),
                        prev_tree_size=last_cp,
                        record_key=key.public_hex,
                        at_ms=2000 + seq,
                        key_id="k",
                    ),
                    cp_key,
                )
            )
            last_cp = seq
    return entries


def items(entries: list[AuditEntry | None]) -> list[LogItem]:
    """Log items at log seqs 1, 2, 3 ...; None stands for bytes that are no entry."""
    return [
        LogItem(i, e) if e is not None else LogItem(i, None, "not an audit entry (garbage)")
        for i, e in enumerate(entries, start=1)
    ]


def reseal(record: AuditRecord, key: records.RecordKey = RECORD_KEY, **changes) -> AuditRecord:
    return records.seal(msgspec.structs.replace(record, **changes), key)
