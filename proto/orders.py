"""What policy hands to signers once a request is approved."""

from __future__ import annotations

import msgspec

from proto.base import Message
from proto.common import Curve, Identity, KeyId, Payload, PayloadKind, RequestId, TimestampMs


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Why policy allowed it: the rule, the policy version and who approved."""

    policy_version: str
    rule: str
    explanation: str
    approvers: list[str] = []


class SignOrder(Message, tag="sign_order", frozen=True, kw_only=True):
    request_id: RequestId
    request_hash: str
    requester: Identity
    key_id: KeyId
    payload: Payload
    payload_kind: PayloadKind
    decision: Decision
    requested_at_ms: TimestampMs
    deadline_ms: TimestampMs


class CreateKeyOrder(Message, tag="create_key_order", frozen=True, kw_only=True):
    request_id: RequestId
    request_hash: str
    requester: Identity
    key_id: KeyId
    curve: Curve
    region: str | None = None
    decision: Decision
    requested_at_ms: TimestampMs
    deadline_ms: TimestampMs


Order = SignOrder | CreateKeyOrder
