"""``lantau credentials list | endorse | revoke | enrol-totp``: approvers' second factors.

A security key is proposed by the console after the person registers it there; a TOTP
authenticator by ``enrol-totp``. Either counts only once the policy file's enrolment
quorum has endorsed it (``endorse``, each endorser signing the statement with their own
Ed25519 vote key, never the owner). ``revoke`` (the owner or any member of the enrolment
group) ends it at the next vote. Every request and its outcome is in the audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import nacl.exceptions
import nacl.public
import nacl.signing
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import config as config_mod
from libs import credentials as creds
from libs import totp
from libs.bus import kv
from libs.bus.ask import publish_and_wait
from libs.bus.permissions import OPERATOR, approver_identity
from libs.bus.violations import subscribe_checked
from libs.client import load_signing_key
from libs.clock import now_ms
from libs.policy_store import PolicyStore
from proto import codec
from proto.credentials import (
    CredentialEndorsement,
    CredentialOutcome,
    CredentialRecord,
    CredentialRevocation,
    Revocation,
    TotpEnrolment,
    credential_key,
    revocation_bytes,
    statement_bytes,
    totp_request_bytes,
)
from proto.errors import ErrorCode, LantauError
from proto.subjects import (
    CREDENTIALS_BUCKET,
    credential_event_subject,
    credential_request_subject,
    totp_reply_subject,
)
from services.cli.identity import connect_cli
from services.cli.usage import UsageError

OUTCOME_WAIT_S = 15.0


async def read_records(nc: Client) -> list[CredentialRecord]:
    bucket = await nc.jetstream().key_value(CREDENTIALS_BUCKET)
    return creds.records_from(await kv.values(bucket))


def _policy(cfg: config_mod.Config) -> Any:
    store = PolicyStore(cfg.policy.rules_file)
    store.load()
    return store.current.file


def describe(record: CredentialRecord, judged: creds.Standing) -> str:
    s = record.statement
    where = f" at {s.origin}" if s.kind == "webauthn" else ""
    lines = [
        f"{s.person}/{judged.key}  [{judged.state}]  {s.kind}{where}"
        + (f" ({s.label})" if s.label else ""),
        f"  statement sha256 {record.statement_sha256}",
        f"  endorsed by {', '.join(judged.endorsers) or 'nobody'} "
        f"({len(judged.endorsers)} of {judged.quorum})",
    ]
    if judged.why:
        lines.append(f"  {judged.why}")
    return "\n".join(lines)


def _find(records: list[CredentialRecord], wanted: str) -> CredentialRecord:
    person, _, key = wanted.partition("/")
    found = [
        r
        for r in records
        if r.statement.person == person and credential_key(r.statement.credential_id) == key
    ]
    if not found:
        raise UsageError(f"no credential {wanted} (see `lantau credentials list --all`)")
    return found[0]


async def _connect(cfg: config_mod.Config, args: argparse.Namespace, who: str | None) -> Client:
    identity = approver_identity(who) if who else OPERATOR
    return await connect_cli(
        cfg, identity, seed_file=args.seed_file, config_path=args.config, name="lantau-credentials"
    )


async def send_and_wait(
    nc: Client,
    sender: str,
    person: str,
    message: msgspec.Struct,
    matches: Callable[[CredentialOutcome], bool],
) -> CredentialOutcome | None:
    """Publish a credential request (or a second-factor check) as ``sender`` and wait for
    policy's outcome about ``person`` that ``matches``."""

    def answer(event: object) -> CredentialOutcome | None:
        return event if isinstance(event, CredentialOutcome) and matches(event) else None

    return await publish_and_wait(
        nc,
        credential_request_subject(sender),
        message,
        listen=credential_event_subject(person),
        answer=answer,
        timeout_s=OUTCOME_WAIT_S,
    )


def _report(outcome: CredentialOutcome | None) -> int:
    if outcome is None:
        print(f"lantau: policy did not answer within {OUTCOME_WAIT_S:.0f} s", file=sys.stderr)
        return 1
    if not outcome.accepted:
        print(f"lantau: refused: {outcome.code}: {outcome.message}", file=sys.stderr)
        return 1
    print(f"{outcome.person}/{outcome.credential}: {outcome.message} [{outcome.status}]")
    return 0


