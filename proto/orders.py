"""What policy hands to signers once a request is approved."""

from __future__ import annotations

import msgspec

from proto.approvals import ApprovalVote
from proto.authorization import CreateKeyAuthorization, SignAuthorization
from proto.base import Message
from proto.common import Curve, Identity, KeyId, RequestId, TimestampMs
from proto.subjects import create_key_order_subject, sign_order_subject


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Why policy allowed it: the rule, the policy version and who approved."""

    policy_version: str
    rule: str
    explanation: str
    approvers: list[str] = []


class SignOrder(Message, tag="sign_order", frozen=True, kw_only=True):
    """A request policy allowed: the evidence the hsm-node checks travels with it. The
    plain fields repeat what the evidence says, for readers (logs, the audit trail)."""

    request_id: RequestId
    request_hash: str
    requester: Identity
    key_id: KeyId
    decision: Decision
    requested_at_ms: TimestampMs
    deadline_ms: TimestampMs
    # The requester's SignRequest exactly as signed, policy's authorization over it,
    # and the approvers' votes it counted.
    request: bytes
    authorization: SignAuthorization
    approvals: list[ApprovalVote] = []


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
    request: bytes
    authorization: CreateKeyAuthorization


Order = SignOrder | CreateKeyOrder


def order_subject(order: Order) -> str:
    """The subject an order lives on: policy publishes there, audit looks there."""
    make = sign_order_subject if isinstance(order, SignOrder) else create_key_order_subject
    return make(order.requester, order.request_id)
