"""One encoder and one decoder per message family, built once and reused."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from proto import SCHEMA_VERSION
from proto.admin import PoolStatus, XpubAnswer, XpubQuery
from proto.approvals import ApprovalVote, PendingApproval
from proto.audit import AuditEntry, AuditIntent, AuditRecord, WitnessStatus
from proto.credentials import CredentialRecord, CredentialRequest, TotpDelivery
from proto.errors import ErrorCode, LantauError, printable
from proto.events import Event, RejectedMessage
from proto.hsm import HealthBeat, HsmCommand, HsmReceipts, HsmReply
from proto.keys import KeyRecord, SealedKey
from proto.orders import Order
from proto.requests import Request
from proto.results import Result

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


class Decoder(Generic[T]):
    """A msgpack decoder that turns every failure into a typed LantauError."""

    def __init__(self, type_: Any, family: str) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(type_)
        self.type = type_
        self.family = family

    def decode(self, data: bytes) -> T:
        try:
            message = self._decoder.decode(data)
        except msgspec.ValidationError as e:
            raw = str(e)
            # msgspec quotes the offending value (a tag, say): it may be long or hold a
            # newline, and the text goes to logs and the dead-letter record. Bound the
            # value, keep the path that follows it.
            what, at, path = raw.rpartition(" - at `")
            text = f"{printable(what, 200)}{at}{printable(path, 100)}" if at else printable(raw)
            # Classify on how msgspec's sentence starts: the quoted value comes later.
            if raw.startswith("Object missing required field `type`"):
                raise LantauError(
                    ErrorCode.WRONG_MESSAGE_TYPE, f"{self.family} message has no type tag"
                ) from None
            if raw.startswith("Object missing required field"):
                raise LantauError(
                    ErrorCode.INVALID_FIELD, f"{self.family} message lacks a field: {text}"
                ) from None
            if not at or not path.startswith("$"):
                raise LantauError(
                    ErrorCode.MALFORMED_MESSAGE, f"{self.family} message is not an object: {text}"
                ) from None
            if raw.startswith("Invalid value") and path == "$.type`":
                raise LantauError(
                    ErrorCode.WRONG_MESSAGE_TYPE, f"not a {self.family} message: {text}"
                ) from None
            raise LantauError(ErrorCode.INVALID_FIELD, text) from None
        except msgspec.DecodeError as e:
            raise LantauError(
                ErrorCode.MALFORMED_MESSAGE,
                f"{self.family} message is not valid msgpack: {printable(str(e))}",
            ) from None
        except UnicodeDecodeError:
            # msgspec lets this through for a str that is not UTF-8 (msgspec issue #714).
            raise LantauError(
                ErrorCode.MALFORMED_MESSAGE, f"{self.family} message has a string not in UTF-8"
            ) from None
        except RecursionError:
            # msgspec recurses once per nesting level, even to skip an unknown field, and
            # gives up at Python's recursion limit: no message of ours nests that deep.
            raise LantauError(
                ErrorCode.MALFORMED_MESSAGE, f"{self.family} message is nested too deeply"
            ) from None
        version = getattr(message, "v", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise LantauError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"schema version {version} is newer than this service ({SCHEMA_VERSION})",
            )
        return message


REQUEST = Decoder[Request](Request, "request")
# What the policy consumer reads from the requests stream: requests, approvers' votes and
# second-factor requests (enrolment, endorsement, revocation).
PolicyInput = Request | ApprovalVote | CredentialRequest
POLICY_INPUT = Decoder[PolicyInput](PolicyInput, "request")
CREDENTIAL_RECORD = Decoder[CredentialRecord](CredentialRecord, "credential record")
TOTP_DELIVERY = Decoder[TotpDelivery](TotpDelivery, "totp delivery")
PENDING_APPROVAL = Decoder[PendingApproval](PendingApproval, "pending approval")
ORDER = Decoder[Order](Order, "order")
RESULT = Decoder[Result](Result, "result")
EVENT = Decoder[Event](Event, "event")
HSM_COMMAND = Decoder[HsmCommand](HsmCommand, "hsm command")
HSM_REPLY = Decoder[HsmReply](HsmReply, "hsm reply")
HEALTH_BEAT = Decoder[HealthBeat](HealthBeat, "health beat")
HSM_RECEIPTS = Decoder[HsmReceipts](HsmReceipts, "hsm receipts")
KEY_RECORD = Decoder[KeyRecord](KeyRecord, "key record")
SEALED_KEY = Decoder[SealedKey](SealedKey, "sealed key")
AUDIT_INTENT = Decoder[AuditIntent](AuditIntent, "audit intent")
AUDIT_RECORD = Decoder[AuditRecord](AuditRecord, "audit record")
AUDIT_ENTRY = Decoder[AuditEntry](AuditEntry, "audit entry")
WITNESS_STATUS = Decoder[WitnessStatus](WitnessStatus, "audit witness status")
POOL_STATUS = Decoder[PoolStatus](PoolStatus, "pool status")
XPUB_QUERY = Decoder[XpubQuery](XpubQuery, "xpub query")
XPUB_ANSWER = Decoder[XpubAnswer](XpubAnswer, "xpub answer")
REJECTED = Decoder[RejectedMessage](RejectedMessage, "rejected message")
