"""The checked-in JSON Schemas match the Structs, and every family is covered."""

import json

from proto import schema


def test_checked_in_schemas_are_current():
    wanted = schema.expected_files()
    on_disk = {p.name: p.read_text() for p in schema.SCHEMA_DIR.glob("*.schema.json")}
    stale = sorted(n for n in wanted if on_disk.get(n) != wanted[n])
    extra = sorted(set(on_disk) - set(wanted))
    assert not stale and not extra, (
        f"stale: {stale}, extra: {extra}; run `python -m proto.schema` and commit the result"
    )


def test_request_schema_names_both_request_types():
    doc = json.loads((schema.SCHEMA_DIR / "request.schema.json").read_text())
    assert {"SignRequest", "CreateKeyRequest"} <= set(doc["$defs"])
    tags = {
        d["properties"]["type"]["enum"][0]
        for d in doc["$defs"].values()
        if "type" in d.get("properties", {})
    }
    assert {"sign_request", "create_key_request"} <= tags
