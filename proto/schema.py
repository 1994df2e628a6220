"""Generate the JSON Schema of every wire message from the Structs.

Run ``python -m proto.schema`` after changing a Struct; a test fails while the
checked-in files under ``proto/schemas/`` are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from proto.admin import PoolStatus, XpubAnswer, XpubQuery
from proto.approvals import ApprovalVote, PendingApproval
from proto.audit import AuditEntry, AuditIntent
from proto.credentials import CredentialRecord, CredentialRequest
from proto.events import Event, RejectedMessage
from proto.hsm import HealthBeat, HsmCommand, HsmReceipts, HsmReply
from proto.keys import KeyRecord, SealedKey
from proto.orders import Order
from proto.requests import Request
from proto.results import Result

SCHEMA_DIR = Path(__file__).parent / "schemas"

# One file per family a non-Python client may need to speak or read.
FAMILIES: dict[str, Any] = {
    "request": Request,
    "order": Order,
    "result": Result,
    "event": Event,
    "rejected_message": RejectedMessage,
    "hsm_command": HsmCommand,
    "hsm_reply": HsmReply,
    "health_beat": HealthBeat,
    "hsm_receipts": HsmReceipts,
    "key_record": KeyRecord,
    "sealed_key": SealedKey,
    "audit_intent": AuditIntent,
    "audit_entry": AuditEntry,
    "pool_status": PoolStatus,
    "xpub_query": XpubQuery,
    "xpub_answer": XpubAnswer,
    "approval_vote": ApprovalVote,
    "pending_approval": PendingApproval,
    "credential_request": CredentialRequest,
    "credential_record": CredentialRecord,
}


def render(type_: Any) -> str:
    schema = msgspec.json.schema(type_)
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[str, str]:
    return {f"{name}.schema.json": render(t) for name, t in FAMILIES.items()}


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    wanted = expected_files()
    for old in SCHEMA_DIR.glob("*.schema.json"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(wanted)} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
