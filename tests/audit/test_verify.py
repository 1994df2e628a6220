"""Tamper evidence: every edit, deletion, insertion, reordering or forgery is caught and named."""

from __future__ import annotations

import coincurve
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.audit import chain
from libs.audit import checkpoint as cp
from libs.audit.export import from_lines, to_lines
from libs.audit.verify import missing_sources, verify
from proto.audit import AuditCheckpoint, AuditRecord

KEY = coincurve.PrivateKey(b"\x01" * 32)
PUB = KEY.public_key.format()


def sign(c: AuditCheckpoint, key: coincurve.PrivateKey = KEY) -> AuditCheckpoint:
    sig = key.sign_recoverable(cp.digest(c), hasher=None)[:64]
    return msgspec.structs.replace(c, signature=sig)


def build(n: int = 300, every: int = 50) -> list:
    entries, head, last_cp = [], None, 0
    for i in range(1, n + 1):
        head = chain.next_record(
            head,
            at_ms=1_000 + i,
            actor=f"a{i % 3}",
            event_type="sign_result",
            request_id=f"r{i}",
            source=f"LANTAU_RESULTS:{i}",
            content_sha256=chain.content_hash(bytes([i % 256])),
        )
        entries.append(head)
        if i % every == 0:
            entries.append(
                sign(
                    AuditCheckpoint(
                        seq=i,
                        head_hash=head.hash,
                        at_ms=2_000 + i,
                        prev_checkpoint_seq=last_cp,
                        key_id="k",
                    )
                )
            )
            last_cp = i
    return entries


LOG = build()


def records(entries):
    return [e for e in entries if isinstance(e, AuditRecord)]


def test_an_untouched_log_verifies():
    report = verify(LOG, [PUB])
    assert report.ok, report.reason
    assert (report.records, report.checkpoints, report.last_checkpoint_seq) == (300, 6, 300)


@pytest.mark.parametrize(
    "field", ["at_ms", "actor", "event_type", "request_id", "source", "content_sha256"]
)
@pytest.mark.parametrize("seq", [1, 137, 300])
def test_editing_any_field_of_any_record_is_detected(field, seq):
    tampered = list(LOG)
    i = next(k for k, e in enumerate(tampered) if isinstance(e, AuditRecord) and e.seq == seq)
    value = getattr(tampered[i], field)
    new = value + 1 if isinstance(value, int) else f"{value}x"
    tampered[i] = msgspec.structs.replace(tampered[i], **{field: new})
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == seq and "edited" in report.reason


def test_editing_and_rehashing_one_record_breaks_the_next_link():
    tampered = list(LOG)
    i = next(k for k, e in enumerate(tampered) if isinstance(e, AuditRecord) and e.seq == 42)
    edited = msgspec.structs.replace(tampered[i], actor="mallory", hash="")
    tampered[i] = msgspec.structs.replace(edited, hash=chain.record_hash(edited))
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 43


def test_rewriting_the_whole_tail_is_caught_by_the_checkpoint():
    tampered, head = [], None
    for e in LOG:
        if isinstance(e, AuditRecord):
            if e.seq >= 120:  # re-chain everything from 120 with forged content
                e = chain.next_record(
                    head,
                    at_ms=e.at_ms,
                    actor="mallory",
                    event_type=e.event_type,
                    request_id=e.request_id,
                    source=e.source,
                    content_sha256=e.content_sha256,
                )
            head = e
        tampered.append(e)
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 150 and "head hash" in report.reason


def test_deleting_a_record_is_detected():
    tampered = [e for e in LOG if not (isinstance(e, AuditRecord) and e.seq == 77)]
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 77 and "deleted" in report.reason


def test_inserting_a_record_is_detected():
    tampered = list(LOG)
    forged = chain.next_record(
        records(LOG)[9],
        at_ms=1,
        actor="mallory",
        event_type="sign_result",
        request_id="forged",
        source="LANTAU_RESULTS:999999",
        content_sha256="00",
    )
    tampered.insert(11, forged)  # after the genuine record 11
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 12 and "inserted" in report.reason


def test_reordering_two_records_is_detected():
    tampered = list(LOG)
    tampered[20], tampered[21] = tampered[21], tampered[20]
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 21


