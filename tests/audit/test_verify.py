"""Tamper evidence: every edit, deletion, insertion, reordering, forgery or replay is
caught and named by its log sequence; what the audit service quarantined is reported."""

from __future__ import annotations

import coincurve
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.audit import records
from libs.audit.export import from_lines, line_of
from libs.audit.trail import Keys, LogItem, Trail
from libs.audit.verify import accepted_records, missing_facts, verify
from libs.audit.witness import Witnessed
from proto.audit import AuditCheckpoint, AuditRecord, FactGap, SkippedRange
from tests.audit.builders import (
    CP_KEY,
    CP_PUB,
    KEYS,
    OTHER_RECORD_KEY,
    RECORD_KEY,
    build,
    fact,
    items,
    reseal,
    sign_checkpoint,
)

LOG = build(n_records=60, every=10, batch=3)


def position(entries, seq: int) -> int:
    """Index (0-based) of record ``seq`` in a list of entries."""
    return next(i for i, e in enumerate(entries) if isinstance(e, AuditRecord) and e.seq == seq)


def cp_position(entries, size: int) -> int:
    return next(
        i for i, e in enumerate(entries) if isinstance(e, AuditCheckpoint) and e.tree_size == size
    )


def failed_at(entries, keys=KEYS, **kw) -> tuple[int | None, str]:
    report = verify(items(entries), keys, **kw)
    assert not report.ok, "tampering went unnoticed"
    assert report.failure is not None
    return report.failure.log_seq, report.failure.reason


def test_an_untouched_log_verifies():
    report = verify(items(LOG), KEYS)
    assert report.ok, report.summary()
    t = report.trail
    assert (t.head_seq, t.facts, t.checkpoints, t.last_cp_size) == (60, 180, 6, 60)
    assert report.summary().startswith("OK: 60 records (180 facts) in log seq 1..66")


@pytest.mark.parametrize(
    "change",
    [
        {"at_ms": 1},
        {"seq": 99},
        {"prev_hash": "00" * 32},
        {"facts": []},
        {"gaps": [FactGap(stream="LANTAU_ORDERS", first=1, last=1, reason="deleted")]},
        {"skipped": [SkippedRange(first=1, last=1)]},
        {"hash": "11" * 32},
        {"signature": b"\x00" * 64},
        {"writer": OTHER_RECORD_KEY.public_hex},
    ],
    ids=lambda c: next(iter(c)),
)
@pytest.mark.parametrize("seq", [1, 27, 60])
def test_editing_any_field_of_any_record_is_named_at_its_log_seq(change, seq):
    tampered = list(LOG)
    i = position(tampered, seq)
    tampered[i] = msgspec.structs.replace(tampered[i], **change)
    log_seq, reason = failed_at(tampered)
    assert log_seq == i + 1, reason


@pytest.mark.parametrize("field", ["stream", "seq", "sha256", "event_type", "actor", "request_id"])
def test_editing_any_field_of_a_fact_is_an_edit(field):
    tampered = list(LOG)
    i = position(tampered, 33)
    r = tampered[i]
    value = getattr(r.facts[1], field)
    new = value + 1 if isinstance(value, int) else ("ab" * 32 if field == "sha256" else "X")
    facts = list(r.facts)
    facts[1] = msgspec.structs.replace(facts[1], **{field: new})
    tampered[i] = msgspec.structs.replace(r, facts=facts)
    log_seq, reason = failed_at(tampered)
    assert log_seq == i + 1 and "edited after the audit service signed it" in reason


def test_a_record_edited_and_resealed_with_the_stolen_key_breaks_the_next_link():
    tampered = list(LOG)
    i = position(tampered, 42)
    tampered[i] = reseal(tampered[i], facts=[fact("LANTAU_REQUESTS", 999)])
    log_seq, reason = failed_at(tampered)
    # Record 42 itself now reads as a forgery of its facts; the next record does not link.
    assert log_seq in (i + 1, i + 2), reason


def test_rewriting_the_tail_with_the_record_key_is_caught_by_the_next_checkpoint():
    tampered, head_hash = [], None
    for e in LOG:
        if isinstance(e, AuditRecord) and e.seq >= 45:
            e = reseal(e, at_ms=e.at_ms + 1, prev_hash=head_hash)
        if isinstance(e, AuditRecord):
            head_hash = e.hash
        tampered.append(e)
    log_seq, reason = failed_at(tampered)
    assert log_seq == cp_position(tampered, 50) + 1 and "rewritten" in reason


