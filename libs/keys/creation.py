"""Creating a key: a pure plan of the next step and the thin shell that takes it.

The protocol (one key id can never become two keys on two HSMs):
reserve the id (KV create of a ``pending`` record naming one node) -> generate on that
node only -> activate the record by compare-and-set. A redelivered creation resumes
on the reserved node. The one safe exception: when the node reserved in this very
attempt certainly never received the generate request (NATS had no responder), the
reservation is released and the next delivery places the key afresh.
Used by the signer (requested keys) and the audit service (its checkpoint key).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple

from libs.clock import now_ms
from libs.keys.directory import KeyDirectory
from proto.authorization import CreateKeyAuthorization
from proto.common import Curve
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import HsmKey
from proto.keys import KeyRecord

log = logging.getLogger("lantau.keys")


class Reserve(NamedTuple):
    """No record: reserve the id on a node of the caller's choosing."""


class Generate(NamedTuple):
    node: str


class Done(NamedTuple):
    record: KeyRecord


class Refuse(NamedTuple):
    code: ErrorCode
    message: str


Step = Reserve | Generate | Done | Refuse


def next_step(record: KeyRecord | None, *, request_id: str, curve: Curve) -> Step:
    """What to do for this creation request given the directory's record of the id."""
    if record is None:
        return Reserve()
    if record.created_by_request != request_id:
        return Refuse(ErrorCode.KEY_EXISTS, f"key {record.key_id} already exists")
    if record.curve != curve:
        return Refuse(
            ErrorCode.CURVE_MISMATCH, f"key {record.key_id} is reserved as {record.curve}"
        )
    if record.status == "pending":
        return Generate(record.nodes[0])
    return Done(record)


def after_failed_generate(*, reserved_now: bool, delivered: bool) -> Literal["release", "keep"]:
    """Release only a reservation made in this attempt whose node never got the request:
    otherwise the node may hold the key, so the reservation must wait for it."""
    return "release" if reserved_now and not delivered else "keep"


async def create(
    directory: KeyDirectory,
    *,
    key_id: str,
    curve: Curve,
    request_id: str,
    owner: str,
    region: str | None,
    choose_node: Callable[[], str],
    generate: Callable[[str], Awaitable[bytes | HsmKey]],
    authorization: CreateKeyAuthorization | None = None,
) -> KeyRecord:
    """Run the protocol to its end: the active record, a LantauError for a refusal, or a
    TransientError to retry later (the reservation kept or released as planned).

    ``generate`` gives the new key's public key, or the node's whole answer (its
    protection and an HD root's xpub go into the record)."""
    reserved_now = False
    for _ in range(3):
        record, revision = await directory.get(key_id, fresh=True)
        step = next_step(record, request_id=request_id, curve=curve)
        if isinstance(step, Refuse):
            raise LantauError(step.code, step.message)
        if isinstance(step, Done):
            return step.record
        if isinstance(step, Reserve):
            pending = KeyRecord(
                key_id=key_id,
                curve=curve,
                status="pending",
                region=region,
                owner=owner,
                nodes=[choose_node()],
                created_at_ms=now_ms(),
                created_by_request=request_id,
                authorization=authorization,
            )
            reserved_now = await directory.reserve(pending)
            continue  # re-read: ours, or someone else's reservation
        assert record is not None
        try:
            made = await generate(step.node)
        except TransientError as e:
            plan = after_failed_generate(reserved_now=reserved_now, delivered=e.delivered)
            if plan == "release":
                released = await directory.release(key_id, revision)
                log.warning(
                    "key %s: %s; reservation %s",
                    key_id,
                    e.message,
                    "released" if released else "kept (changed meanwhile)",
                )
            raise
        active = await directory.activate(record, revision, made)
        log.info("key %s (%s) created on %s", key_id, curve, step.node)
        return active
    raise TransientError(ErrorCode.INTERNAL, f"key {key_id} reservation kept changing")
