"""Policy's side of second factors: the ``lantau_credentials`` bucket (enrolment by quorum,
revocation), the check of every vote's signer, and TOTP secrets, which exist only sealed
under an AES-256 key inside policy's own token (libs/keytypes/sealed.py).

A TOTP secret is drawn from the token's random generator, sealed there (AES-GCM bound to
the person and credential), and sent once to the command that asked, in a sealed box to
its one-time key, on a core NATS subject no stream keeps. It is opened in the token's
worker thread only to check a code, and the plaintext copy is wiped at once. It is never
logged: the log lines here name people and credential fingerprints, never codes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import nacl.public
from nats.js.kv import KeyValue

from libs import credentials as creds
from libs import totp
from libs.bus import kv
from libs.bus.permissions import OPERATOR
from libs.bus.publish import publish
from libs.clock import now_ms
from libs.credentials import records_from
from libs.hsm.authority import AuthorityKey
from libs.keytypes import sealed
from libs.policy_file import Policy
from libs.service import Runtime
from proto import codec
from proto.approvals import ApprovalVote
from proto.credentials import (
    CredentialEndorsement,
    CredentialOutcome,
    CredentialProposal,
    CredentialRecord,
    CredentialRequest,
    CredentialRevocation,
    CredentialStatement,
    SecondFactorCheck,
    TotpDelivery,
    TotpEnrolment,
    credential_key,
    record_key,
    totp_request_bytes,
)
from proto.errors import ErrorCode, LantauError, TransientError
from proto.subjects import credential_event_subject, totp_reply_subject
from services.policy import enrolment
from services.policy.approvals import check_signature

log = logging.getLogger("lantau.policy")

SEALING_KEY_LABEL = "lantau-second-factor-seal-1"
_CAS_ATTEMPTS = 20
# Wrong TOTP codes a person may give in a window before every code is refused for the
# rest of it: a six-digit code must not be guessable by asking policy a million times.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0


def sender_problem(message: CredentialRequest, sender: str) -> str:
    """Each credential request comes from the identity it names (proposals carry no power
    and may come from the console; a ceremony's check from the operator's command)."""
    if isinstance(message, SecondFactorCheck):
        if sender not in (OPERATOR, message.person):
            return f"only the operator's ceremonies or {message.person} may check their codes"
        return ""
    named = {
        TotpEnrolment: lambda m: m.person,
        CredentialEndorsement: lambda m: m.endorser,
        CredentialRevocation: lambda m: m.revocation.by,
    }.get(type(message))
    if named is not None and named(message) != sender:
        return f"{named(message)!r} did not send this: it came from {sender!r}"
    return ""


class SecondFactors:
    def __init__(self, rt: Runtime, bucket: KeyValue, authority: AuthorityKey) -> None:
        self.rt = rt
        self.kv = bucket
        self.authority = authority
        # Per person: when their last wrong codes came (this replica's memory).
        self._failures: dict[str, list[float]] = {}

    async def records(self) -> list[CredentialRecord]:
        """Every record, read now: a revocation counts from the next vote on."""
        return records_from(await kv.values(self.kv))

    # -- votes --------------------------------------------------------------------

    async def check_vote(self, vote: ApprovalVote, policy: Policy) -> None:
        """The vote's signer: a security key that counts, or the Ed25519 key file with a
        TOTP code when the policy requires a second factor (or the vote carries one)."""
        records = await self.records()
        check_signature(vote, policy, records)
        if vote.assertion is None and (policy.file.second_factor.required or vote.totp_code):
            await self._check_totp(vote.approver, vote.totp_code, records, policy)

    async def _check_totp(
        self, person: str, code: str, records: list[CredentialRecord], policy: Policy
    ) -> None:
        mine = creds.active(records, policy.file, "totp").get(person, ())
        if not mine:
            raise LantauError(
                ErrorCode.SECOND_FACTOR_REQUIRED,
                f"{person} has no enrolled TOTP authenticator: approve in the console with "
                "a security key, or enrol one (lantau credentials enrol-totp)",
            )
        if not code:
            raise LantauError(
                ErrorCode.SECOND_FACTOR_REQUIRED, "a TOTP code must come with this vote"
            )
        now = time.monotonic()
        recent = [t for t in self._failures.get(person, []) if now - t < FAILURE_WINDOW_S]
        self._failures[person] = recent
        if len(recent) >= MAX_FAILURES:
            raise LantauError(
                ErrorCode.SECOND_FACTOR_INVALID,
                f"too many wrong TOTP codes for {person}: try again in a few minutes",
            )
        try:
            await self._accept_any(person, code, mine)
        except LantauError as e:
            if e.code == ErrorCode.SECOND_FACTOR_INVALID:
                self._failures[person].append(now)
            raise

    async def _accept_any(
        self, person: str, code: str, mine: tuple[CredentialStatement, ...]
    ) -> None:
        for statement in mine:
            key = credential_key(statement.credential_id) + creds.USED_SUFFIX
            used_key = record_key(person, key)
            raw, revision = await kv.read(self.kv, used_key)
            last = int(raw.decode()) if raw else 0
            try:
                step = await self._accept(statement, code, last)
            except LantauError as e:
                if e.code == ErrorCode.SECOND_FACTOR_INVALID and len(mine) > 1:
                    continue
                raise
            if await kv.write(self.kv, used_key, str(step).encode(), revision) is None:
                raise LantauError(
                    ErrorCode.SECOND_FACTOR_INVALID, "this TOTP code was already used"
                )
            return
        raise LantauError(ErrorCode.SECOND_FACTOR_INVALID, "the TOTP code is wrong or too old")

    async def _accept(self, statement: CredentialStatement, code: str, last: int) -> int:
        aad = _aad(statement.person, statement.credential_id)

        def check(session: Any) -> int:
            key = sealed.find_sealing_key(session, statement.sealed_with)
            secret = sealed.unseal(key, statement.sealed_secret, aad)
            try:
                return totp.accept(secret, code, time.time(), last)
            finally:
                sealed.wipe(secret)

        return await self._in_token(check)

    async def _in_token(self, fn: Any) -> Any:
        run = getattr(self.authority, "in_token", None)
        if run is None:
            raise LantauError(
                ErrorCode.SECOND_FACTOR_INVALID,
                "TOTP secrets are sealed under an HSM key: policy's authority must be a token",
            )
        return await run(fn)

    # -- enrolment ------------------------------------------------------------------

    async def handle(self, message: CredentialRequest, policy: Policy) -> None:
        now = now_ms()
        if isinstance(message, CredentialProposal):
            record = enrolment.propose(message.statement, policy.file, now)
            await self._create(record, "proposed", "console", message.proposal_id)
        elif isinstance(message, TotpEnrolment):
            await self._enrol_totp(message, policy, now)
        elif isinstance(message, SecondFactorCheck):
            await self._check_totp(message.person, message.totp_code, await self.records(), policy)
            log.info("second factor of %s accepted for %s", message.person, message.purpose)
            outcome = CredentialOutcome(
                person=message.person,
                action="second_factor",
                by=message.person,
                accepted=True,
                message=f"second factor of {message.person} accepted for {message.purpose}",
                proposal_id=message.check_id,
                at_ms=now,
            )
            await publish(self.rt.js, credential_event_subject(message.person), outcome)
        elif isinstance(message, CredentialEndorsement):
            await self._change(
                message.person,
                message.credential,
                lambda r: enrolment.endorse(r, message, policy.file, now),
                "endorsed",
                message.endorser,
                policy,
            )
        else:
            await self._change(
                message.person,
                message.credential,
                lambda r: enrolment.revoke(r, message, policy.file),
                "revoked",
                message.revocation.by,
                policy,
            )

    async def _enrol_totp(self, request: TotpEnrolment, policy: Policy, now: int) -> None:
        approver = policy.file.approvers.get(request.person)
        if approver is None:
            raise LantauError(ErrorCode.UNKNOWN_APPROVER, f"{request.person!r} is not an approver")
        if not creds.signed_by(approver.public_key, totp_request_bytes(request), request.signature):
            raise LantauError(
                ErrorCode.BAD_SIGNATURE, f"the request is not signed by {request.person}'s vote key"
            )
        # One credential id per request: a redelivery finds the record made the first time.
        credential_id = hashlib.sha256(
            f"totp:{request.person}:{request.proposal_id}".encode()
        ).digest()[:16]
        aad = _aad(request.person, credential_id)
        box = nacl.public.SealedBox(nacl.public.PublicKey(request.reply_key))

        def make(session: Any) -> tuple[bytes, bytes]:
            key = sealed.ensure_sealing_key(session, SEALING_KEY_LABEL)
            with sealed.fresh_secret(session, totp.SECRET_BYTES) as secret:
                return sealed.seal(key, secret, aad), bytes(box.encrypt(bytes(secret)))

        sealed_secret, boxed = await self._in_token(make)
        window = policy.file.second_factor.proposal_window_s * 1000
        statement = CredentialStatement(
            person=request.person,
            kind="totp",
            credential_id=credential_id,
            sealed_secret=sealed_secret,
            sealed_with=SEALING_KEY_LABEL,
            label=request.label,
            proposed_at_ms=now,
            expires_at_ms=now + window,
        )
        record = enrolment.propose(statement, policy.file, now)
        if await self._create(record, "proposed", request.person, request.proposal_id):
            delivery = TotpDelivery(
                person=request.person,
                credential=credential_key(credential_id),
                proposal_id=request.proposal_id,
                boxed_secret=boxed,
            )
            await self.rt.nc.publish(totp_reply_subject(request.person), codec.encode(delivery))

    async def _create(
        self, record: CredentialRecord, action: str, by: str, proposal_id: str
    ) -> bool:
        s = record.statement
        key = record_key(s.person, credential_key(s.credential_id))
        if await kv.write(self.kv, key, codec.encode(record), 0) is None:
            existing, _ = await kv.read(self.kv, key)
            if existing is None or codec.CREDENTIAL_RECORD.decode(existing).statement != s:
                raise LantauError(
                    ErrorCode.INVALID_FIELD, "another credential with this id is already proposed"
                )
            return False  # a redelivery: already proposed
        log.info(
            "%s credential %s of %s proposed; waiting for endorsements",
            s.kind,
            credential_key(s.credential_id)[:12],
            s.person,
        )
        await self._announce(record, action, by, "proposed: waiting for endorsements", proposal_id)
        return True

    async def _change(
        self, person: str, credential: str, change: Any, action: str, by: str, policy: Policy
    ) -> None:
        key = record_key(person, credential)
        for _ in range(_CAS_ATTEMPTS):
            data, revision = await kv.read(self.kv, key)
            if data is None:
                raise LantauError(
                    ErrorCode.UNKNOWN_CREDENTIAL, f"{person} has no credential {credential[:12]}..."
                )
            record = codec.CREDENTIAL_RECORD.decode(data)
            updated = change(record)
            if updated is record:
                return  # already counted (a redelivery, or a second revocation)
            if await kv.write(self.kv, key, codec.encode(updated), revision) is not None:
                break
        else:
            raise TransientError(ErrorCode.INTERNAL, "credential record kept changing; retrying")
        judged = creds.standing(updated, policy.file)
        text = {
            "active": f"enrolled: endorsed by {', '.join(judged.endorsers)}",
            "proposed": judged.why,
            "revoked": f"revoked by {by}: takes effect on the next vote",
        }.get(judged.state, judged.why)
        log.info("credential %s of %s %s by %s (%s)", credential[:12], person, action, by, text)
        await self._announce(updated, action, by, text)

    async def refused(self, message: CredentialRequest, error: LantauError) -> None:
        person, credential, by = _names(message)
        log.warning("credential request by %s refused: %s", by, error.message)
        outcome = CredentialOutcome(
            person=person,
            credential=credential,
            action=type(message).__name__,
            by=by,
            accepted=False,
            code=str(error.code),
            message=error.message,
            proposal_id=getattr(message, "proposal_id", getattr(message, "check_id", "")),
            at_ms=now_ms(),
        )
        await publish(self.rt.js, credential_event_subject(person), outcome)

    async def _announce(
        self, record: CredentialRecord, action: str, by: str, message: str, proposal_id: str = ""
    ) -> None:
        s = record.statement
        outcome = CredentialOutcome(
            person=s.person,
            credential=credential_key(s.credential_id),
            action=action,
            by=by,
            accepted=True,
            message=message,
            endorsements=len(record.endorsements),
            status=record.status,
            proposal_id=proposal_id,
            at_ms=now_ms(),
        )
        await publish(self.rt.js, credential_event_subject(s.person), outcome)


def _names(message: CredentialRequest) -> tuple[str, str, str]:
    """(person, credential, sender) a request is about, for its refusal."""
    if isinstance(message, CredentialProposal):
        s = message.statement
        return s.person, credential_key(s.credential_id), "console"
    if isinstance(message, TotpEnrolment | SecondFactorCheck):
        return message.person, "", message.person
    if isinstance(message, CredentialEndorsement):
        return message.person, message.credential, message.endorser
    return message.person, message.credential, message.revocation.by


def _aad(person: str, credential_id: bytes) -> bytes:
    return sealed.material_aad(record_key(person, credential_key(credential_id)), "totp")