def test_rewriting_the_whole_log_consistently_with_another_key_is_caught():
    """An insider who deletes the stream and writes a complete, consistent log with a key of
    their own: nothing in it is signed by the pinned keys."""
    other_cp = coincurve.PrivateKey(b"\x09" * 32)
    forged = build(n_records=60, every=10, batch=3, key=OTHER_RECORD_KEY, cp_key=other_cp)
    log_seq, reason = failed_at(forged)
    assert log_seq == 1 and "not a pinned record key" in reason


def test_deleting_a_record_is_detected():
    tampered = list(LOG)
    i = position(tampered, 17)
    del tampered[i]
    log_seq, reason = failed_at(tampered)
    assert log_seq == i + 1 and "record 17 missing (deleted)" in reason


def test_reordering_two_records_is_detected():
    tampered = list(LOG)
    i = position(tampered, 21)
    tampered[i], tampered[i + 1] = tampered[i + 1], tampered[i]
    log_seq, reason = failed_at(tampered)
    assert log_seq == i + 1 and "record 21 missing" in reason


def _rechain(entries, changes: dict[int, dict]) -> list:
    """Records rebuilt with the genuine key, with changes at some seqs; no checkpoints."""
    out, head = [], records.GENESIS_HASH
    for e in entries:
        if isinstance(e, AuditRecord):
            e = reseal(e, prev_hash=head, **changes.get(e.seq, {}))
            head = e.hash
            out.append(e)
    return out


def test_the_same_fact_recorded_twice_is_detected():
    first = [r for r in LOG if isinstance(r, AuditRecord)][2].facts[0]
    tampered = _rechain(LOG, {8: {"facts": [first]}})
    log_seq, reason = failed_at(tampered)
    assert log_seq == 8 and "already recorded" in reason


def test_a_fact_skipped_without_a_gap_note_is_detected_and_a_gap_note_is_reported():
    r8 = [r for r in LOG if isinstance(r, AuditRecord)][7]
    dropped = _rechain(LOG, {8: {"facts": r8.facts[1:]}})
    log_seq, reason = failed_at(dropped)
    assert log_seq == 9 and "skipped without a gap note" in reason  # its next fact
    skipped = r8.facts[0]
    gap = FactGap(stream=skipped.stream, first=skipped.seq, last=skipped.seq, reason="deleted")
    noted = _rechain(LOG, {8: {"facts": r8.facts[1:], "gaps": [gap]}})
    report = verify(items(noted), KEYS)
    assert report.ok, report.summary()
    assert f"gap: {skipped.stream}:{skipped.seq} deleted" in report.summary()


@pytest.mark.parametrize("forgery", ["other_key", "bit_flip", "wrong_head", "dropped_checkpoint"])
def test_forged_or_missing_checkpoints_are_detected(forgery):
    tampered = list(LOG)
    i = cp_position(tampered, 30)
    c = tampered[i]
    if forgery == "other_key":
        tampered[i] = sign_checkpoint(c, coincurve.PrivateKey(b"\x02" * 32))
    elif forgery == "bit_flip":
        tampered[i] = msgspec.structs.replace(
            c, signature=bytes([c.signature[0] ^ 1]) + c.signature[1:]
        )
    elif forgery == "wrong_head":
        other = [r for r in LOG if isinstance(r, AuditRecord)][10]
        tampered[i] = sign_checkpoint(msgspec.structs.replace(c, head_hash=other.hash))
    else:
        del tampered[i]
    log_seq, reason = failed_at(tampered)
    if forgery == "dropped_checkpoint":
        assert log_seq == cp_position(tampered, 40) + 1 and "deleted" in reason
    else:
        assert log_seq == i + 1, reason


def _quarantined(entries, at: int, foreign, note_in_next: bool = True) -> list:
    """Insert a foreign entry before index ``at``; the writer notes it in the next record."""
    out = list(entries)
    out.insert(at, foreign)
    if note_in_next:
        head = None
        for k, e in enumerate(out):
            if k > at and isinstance(e, AuditRecord):
                head = k
                break
        assert head is not None
        # Re-seal from that record on, as the writer would have written them.
        prev = records.GENESIS_HASH
        for k, e in enumerate(out):
            if isinstance(e, AuditRecord) and k != at:
                if k >= head:
                    changes: dict = {"prev_hash": prev}
                    if k == head:
                        changes["skipped"] = [SkippedRange(first=at + 1, last=at + 1)]
                    out[k] = e = reseal(e, **changes)
                prev = e.hash
        # Checkpoints after it are re-signed over the new records (the writer signs them).
        out = _resign_checkpoints(out, skip=at)
    return out