def test_the_same_source_recorded_twice_is_detected():
    tampered, head = [], None
    for e in records(LOG)[:10]:
        source = "LANTAU_RESULTS:3" if e.seq == 8 else e.source
        head = chain.next_record(
            head,
            at_ms=e.at_ms,
            actor=e.actor,
            event_type=e.event_type,
            request_id=e.request_id,
            source=source,
            content_sha256=e.content_sha256,
        )
        tampered.append(head)
    report = verify(tampered, [PUB])
    assert not report.ok and report.bad_seq == 8 and "already recorded" in report.reason


@pytest.mark.parametrize("forgery", ["other_key", "bit_flip", "wrong_head", "dropped_checkpoint"])
def test_forged_or_missing_checkpoints_are_detected(forgery):
    tampered = list(LOG)
    i = next(k for k, e in enumerate(tampered) if isinstance(e, AuditCheckpoint) and e.seq == 100)
    c = tampered[i]
    if forgery == "other_key":
        tampered[i] = sign(c, coincurve.PrivateKey(b"\x02" * 32))
    elif forgery == "bit_flip":
        tampered[i] = msgspec.structs.replace(
            c, signature=bytes([c.signature[0] ^ 1]) + c.signature[1:]
        )
    elif forgery == "wrong_head":
        tampered[i] = sign(msgspec.structs.replace(c, head_hash=records(LOG)[50].hash))
    else:
        del tampered[i]
    report = verify(tampered, [PUB])
    assert not report.ok
    assert report.bad_seq == (150 if forgery == "dropped_checkpoint" else 100)


def test_an_unsigned_tail_is_reported_not_hidden():
    partial = build(n=130, every=50)
    report = verify(partial, [PUB])
    assert report.ok and report.last_checkpoint_seq == 100 and report.unsigned_tail == 30
    assert "30 records after the last checkpoint" in report.summary()


def test_incremental_verification_from_a_trusted_checkpoint():
    start = next(e for e in LOG if isinstance(e, AuditCheckpoint) and e.seq == 200)
    report = verify(LOG, [PUB], start=start)
    assert report.ok and report.records == 100 and report.first_seq == 201
    tampered = list(LOG)
    i = next(k for k, e in enumerate(tampered) if isinstance(e, AuditRecord) and e.seq == 250)
    tampered[i] = msgspec.structs.replace(tampered[i], actor="x")
    assert verify(tampered, [PUB], start=start).bad_seq == 250
    assert not verify(LOG, [bytes(33)], start=start).ok


def test_export_round_trip_and_missing_sources():
    again = list(from_lines(to_lines(LOG)))
    assert again == LOG and verify(again, [PUB]).ok
    assert missing_sources(LOG, ["LANTAU_RESULTS:5", "LANTAU_RESULTS:301"]) == [
        "LANTAU_RESULTS:301"
    ]
    with pytest.raises(ValueError, match="line 1"):
        list(from_lines(["{not json"]))


def _same_facts(entries: list) -> bool:
    """Records in their order, checkpoints in theirs, each checkpoint after its record.

    A checkpoint proves "record N had this hash"; where it sits after record N says
    nothing more, so moving it later changes no fact and is not tampering."""
    records = [e for e in entries if isinstance(e, AuditRecord)]
    checkpoints = [e for e in entries if isinstance(e, AuditCheckpoint)]
    if records != [e for e in LOG if isinstance(e, AuditRecord)]:
        return False
    if checkpoints != [e for e in LOG if isinstance(e, AuditCheckpoint)]:
        return False
    seen: set[int] = set()
    for e in entries:
        if isinstance(e, AuditRecord):
            seen.add(e.seq)
        elif e.seq not in seen:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(LOG) - 1), st.integers(0, len(LOG) - 1))
def test_a_swap_is_detected_exactly_when_it_changes_a_fact(i, j):
    if LOG[i] == LOG[j]:
        return
    tampered = list(LOG)
    tampered[i], tampered[j] = tampered[j], tampered[i]
    assert verify(tampered, [PUB]).ok == _same_facts(tampered)


def test_a_checkpoint_may_sit_later_but_never_before_its_record():
    """The case hypothesis found: checkpoint over record N swapped with record N+1."""
    at = next(i for i, e in enumerate(LOG) if isinstance(e, AuditCheckpoint))
    later = list(LOG)
    later[at], later[at + 1] = later[at + 1], later[at]
    assert verify(later, [PUB]).ok
    earlier = list(LOG)
    earlier[at - 1], earlier[at] = earlier[at], earlier[at - 1]
    report = verify(earlier, [PUB])
    assert not report.ok and "head hash" in report.reason
