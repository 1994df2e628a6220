"""Which second factors count: every reader (policy, the console, each hsm-node) recounts
a credential's endorsements against the policy file instead of trusting the record's
status, so whoever can write the ``lantau_credentials`` bucket still cannot enrol a key.
Pure, no I/O.

A credential counts when its record is intact (the statement's digest), it belongs to an
approver of the policy file, at least ``enrol_quorum`` distinct members of ``enrol_group``
other than its owner signed the statement with their vote keys, and nobody revoked it.
Any revocation on the record ends it (even one whose signature no longer verifies: a
revocation can only take power away, so it fails closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from libs.policy_file import PolicyFile
from proto import codec
from proto.approvals import ApprovalVote, signing_bytes, vote_challenge
from proto.credentials import (
    CredentialKind,
    CredentialRecord,
    CredentialStatement,
    Endorsement,
    Revocation,
    credential_key,
    revocation_bytes,
    statement_bytes,
    statement_sha256,
)
from proto.errors import ErrorCode, LantauError

# ``<person>.<credential>.used`` keeps the last TOTP step policy accepted for it.
USED_SUFFIX = ".used"


def signed_by(public_hex: str, data: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(bytes.fromhex(public_hex)).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def records_from(values: Iterable[tuple[str, bytes, int]]) -> list[CredentialRecord]:
    """The records in a listing of the bucket; an entry that does not decode counts for
    nothing (readers recount every record's quorum anyway)."""
    found = []
    for key, value, _ in values:
        if key.endswith(USED_SUFFIX):
            continue
        try:
            found.append(codec.CREDENTIAL_RECORD.decode(value))
        except LantauError:
            continue
    return found


def endorsement_problem(
    statement: CredentialStatement, endorsement: Endorsement, policy: PolicyFile
) -> str:
    """Why this endorsement does not count ("" when it does)."""
    sf = policy.second_factor
    if sf.enrol_group is None or sf.enrol_group not in policy.groups:
        return "the policy file names no enrolment group ([second_factor] enrol_group)"
    if endorsement.endorser == statement.person:
        return f"{statement.person} cannot endorse their own credential"
    if endorsement.endorser not in policy.groups[sf.enrol_group].approvers:
        return f"{endorsement.endorser} is not in enrolment group {sf.enrol_group!r}"
    approver = policy.approvers.get(endorsement.endorser)
    if approver is None or not signed_by(
        approver.public_key, statement_bytes(statement), endorsement.signature
    ):
        return f"the endorsement is not signed by {endorsement.endorser}'s vote key"
    return ""


def endorsers(record: CredentialRecord, policy: PolicyFile) -> list[str]:
    """Distinct members of the enrolment group whose endorsement verifies, in order."""
    seen: list[str] = []
    for e in record.endorsements:
        if e.endorser not in seen and not endorsement_problem(record.statement, e, policy):
            seen.append(e.endorser)
    return seen


def revocation_problem(
    person: str, credential: str, revocation: Revocation, policy: PolicyFile
) -> str:
    """Why this revocation may not be made ("" when it may): the owner, or any member of
    the enrolment group, signs it with their vote key."""
    group = policy.second_factor.enrol_group
    members = policy.groups[group].approvers if group in policy.groups else []
    if revocation.by != person and revocation.by not in members:
        return f"{revocation.by} may not revoke {person}'s credentials"
    approver = policy.approvers.get(revocation.by)
    if approver is None or not signed_by(
        approver.public_key, revocation_bytes(person, credential, revocation), revocation.signature
    ):
        return f"the revocation is not signed by {revocation.by}'s vote key"
    return ""


@dataclass(frozen=True)
class Standing:
    """A credential as a reader judges it."""

    record: CredentialRecord
    endorsers: tuple[str, ...]
    quorum: int
    # "active", "proposed" (not enough endorsements yet), "revoked", or "invalid".
    state: str
    why: str = ""

    @property
    def key(self) -> str:
        return credential_key(self.record.statement.credential_id)


def standing(record: CredentialRecord, policy: PolicyFile) -> Standing:
    s = record.statement
    quorum = policy.second_factor.enrol_quorum
    if record.revocation is not None:
        r = record.revocation
        return Standing(record, (), quorum, "revoked", f"revoked by {r.by}: {r.reason}")
    if statement_sha256(s) != record.statement_sha256:
        return Standing(record, (), quorum, "invalid", "the record does not match its digest")
    if s.person not in policy.approvers:
        return Standing(record, (), quorum, "invalid", f"{s.person} is not an approver")
    names = tuple(endorsers(record, policy))
    if len(names) < quorum:
        group = policy.second_factor.enrol_group
        why = f"endorsed by {len(names)} of the {quorum} needed from group {group!r}"
        return Standing(record, names, quorum, "proposed", why)
    return Standing(record, names, quorum, "active")


def active(
    records: Iterable[CredentialRecord], policy: PolicyFile, kind: CredentialKind | None = None
) -> dict[str, tuple[CredentialStatement, ...]]:
    """Each person's credentials that count now (of ``kind`` when given)."""
    found: dict[str, list[CredentialStatement]] = {}
    for record in records:
        if kind is not None and record.statement.kind != kind:
            continue
        if standing(record, policy).state == "active":
            found.setdefault(record.statement.person, []).append(record.statement)
    return {person: tuple(statements) for person, statements in found.items()}


def credential_for(
    records: Iterable[CredentialRecord], person: str, credential_id: bytes, policy: PolicyFile
) -> CredentialStatement:
    """The person's credential with this id, if it counts; else a refusal in words."""
    wanted = credential_key(credential_id)
    for record in records:
        s = record.statement
        if credential_key(s.credential_id) != wanted or s.credential_id != credential_id:
            continue
        if s.person != person:
            raise LantauError(
                ErrorCode.UNKNOWN_CREDENTIAL,
                f"this security key is registered to {s.person}, not {person}",
            )
        judged = standing(record, policy)
        if judged.state == "revoked":
            raise LantauError(
                ErrorCode.CREDENTIAL_REVOKED, f"this security key was {judged.why.rstrip(': ')}"
            )
        if judged.state != "active":
            raise LantauError(
                ErrorCode.UNKNOWN_CREDENTIAL, f"this security key is not enrolled: {judged.why}"
            )
        return s
    raise LantauError(
        ErrorCode.UNKNOWN_CREDENTIAL, f"this security key is not one of {person}'s enrolled keys"
    )


def vote_signer_problem(
    vote: ApprovalVote,
    approver_key: str | None,
    credentials: Mapping[str, tuple[CredentialStatement, ...]],
    *,
    second_factor_required: bool,
) -> str:
    """Why this vote is not signed as it must be ("" when it is): by an active security key
    of the approver (its assertion over the vote's digest), or by the approver's Ed25519
    key, with a TOTP code when second factors are required (policy checks the code)."""
    from libs.webauthn_check import verify_assertion

    if vote.assertion is not None:
        for credential in credentials.get(vote.approver, ()):
            if credential.credential_id == vote.assertion.credential_id:
                try:
                    verify_assertion(vote.assertion, credential, vote_challenge(vote))
                except LantauError as e:
                    return e.message
                return ""
        return f"the security key is not an enrolled key of {vote.approver}"
    if approver_key is None or not signed_by(approver_key, signing_bytes(vote), vote.signature):
        return f"the vote is not signed by {vote.approver}'s vote key"
    if second_factor_required and not vote.totp_code:
        return "a second factor is required: a security key, or a TOTP code with the vote"
    return ""


class Registry:
    """A reader's view of the credentials bucket (the hsm-node's, refreshed every second):
    which security keys count, recomputed only when the records or the policy change. A
    key once seen revoked stays revoked in this process, whatever the bucket says later
    (a writer that rolls a record back cannot bring a revoked key back here)."""

    def __init__(self) -> None:
        self._records: tuple[CredentialRecord, ...] = ()
        self._revoked: set[str] = set()
        self._cache: tuple[object, dict[str, tuple[CredentialStatement, ...]]] | None = None

    def update(self, records: Iterable[CredentialRecord]) -> None:
        records = tuple(records)
        for r in records:
            if r.revocation is not None:
                self._revoked.add(credential_key(r.statement.credential_id))
        kept = tuple(
            r for r in records if credential_key(r.statement.credential_id) not in self._revoked
        )
        if kept != self._records:
            self._records = kept
            self._cache = None

    def active(self, policy: PolicyFile) -> dict[str, tuple[CredentialStatement, ...]]:
        """Each approver's security keys that count under ``policy``."""
        if self._cache is None or self._cache[0] is not policy:
            self._cache = (policy, active(self._records, policy, "webauthn"))
        return self._cache[1]