def _resign_checkpoints(entries, skip: int) -> list:
    trail = Trail(KEYS, keep_leaves=True)
    out = []
    for log_seq, e in enumerate(entries, start=1):
        if (
            isinstance(e, AuditCheckpoint)
            and log_seq - 1 != skip
            and e.tree_size > trail.last_cp_size
        ):
            e = sign_checkpoint(
                msgspec.structs.replace(
                    e,
                    root=trail.root_at(e.tree_size).hex(),
                    head_hash=trail.recent[e.tree_size].head_hash,
                    cursors=trail.recent[e.tree_size].cursors or {},
                )
            )
        trail.feed(LogItem(log_seq, e))
        out.append(e)
    return out


def test_garbage_the_writer_quarantined_is_reported_not_fatal():
    at = position(LOG, 12)
    log = _quarantined(LOG, at, None)
    report = verify(items(log), KEYS)
    assert report.ok, report.summary()
    assert f"log seq {at + 1}: not an audit entry" in report.summary()


def test_garbage_nobody_quarantined_is_named():
    at = position(LOG, 12)
    log_seq, reason = failed_at(_quarantined(LOG, at, None, note_in_next=False))
    assert log_seq == at + 1 and "does not say the audit service quarantined it" in reason


def test_garbage_at_the_end_is_named_with_what_to_do():
    log_seq, reason = failed_at([*LOG, None])
    assert log_seq == len(LOG) + 1 and "if it is down, start it" in reason


def test_a_forged_record_chained_on_the_head_is_never_accepted():
    """The first attack of the issue: a correctly chained record by someone else."""
    records_only = [e for e in LOG if isinstance(e, AuditRecord)]
    head = records_only[11]
    forged = records.new_record(
        seq=head.seq + 1,
        prev_hash=head.hash,
        at_ms=1,
        facts=[fact("LANTAU_REQUESTS", 9999, "alice-never")],
        key=OTHER_RECORD_KEY,
    )
    at = position(LOG, 13)
    log = _quarantined(LOG, at, forged)
    report = verify(items(log), KEYS)
    assert report.ok, report.summary()
    assert f"log seq {at + 1}: a record signed by" in report.summary()
    assert "not a pinned record key" in report.summary()
    shown = [f.request_id for _, r in accepted_records(items(log), KEYS) for f in r.facts]
    assert "alice-never" not in shown and len(shown) == 180


def test_a_replayed_checkpoint_is_quarantined_or_named():
    old = LOG[cp_position(LOG, 20)]
    at = position(LOG, 45)
    report = verify(items(_quarantined(LOG, at, old)), KEYS)
    assert report.ok, report.summary()
    assert "a copy of the checkpoint of tree size 20" in report.summary()
    log_seq, reason = failed_at(_quarantined(LOG, at, old, note_in_next=False))
    assert log_seq == at + 1 and "replayed" in reason


def test_a_replayed_record_is_quarantined():
    old = LOG[position(LOG, 5)]
    at = position(LOG, 45)
    report = verify(items(_quarantined(LOG, at, old)), KEYS)
    assert report.ok, report.summary()
    assert "a copy of record 5" in report.summary()


def test_a_log_seq_the_store_lost_is_named():
    lost = items(LOG)
    i = position(LOG, 30)
    lost[i] = LogItem(i + 1, None, "missing from the store: deleted on disk")
    report = verify(lost, KEYS)
    assert not report.ok and report.failure is not None
    assert (report.failure.log_seq, report.failure.record) == (i + 1, 30)
    assert "record 30 is gone" in report.failure.reason
    assert "missing from the store" in report.failure.reason


def test_an_unsigned_tail_is_reported_not_hidden():
    partial = build(n_records=65, every=10)
    report = verify(items(partial), KEYS)
    assert report.ok and report.trail.last_cp_size == 60
    assert "5 records after it not yet signed" in report.summary()


def _outside(entries, size: int, source: str = "saved.json") -> Witnessed:
    return Witnessed(source, 1, entries[cp_position(entries, size)])


def test_truncation_is_caught_against_a_saved_or_witnessed_checkpoint():
    saved = _outside(LOG, 60)
    truncated = LOG[: cp_position(LOG, 30) + 1]
    assert verify(items(truncated), KEYS).ok  # alone, a prefix looks like a whole log
    log_seq, reason = failed_at(truncated, since=saved)
    assert "records 31..60 are gone" in reason and log_seq == len(truncated) + 1
    log_seq, reason = failed_at(truncated, witnessed=[_outside(LOG, 40, "w.jsonl")])
    assert "w.jsonl line 1 covers 40 records" in reason


