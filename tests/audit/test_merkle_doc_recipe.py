"""docs/audit.md gives auditors a proof checker written without Lantau, and example
proofs: run the one against the library's proofs and compare the others, so the page
stays true."""

from __future__ import annotations

import json
import re
from pathlib import Path

from libs.audit import merkle, merkle_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
TEXT = DOC.read_text()


def recipe() -> dict:
    code = re.search(r"## Checking proofs with your own code.*?```python\n(.*?)```", TEXT, re.S)
    assert code, "the independent proof checker is missing from docs/audit.md"
    assert "import hashlib" in code.group(1)
    assert not re.search(r"^(from|import) (?!hashlib|json)", code.group(1), re.M)
    namespace: dict = {"__name__": "recipe"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace


LEAVES = [merkle.leaf_hash(f"record {i}".encode()) for i in range(70)]
AT = LEAVES.__getitem__


def root_hex(size: int) -> str:
    return merkle.root(LEAVES[:size]).hex()


def text(proof: merkle_json.MerkleProof) -> str:
    return merkle_json.encode(proof).decode()


def test_the_documented_checker_accepts_the_librarys_proofs():
    ns = recipe()
    for size in range(1, len(LEAVES) + 1):
        for i in range(size):
            proof = text(merkle_json.prove_inclusion(i, size, AT))
            assert ns["check_inclusion"](proof, root_hex(size)) is True
        for m in range(size + 1):
            proof = text(merkle_json.prove_consistency(m, size, AT))
            assert ns["check_consistency"](proof, root_hex(m), root_hex(size)) is True


def test_the_documented_checker_rejects_what_the_library_rejects():
    ns = recipe()
    proof = json.loads(text(merkle_json.prove_inclusion(37, 70, AT)))
    bad_bit = dict(proof, path=[*proof["path"][:2], "1" + proof["path"][2][1:], *proof["path"][3:]])
    assert proof["path"][2] != bad_bit["path"][2]
    for bad, root in [
        (proof, root_hex(69)),
        (dict(proof, leaf_index=36), root_hex(70)),
        (dict(proof, leaf_index=70), root_hex(70)),
        (dict(proof, tree_size=140), root_hex(70)),
        (dict(proof, leaf_hash=LEAVES[36].hex()), root_hex(70)),
        (dict(proof, path=proof["path"][:-1]), root_hex(70)),
        (dict(proof, path=[*proof["path"], root_hex(70)]), root_hex(70)),
        (bad_bit, root_hex(70)),
    ]:
        assert ns["check_inclusion"](json.dumps(bad), root) is False

    cons = json.loads(text(merkle_json.prove_consistency(21, 70, AT)))
    old, new = root_hex(21), root_hex(70)
    forged = [*LEAVES[:5], merkle.leaf_hash(b"forged"), *LEAVES[6:]]
    forged_cons = text(merkle_json.prove_consistency(21, 70, forged.__getitem__))
    assert ns["check_consistency"](forged_cons, old, merkle.root(forged).hex()) is False
    for bad, r1, r2 in [
        (cons, new, old),
        (cons, root_hex(20), new),
        (dict(cons, old_size=22), old, new),
        (dict(cons, new_size=20), old, new),
        (dict(cons, path=cons["path"][:-1]), old, new),
        (dict(cons, path=[*cons["path"], new]), old, new),
        (dict(cons, path=[]), old, new),
        (dict(cons, old_size=70, path=[]), new, root_hex(69)),
        (dict(cons, old_size=0, path=[]), old, new),
    ]:
        assert ns["check_consistency"](json.dumps(bad), r1, r2) is False


def test_the_example_proofs_on_the_page_are_the_librarys():
    """The examples use the RFC 6962 reference tree (see tests/audit/test_merkle.py)."""
    leaves = [
        merkle.leaf_hash(bytes.fromhex(x))
        for x in [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
    ]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", TEXT, re.S)]
    blocks = [b for b in blocks if b.get("type", "").startswith("merkle_")]
    inclusion = merkle_json.prove_inclusion(5, 8, leaves.__getitem__)
    consistency = merkle_json.prove_consistency(6, 8, leaves.__getitem__)
    assert blocks == [json.loads(text(inclusion)), json.loads(text(consistency))]
    assert merkle.root(leaves).hex() in TEXT
    ns = recipe()
    assert ns["check_inclusion"](json.dumps(blocks[0]), merkle.root(leaves).hex())
    assert ns["check_consistency"](
        json.dumps(blocks[1]), merkle.root(leaves[:6]).hex(), merkle.root(leaves).hex()
    )
