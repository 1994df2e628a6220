"""Second-factor enrolment against the policy file: proposals, endorsements, revocations.
Pure: each function returns the new record or raises a typed refusal.
"""

from __future__ import annotations

import msgspec

from libs.credentials import endorsement_problem, endorsers, revocation_problem, standing
from libs.policy_file import PolicyFile
from proto.credentials import (
    CredentialEndorsement,
    CredentialRecord,
    CredentialRevocation,
    CredentialStatement,
    Endorsement,
    credential_key,
    statement_sha256,
)
from proto.errors import ErrorCode, LantauError


def propose(statement: CredentialStatement, policy: PolicyFile, now_ms: int) -> CredentialRecord:
    """A new record for a credential that waits for its quorum."""
    s = statement
    if s.person not in policy.approvers:
        raise LantauError(ErrorCode.UNKNOWN_APPROVER, f"{s.person!r} is not an approver")
    if policy.second_factor.enrol_group is None:
        raise LantauError(
            ErrorCode.ENDORSEMENT_INVALID,
            "the policy file names no enrolment group ([second_factor] enrol_group)",
        )
    if s.kind == "webauthn" and not (s.public_key and s.rp_id and s.origin):
        raise LantauError(
            ErrorCode.INVALID_FIELD, "a security key needs its public key, rp_id and origin"
        )
    if s.kind == "totp" and not (s.sealed_secret and s.sealed_with):
        raise LantauError(ErrorCode.INVALID_FIELD, "a TOTP credential needs its sealed secret")
    window_ms = policy.second_factor.proposal_window_s * 1000
    if not now_ms - 60_000 <= s.proposed_at_ms <= now_ms + 60_000:
        raise LantauError(ErrorCode.INVALID_FIELD, "the proposal is not dated now")
    if not s.proposed_at_ms < s.expires_at_ms <= s.proposed_at_ms + window_ms:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"a proposal waits at most {policy.second_factor.proposal_window_s} s for endorsers",
        )
    return CredentialRecord(statement=s, statement_sha256=statement_sha256(s))


def endorse(
    record: CredentialRecord, e: CredentialEndorsement, policy: PolicyFile, now_ms: int
) -> CredentialRecord:
    """The record with this endorsement counted (the same record if it already was)."""
    s = record.statement
    if record.revocation is not None:
        raise LantauError(ErrorCode.CREDENTIAL_REVOKED, "this credential was revoked")
    if e.statement_sha256 != record.statement_sha256:
        raise LantauError(
            ErrorCode.ENDORSEMENT_INVALID,
            "the endorsement is for another statement than the one proposed",
        )
    if standing(record, policy).state == "active":
        if any(x.endorser == e.endorser for x in record.endorsements):
            return record
    elif now_ms >= s.expires_at_ms:
        raise LantauError(ErrorCode.ENDORSEMENT_INVALID, "the proposal lapsed before its quorum")
    endorsement = Endorsement(endorser=e.endorser, signature=e.signature, at_ms=now_ms)
    problem = endorsement_problem(s, endorsement, policy)
    if problem:
        raise LantauError(ErrorCode.ENDORSEMENT_INVALID, problem)
    if e.endorser in endorsers(record, policy):
        return record
    updated = msgspec.structs.replace(record, endorsements=[*record.endorsements, endorsement])
    if standing(updated, policy).state == "active":
        updated = msgspec.structs.replace(updated, status="active")
    return updated


def revoke(
    record: CredentialRecord, r: CredentialRevocation, policy: PolicyFile
) -> CredentialRecord:
    """The record, revoked for good (the same record if it already was)."""
    if record.revocation is not None:
        return record
    key = credential_key(record.statement.credential_id)
    if (r.person, r.credential) != (record.statement.person, key):
        raise LantauError(ErrorCode.INVALID_FIELD, "the revocation names another credential")
    problem = revocation_problem(r.person, r.credential, r.revocation, policy)
    if problem:
        raise LantauError(ErrorCode.ENDORSEMENT_INVALID, problem)
    return msgspec.structs.replace(record, revocation=r.revocation, status="revoked")