async def _list(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    policy = _policy(cfg)
    nc = await _connect(cfg, args, args.approver)
    try:
        records = await read_records(nc)
    finally:
        await nc.close()
    shown = 0
    for record in sorted(records, key=lambda r: (r.statement.person, r.statement.proposed_at_ms)):
        judged = creds.standing(record, policy)
        if args.all or judged.state in ("active", "proposed"):
            print(describe(record, judged))
            shown += 1
    if not shown:
        print("no credentials")
    return 0


def endorsement(
    record: CredentialRecord, endorser: str, key: nacl.signing.SigningKey
) -> CredentialEndorsement:
    """An endorsement of exactly this statement, signed with the endorser's vote key."""
    s = record.statement
    return CredentialEndorsement(
        person=s.person,
        credential=credential_key(s.credential_id),
        statement_sha256=record.statement_sha256,
        endorser=endorser,
        signature=bytes(key.sign(statement_bytes(s)).signature),
        created_at_ms=now_ms(),
    )


async def _endorse(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    key = load_signing_key(args.key_file)
    nc = await _connect(cfg, args, args.approver)
    try:
        record = _find(await read_records(nc), args.credential)
        if args.statement_sha256 and args.statement_sha256 != record.statement_sha256:
            raise UsageError(
                "the proposed statement is not the one you checked "
                f"(proposed: {record.statement_sha256})"
            )
        message = endorsement(record, args.approver, key)
        outcome = await send_and_wait(
            nc,
            args.approver,
            message.person,
            message,
            lambda o: o.by == args.approver and o.credential == message.credential,
        )
    finally:
        await nc.close()
    return _report(outcome)


def revocation(
    person: str, credential: str, by: str, reason: str, key: nacl.signing.SigningKey
) -> CredentialRevocation:
    unsigned = Revocation(by=by, reason=reason, at_ms=now_ms())
    signature = key.sign(revocation_bytes(person, credential, unsigned)).signature
    return CredentialRevocation(
        person=person,
        credential=credential,
        revocation=msgspec.structs.replace(unsigned, signature=bytes(signature)),
    )


async def _revoke(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    key = load_signing_key(args.key_file)
    person, _, credential = args.credential.partition("/")
    if not credential:
        raise UsageError("name the credential as PERSON/KEY")
    message = revocation(person, credential, args.approver, args.reason, key)
    nc = await _connect(cfg, args, args.approver)
    try:
        outcome = await send_and_wait(
            nc,
            args.approver,
            person,
            message,
            lambda o: o.by == args.approver and o.credential == credential,
        )
    finally:
        await nc.close()
    return _report(outcome)


async def enrol_totp(
    nc: Client, person: str, key: nacl.signing.SigningKey, label: str = ""
) -> tuple[str, bytearray]:
    """Ask policy for a TOTP authenticator: (credential key, secret). The secret comes
    once, sealed to a key made here for this request and dropped after it."""
    reply_key = nacl.public.PrivateKey.generate()
    unsigned = TotpEnrolment(
        proposal_id=uuid.uuid4().hex,
        person=person,
        label=label,
        reply_key=bytes(reply_key.public_key),
        created_at_ms=now_ms(),
    )
    request = msgspec.structs.replace(
        unsigned, signature=bytes(key.sign(totp_request_bytes(unsigned)).signature)
    )
    delivered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_delivery(msg: Msg) -> None:
        if not delivered.done():
            delivered.set_result(msg.data)

    sub = await subscribe_checked(nc, totp_reply_subject(person), cb=on_delivery)
    try:
        outcome = await send_and_wait(
            nc, person, person, request, lambda o: o.proposal_id == request.proposal_id
        )
        if outcome is None or not outcome.accepted:
            why = outcome.message if outcome else "policy did not answer"
            raise LantauError(
                ErrorCode(outcome.code) if outcome and outcome.code else ErrorCode.RESULT_TIMEOUT,
                f"TOTP enrolment refused: {why}",
            )
        data = await asyncio.wait_for(delivered, timeout=OUTCOME_WAIT_S)
    finally:
        await sub.unsubscribe()
    delivery = codec.TOTP_DELIVERY.decode(data)
    try:
        secret = bytearray(nacl.public.SealedBox(reply_key).decrypt(delivery.boxed_secret))
    except nacl.exceptions.CryptoError:
        raise LantauError(
            ErrorCode.SECOND_FACTOR_INVALID, "the TOTP secret was not sealed for this command"
        ) from None
    return delivery.credential, secret


async def _enrol_totp(args: argparse.Namespace) -> int:
    cfg = config_mod.load_for_cli(args.config)
    key = load_signing_key(args.key_file)
    nc = await _connect(cfg, args, args.approver)
    try:
        credential, secret = await enrol_totp(nc, args.approver, key, args.label)
    finally:
        await nc.close()
    try:
        # The one time the secret is shown: to the person, on their terminal.
        print("Add this to your authenticator app now; it is not shown again:")
        print(f"  {totp.provisioning_uri(secret, args.approver)}")
    finally:
        for i in range(len(secret)):
            secret[i] = 0
    print(
        f"TOTP authenticator {args.approver}/{credential} proposed. It counts once the "
        "enrolment group endorses it: lantau credentials endorse "
        f"{args.approver}/{credential} --approver NAME --key-file NAME.key"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("credentials", help="approvers' security keys and TOTP authenticators")
    actions = top.add_subparsers(dest="credentials", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed-file", help="your NATS identity seed (default: beside the config)")
        p.add_argument("--config")

    p = actions.add_parser("list", help="enrolled and proposed second factors")
    p.add_argument("--all", action="store_true", help="also revoked and invalid ones")
    p.add_argument("--approver", help="as this approver (default: the operator)")
    common(p)
    p.set_defaults(fn=lambda a: asyncio.run(_list(a)))

    p = actions.add_parser("endorse", help="endorse a proposed credential (enrolment quorum)")
    p.add_argument("credential", help="PERSON/KEY as `credentials list` shows it")
    p.add_argument("--approver", required=True, help="you: a member of the enrolment group")
    p.add_argument("--key-file", required=True, help="your Ed25519 vote key")
    p.add_argument("--statement-sha256", help="refuse unless the statement is exactly this")
    common(p)
    p.set_defaults(fn=lambda a: asyncio.run(_endorse(a)))

    p = actions.add_parser("revoke", help="revoke a credential at once (lost or stolen)")
    p.add_argument("credential", help="PERSON/KEY")
    p.add_argument("--approver", required=True, help="you: its owner or an enrolment officer")
    p.add_argument("--key-file", required=True)
    p.add_argument("--reason", default="", help="why (kept in the record)")
    common(p)
    p.set_defaults(fn=lambda a: asyncio.run(_revoke(a)))

    p = actions.add_parser("enrol-totp", help="get a TOTP authenticator (for lantau approve)")
    p.add_argument("--approver", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--label", default="", help="a name for it (your phone, say)")
    common(p)
    p.set_defaults(fn=lambda a: asyncio.run(_enrol_totp(a)))
