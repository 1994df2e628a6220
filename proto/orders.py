"""What policy hands to signers once a request is approved."""

from __future__ import annotations

import msgspec

from proto import SCHEMA_VERSION
from proto.common import Curve, KeyId, Name, Payload, PayloadKind, RequestId, TimestampMs, Version


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Why policy allowed it: the rule, the policy version and who approved."""

    policy_version: str
    rule: str
    explanation: str
    approvers: list[str] = []


class SignOrder(msgspec.Struct, frozen=True, kw_only=True, tag="sign_order", tag_field="type"):
    request_id: RequestId
    request_hash: str
    requester: Name
    key_id: KeyId
    payload: Payload
    payload_kind: PayloadKind
    decision: Decision
    requested_at_ms: TimestampMs
    deadline_ms: TimestampMs
    v: Version = SCHEMA_VERSION


class CreateKeyOrder(
    msgspec.Struct, frozen=True, kw_only=True, tag="create_key_order", tag_field="type"
):
    request_id: RequestId
    request_hash: str
    requester: Name
    key_id: KeyId
    curve: Curve
    region: str | None = None
    decision: Decision
    requested_at_ms: TimestampMs
    deadline_ms: TimestampMs
    v: Version = SCHEMA_VERSION


Order = SignOrder | CreateKeyOrder
