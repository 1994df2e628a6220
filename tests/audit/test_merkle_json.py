"""Proof documents: what the library writes, it reads back and checks; junk is refused
with typed errors."""

from __future__ import annotations

import msgspec
import pytest

from libs.audit import merkle, merkle_json
from libs.audit.merkle_json import ConsistencyProof, InclusionProof
from proto.errors import ErrorCode, LantauError

HASHES = [merkle.leaf_hash(f"record {i}".encode()) for i in range(21)]
AT = HASHES.__getitem__


def root(size: int) -> bytes:
    return merkle.root(HASHES[:size])


def test_documents_round_trip_and_verify():
    for size in range(1, len(HASHES) + 1):
        for i in range(size):
            doc = merkle_json.prove_inclusion(i, size, AT)
            again = merkle_json.decode(merkle_json.encode(doc))
            assert again == doc
            assert isinstance(again, InclusionProof)
            merkle_json.check_inclusion_proof(again, root(size))
        for m in range(size + 1):
            doc = merkle_json.prove_consistency(m, size, AT)
            again = merkle_json.decode(merkle_json.encode(doc))
            assert again == doc
            assert isinstance(again, ConsistencyProof)
            merkle_json.check_consistency_proof(again, root(m), root(size))


def test_a_document_for_another_tree_is_rejected():
    doc = merkle_json.prove_inclusion(3, 10, AT)
    with pytest.raises(LantauError) as e:
        merkle_json.check_inclusion_proof(doc, root(11))
    assert e.value.code == ErrorCode.MERKLE_PROOF_REJECTED
    cons = merkle_json.prove_consistency(3, 10, AT)
    with pytest.raises(LantauError) as e:
        merkle_json.check_consistency_proof(cons, root(4), root(10))
    assert e.value.code == ErrorCode.MERKLE_PROOF_REJECTED


def test_the_json_is_plain_hex():
    doc = msgspec.json.decode(merkle_json.encode(merkle_json.prove_inclusion(5, 8, AT)))
    assert doc["type"] == "merkle_inclusion_proof"
    assert doc["leaf_hash"] == HASHES[5].hex()
    assert [bytes.fromhex(h) for h in doc["path"]] == merkle.inclusion_proof(5, 8, AT)


GOOD = msgspec.json.decode(merkle_json.encode(merkle_json.prove_inclusion(5, 8, AT)))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", ErrorCode.MALFORMED_MESSAGE),
        (b"[]", ErrorCode.INVALID_FIELD),
        (msgspec.json.encode({**GOOD, "type": "audit_record"}), ErrorCode.INVALID_FIELD),
        (
            msgspec.json.encode({**GOOD, "leaf_hash": GOOD["leaf_hash"].upper()}),
            ErrorCode.INVALID_FIELD,
        ),
        (msgspec.json.encode({**GOOD, "path": [*GOOD["path"], "00"]}), ErrorCode.INVALID_FIELD),
        (msgspec.json.encode({**GOOD, "tree_size": -1}), ErrorCode.INVALID_FIELD),
        (msgspec.json.encode({**GOOD, "v": 2}), ErrorCode.UNSUPPORTED_VERSION),
    ],
)
def test_junk_documents_are_refused_with_typed_errors(data, code):
    with pytest.raises(LantauError) as e:
        merkle_json.decode(data)
    assert e.value.code == code


def test_a_hand_built_document_with_bad_hex_is_rejected_not_crashed():
    doc = InclusionProof(leaf_index=0, tree_size=1, leaf_hash="zz", path=())
    with pytest.raises(LantauError) as e:
        merkle_json.check_inclusion_proof(doc, HASHES[0])
    assert e.value.code == ErrorCode.MERKLE_PROOF_REJECTED