def test_a_log_rewritten_after_a_witnessed_checkpoint_is_caught():
    witnessed = [_outside(LOG, s, "w.jsonl") for s in (10, 20, 30)]
    tampered, head = [], records.GENESIS_HASH
    for e in LOG:
        if isinstance(e, AuditRecord):
            if e.seq >= 25:
                e = reseal(e, at_ms=e.at_ms + 7, prev_hash=head)
            head = e.hash
            tampered.append(e)
    # The rewriter drops the checkpoints they cannot sign and re-signs none.
    log_seq, reason = failed_at(tampered, witnessed=witnessed)
    assert "records 21..30 are not the ones it covered" in reason and log_seq == 21


def test_export_round_trip_keeps_garbage_and_missing_sequences():
    log = _quarantined(LOG, position(LOG, 12), None)
    its = items(log)
    its[3] = LogItem(4, its[3].entry)
    lines = [line_of(i, b"\x00garbage" if i.entry is None else None) for i in its]
    again = list(from_lines(lines))
    assert [i.log_seq for i in again] == [i.log_seq for i in its]
    assert verify(again, KEYS).ok
    broken = list(lines)
    broken[7] = broken[7][:20]
    report = verify(list(from_lines(broken)), KEYS)
    assert not report.ok and report.failure is not None and report.failure.log_seq == 8


def test_missing_facts_by_cursor():
    report = verify(items(LOG), KEYS)
    top = report.trail.cursors["LANTAU_RESULTS"]
    assert missing_facts(report.trail, [("LANTAU_RESULTS", top), ("LANTAU_RESULTS", top + 1)]) == [
        ("LANTAU_RESULTS", top + 1)
    ]


def test_the_writers_reading_and_the_auditors_agree():
    """The writer keeps only the frontier; it must classify every entry as auditors do."""
    log = _quarantined(LOG, position(LOG, 12), None)
    log = _quarantined(log, position(log, 45), log[cp_position(log, 20)])
    log = _quarantined(log, position(log, 50), log[position(log, 3)])
    writer, auditor = Trail(KEYS), Trail(KEYS, keep_leaves=True)
    for item in items(log):
        assert writer.feed(item).kind == auditor.feed(item).kind


def _same_facts(entries: list) -> bool:
    """Records in their order, checkpoints in theirs, each checkpoint after its record.

    A checkpoint proves "these records had this tree"; where it sits after the record it
    covers says nothing more, so moving it later changes no fact and is not tampering."""
    recs = [e for e in entries if isinstance(e, AuditRecord)]
    cps = [e for e in entries if isinstance(e, AuditCheckpoint)]
    if recs != [e for e in LOG if isinstance(e, AuditRecord)]:
        return False
    if cps != [e for e in LOG if isinstance(e, AuditCheckpoint)]:
        return False
    seen: set[int] = set()
    for e in entries:
        if isinstance(e, AuditRecord):
            seen.add(e.seq)
        elif e.tree_size not in seen:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(LOG) - 1), st.integers(0, len(LOG) - 1))
def test_a_swap_is_detected_exactly_when_it_changes_a_fact(i, j):
    if LOG[i] == LOG[j]:
        return
    tampered = list(LOG)
    tampered[i], tampered[j] = tampered[j], tampered[i]
    assert verify(items(tampered), KEYS).ok == _same_facts(tampered)


def test_a_checkpoint_may_sit_later_but_never_before_its_record():
    at = cp_position(LOG, 10)
    later = list(LOG)
    later[at], later[at + 1] = later[at + 1], later[at]
    assert verify(items(later), KEYS).ok
    earlier = list(LOG)
    earlier[at - 1], earlier[at] = earlier[at], earlier[at - 1]
    log_seq, reason = failed_at(earlier)
    assert log_seq == at and "not before it" in reason


def test_keys_must_be_pinned():
    assert not verify(items(LOG), Keys(frozenset({RECORD_KEY.public_key}), (bytes(33),))).ok
    assert not verify(items(LOG), Keys(frozenset(), (CP_PUB,))).ok
    assert CP_KEY  # the builders' keys are what the tests pin


def test_an_export_keeps_line_separators_inside_strings():
    """U+2028 and U+0085 are data in JSON, not line ends: read exports split on newlines."""
    r = next(e for e in LOG if isinstance(e, AuditRecord))
    odd = [msgspec.structs.replace(r.facts[0], actor="a\u2028b\x85c"), *r.facts[1:]]
    log = _rechain(LOG[:3], {1: {"facts": odd}})
    text = "".join(line_of(i) + "\n" for i in items(log))
    assert len(text.splitlines()) > len(log)  # what splitlines would have done
    assert verify(list(from_lines(text.split("\n"))), KEYS).ok
