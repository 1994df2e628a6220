"""Witness files, the record key file, the signer's gate and the proof documents."""

from __future__ import annotations

import os
import stat

import msgspec
import pytest

from libs.audit import gate, keyfile, proofs, witness
from libs.audit.trail import Trail
from libs.audit.verify import verify
from proto import codec
from proto.audit import AuditCheckpoint, AuditRecord, WitnessStatus
from proto.errors import ErrorCode, LantauError
from tests.audit.builders import CP_PUB, KEYS, RECORD_KEY, build, items, sign_checkpoint

LOG = build(n_records=40, every=10)
CPS = [e for e in LOG if isinstance(e, AuditCheckpoint)]


def _file(cps) -> str:
    return b"".join(witness.line_of(c) for c in cps).decode()


def test_a_witness_file_reads_back_and_checks():
    found = witness.check(witness.parse(_file(CPS), "w"), [CP_PUB])
    assert [w.checkpoint.tree_size for w in found] == [10, 20, 30, 40]
    again = witness.check(witness.parse(_file([*CPS, CPS[-1]]), "w"), [CP_PUB])
    assert len(again) == 5  # a sink that came back is given the newest again


def test_a_torn_last_line_is_left_out_but_a_bad_line_is_named():
    text = _file(CPS) + witness.line_of(CPS[0]).decode()[:30]
    assert len(witness.parse(text, "w")) == 4
    bad = _file(CPS[:2]) + "not json\n" + _file(CPS[2:])
    with pytest.raises(LantauError, match="w line 3: not a checkpoint") as e:
        witness.parse(bad, "w")
    assert e.value.code == ErrorCode.AUDIT_WITNESS_INVALID


@pytest.mark.parametrize("attack", ["replayed", "forked", "forged"])
def test_a_witness_file_that_goes_back_or_forks_or_is_forged_is_named(attack):
    cps = list(CPS)
    if attack == "replayed":
        cps.append(CPS[0])
        want = "line 5: checkpoint of tree size 10 after one of tree size 40"
    elif attack == "forked":
        cps.append(sign_checkpoint(msgspec.structs.replace(CPS[-1], root="00" * 32)))
        want = "line 5: two different roots for tree size 40"
    else:
        cps[1] = msgspec.structs.replace(cps[1], at_ms=1)
        want = "line 2: checkpoint of tree size 20 is not signed"
    with pytest.raises(LantauError, match=want):
        witness.check(witness.parse(_file(cps), "w"), [CP_PUB])


def test_the_record_key_file_is_created_private_and_refused_when_not(tmp_path):
    path = tmp_path / "k" / "record.key"
    key = keyfile.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyfile.load(path).public_key == key.public_key
    assert key.public_hex in repr(key) and path.read_text().strip() not in repr(key)
    with pytest.raises(LantauError) as exists:
        keyfile.create(path)
    assert exists.value.code == ErrorCode.FILE_EXISTS
    os.chmod(path, 0o644)
    with pytest.raises(LantauError) as loose:
        keyfile.load(path)
    assert loose.value.code == ErrorCode.INSECURE_FILE and "0644" in loose.value.message
    os.chmod(path, 0o640)  # group read: Kubernetes secret volumes with fsGroup
    assert keyfile.load(path).public_key == key.public_key
    bad = tmp_path / "bad.key"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"not hex at all")
    os.close(fd)
    with pytest.raises(LantauError) as garbled:
        keyfile.load(bad)
    assert garbled.value.code == ErrorCode.BAD_KEY_FILE and "not hex" not in garbled.value.message
    made = keyfile.load_or_create(tmp_path / "new.key", True)
    assert keyfile.load_or_create(tmp_path / "new.key", True).public_key == made.public_key


def _status(witnessed: bool, reason: str = "") -> bytes:
    return codec.encode(
        WitnessStatus(
            witnessed=witnessed,
            sinks_up=0,
            sinks_total=1,
            tree_size=5,
            writer="w",
            reason=reason,
            at_ms=1,
        )
    )


def test_the_gate_opens_only_on_the_audit_services_word():
    assert gate.decide(None) == (True, "")
    assert gate.decide(_status(True)) == (True, "")
    assert gate.decide(_status(False, "sink gone")) == (False, "sink gone")
    allowed, reason = gate.decide(b"\x00garbage")
    assert not allowed and "unreadable" in reason


def test_proof_documents_prove_and_reject():
    report = verify(items(LOG), KEYS)
    trail: Trail = report.trail
    old, new = CPS[1], CPS[3]
    doc = proofs.decode(proofs.encode(proofs.consistency(trail, old, new)))
    assert "prefix" in proofs.check(doc, [CP_PUB], {RECORD_KEY.public_key})
    record = next(e for e in LOG if isinstance(e, AuditRecord) and e.seq == 17)
    inc = proofs.decode(proofs.encode(proofs.inclusion(trail, record, new)))
    assert "record 17" in proofs.check(inc, [CP_PUB], {RECORD_KEY.public_key})
    # Another old root (a rewritten log), a forged record, a wrong key: each refused.
    lying = msgspec.structs.replace(
        doc, old=sign_checkpoint(msgspec.structs.replace(old, root="11" * 32))
    )
    with pytest.raises(LantauError) as e:
        proofs.check(lying, [CP_PUB], set())
    assert e.value.code == ErrorCode.MERKLE_PROOF_REJECTED
    edited = msgspec.structs.replace(inc, record=msgspec.structs.replace(record, at_ms=5))
    with pytest.raises(LantauError, match="does not match its hash"):
        proofs.check(edited, [CP_PUB], {RECORD_KEY.public_key})
    with pytest.raises(LantauError) as e:
        proofs.check(inc, [bytes(33)], {RECORD_KEY.public_key})
    assert e.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(LantauError) as e:
        proofs.decode(b"{}")
    assert e.value.code == ErrorCode.INVALID_FIELD
