"""Second factors as pure logic: the vote's signed bytes and challenge, TOTP against the
RFC 4226 vectors, WebAuthn registrations and assertions (made by devkit's software key,
checked by the ``webauthn`` library), enrolment quorums and revocations, and the
hsm-node's evidence check counting security-key votes. No processes."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import struct

import msgspec
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webauthn import generate_authentication_options, options_to_json
from webauthn.helpers.structs import PublicKeyCredentialDescriptor, UserVerificationRequirement

from devkit import forge
from devkit.authenticator import SoftAuthenticator, b64url
from libs import credentials as creds
from libs import totp
from libs.clock import now_ms
from libs.evidence import Pins, check_sign
from libs.policy_file import parse
from libs.webauthn_check import (
    assertion_from_json,
    registration_from_json,
    verify_assertion,
    verify_registration,
)
from proto import codec
from proto.approvals import ApprovalVote, WebAuthnAssertion, signing_bytes, vote_challenge
from proto.credentials import (
    CredentialEndorsement,
    CredentialRecord,
    CredentialRevocation,
    CredentialStatement,
    Endorsement,
    Revocation,
    credential_key,
    revocation_bytes,
    statement_bytes,
    statement_sha256,
)
from proto.errors import ErrorCode, LantauError
from services.policy import enrolment
from services.policy.approvals import check_signature

ORIGIN = "http://localhost:8080"
RP = "localhost"
KEYS = {n: nacl.signing.SigningKey.generate() for n in ("alice", "bob", "carol", "dave")}


def hexkey(name: str) -> str:
    return KEYS[name].verify_key.encode().hex()


POLICY = parse(
    "\n".join(
        [
            'version = "t"',
            *(f'[approvers.{n}]\npublic_key = "{hexkey(n)}"' for n in KEYS),
            '[groups.treasury]\napprovers = ["alice", "bob", "carol"]\napproves_for = ["desk"]',
            '[groups.ops]\napprovers = ["dave"]\napproves_for = ["other"]',
            '[second_factor]\nenrol_group = "treasury"\nenrol_quorum = 2',
        ]
    )
)
FILE = POLICY.file


def refused(code: ErrorCode, fn, *args, **kw) -> str:
    with pytest.raises(LantauError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value.message


# -- the vote's bytes ---------------------------------------------------------------------


def vote(**changes: object) -> ApprovalVote:
    base = ApprovalVote(
        vote_id="v1",
        requester="desk",
        request_id="r1",
        approver="alice",
        vote="approve",
        payload_sha256="ab" * 32,
        view_sha256="cd" * 32,
        created_at_ms=1_000,
        expires_at_ms=61_000,
    )
    return msgspec.structs.replace(base, **changes)


def test_votes_without_a_second_factor_sign_the_same_bytes_as_before():
    """The format of every vote signed before assertions and TOTP codes existed, spelled
    out with the standard library's JSON encoder."""
    old = {
        "type": "approval_vote",
        "v": 1,
        "vote_id": "v1",
        "requester": "desk",
        "request_id": "r1",
        "approver": "alice",
        "vote": "approve",
        "payload_sha256": "ab" * 32,
        "view_sha256": "cd" * 32,
        "created_at_ms": 1_000,
        "expires_at_ms": 61_000,
        "signature": "",
    }
    expected = (
        b"lantau/approval/v1\n" + json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    )
    assert signing_bytes(vote(signature=b"x" * 64)) == expected


def test_the_challenge_binds_every_field_but_the_signatures():
    base = vote()
    challenge = vote_challenge(base)
    assert challenge == hashlib.sha256(signing_bytes(base)).digest()
    assertion = WebAuthnAssertion(
        credential_id=b"c", authenticator_data=bytes(37), client_data_json=b"{}", signature=b"s"
    )
    assert vote_challenge(msgspec.structs.replace(base, assertion=assertion)) == challenge
    assert vote_challenge(msgspec.structs.replace(base, signature=b"s")) == challenge
    for change in (
        {"request_id": "r2"},
        {"requester": "other"},
        {"approver": "bob"},
        {"vote": "reject"},
        {"payload_sha256": "ef" * 32},
        {"view_sha256": "00" * 32},
        {"expires_at_ms": 62_000},
        {"vote_id": "v2"},
        {"totp_code": "123456"},
    ):
        assert vote_challenge(vote(**change)) != challenge, change


# -- TOTP ------------------------------------------------------------------------------------

RFC4226_SECRET = b"12345678901234567890"
# RFC 4226 appendix D: HOTP values for counters 0..9 (TOTP's counter is time // 30).
RFC4226 = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583"]


def hotp(secret: bytes, counter: int) -> str:
    """RFC 4226 written out here, independently of pyotp."""
    mac = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return f"{(int.from_bytes(mac[offset : offset + 4], 'big') & 0x7FFFFFFF) % 10**6:06d}"


def test_totp_codes_are_the_rfc_4226_values_of_the_time_step():
    assert [hotp(RFC4226_SECRET, c) for c in range(8)] == RFC4226
    for step, code in enumerate(RFC4226[1:], start=1):
        assert totp.accept(RFC4226_SECRET, code, step * 30 + 7, 0) == step


def test_a_totp_code_is_good_once_and_only_near_its_time():
    assert totp.accept(RFC4226_SECRET, RFC4226[5], 5 * 30 + 31, 0) == 5  # one step late
    refused(ErrorCode.SECOND_FACTOR_INVALID, totp.accept, RFC4226_SECRET, RFC4226[5], 150, 5)
    refused(ErrorCode.SECOND_FACTOR_INVALID, totp.accept, RFC4226_SECRET, RFC4226[2], 150, 0)
    refused(ErrorCode.SECOND_FACTOR_INVALID, totp.accept, RFC4226_SECRET, "000000", 150, 0)
    uri = totp.provisioning_uri(RFC4226_SECRET, "alice")
    assert uri.startswith("otpauth://totp/Lantau:alice?") and "issuer=Lantau" in uri


# -- WebAuthn --------------------------------------------------------------------------------


def registered(soft: SoftAuthenticator, person: str = "alice") -> CredentialStatement:
    challenge = secrets.token_bytes(32)
    options = {"rp": {"id": RP}, "challenge": b64url(challenge)}
    made = verify_registration(soft.register(options), challenge, RP, ORIGIN)
    return CredentialStatement(
        person=person,
        kind="webauthn",
        credential_id=made.credential_id,
        public_key=made.public_key,
        rp_id=RP,
        origin=ORIGIN,
        proposed_at_ms=now_ms(),
        expires_at_ms=now_ms() + 3_600_000,
    )


def asserted(
    soft: SoftAuthenticator, statement: CredentialStatement, challenge: bytes
) -> WebAuthnAssertion:
    options = json.loads(
        options_to_json(
            generate_authentication_options(
                rp_id=RP,
                challenge=challenge,
                allow_credentials=[PublicKeyCredentialDescriptor(id=statement.credential_id)],
                user_verification=UserVerificationRequirement.REQUIRED,
            )
        )
    )
    return assertion_from_json(soft.assertion(options))


def test_an_assertion_verifies_only_for_its_challenge_origin_and_verified_user():
    soft = SoftAuthenticator(origin=ORIGIN)
    statement = registered(soft)
    challenge = vote_challenge(vote())
    good = asserted(soft, statement, challenge)
    verify_assertion(good, statement, challenge)
    why = refused(ErrorCode.ASSERTION_INVALID, verify_assertion, good, statement, b"x" * 32)
    assert "signed something else" in why
    elsewhere = msgspec.structs.replace(statement, origin="https://evil.example")
    refused(ErrorCode.ASSERTION_INVALID, verify_assertion, good, elsewhere, challenge)
    other_rp = msgspec.structs.replace(statement, rp_id="example.com")
    refused(ErrorCode.ASSERTION_INVALID, verify_assertion, good, other_rp, challenge)
    soft.verifies_user = False
    no_pin = asserted(soft, statement, challenge)
    why = refused(ErrorCode.ASSERTION_INVALID, verify_assertion, no_pin, statement, challenge)
    assert "verif" in why
    other = registered(SoftAuthenticator(origin=ORIGIN))
    refused(ErrorCode.ASSERTION_INVALID, verify_assertion, good, other, challenge)
    tampered = msgspec.structs.replace(good, signature=good.signature[:-1] + b"\x00")
    refused(ErrorCode.ASSERTION_INVALID, verify_assertion, tampered, statement, challenge)


def test_a_registration_for_another_challenge_or_origin_is_refused():
    soft = SoftAuthenticator(origin=ORIGIN)
    challenge = secrets.token_bytes(32)
    response = soft.register({"rp": {"id": RP}, "challenge": b64url(challenge)})
    refused(ErrorCode.REGISTRATION_INVALID, verify_registration, response, b"y" * 32, RP, ORIGIN)
    refused(
        ErrorCode.REGISTRATION_INVALID,
        verify_registration,
        response,
        challenge,
        RP,
        "https://evil.example",
    )
    refused(ErrorCode.REGISTRATION_INVALID, registration_from_json, {"id": 1})


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=37, max_size=120), st.binary(max_size=200), st.binary(max_size=80))
def test_hostile_assertion_bytes_get_a_typed_refusal(auth_data, client_data, signature):
    statement = registered(SoftAuthenticator(origin=ORIGIN))
    hostile = WebAuthnAssertion(
        credential_id=statement.credential_id,
        authenticator_data=auth_data,
        client_data_json=client_data,
        signature=signature,
    )
    refused(ErrorCode.ASSERTION_INVALID, verify_assertion, hostile, statement, b"c" * 32)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.text(max_size=8), lambda c: st.dictionaries(st.text(), c)))
def test_hostile_assertion_json_gets_a_typed_refusal(value):
    refused(ErrorCode.ASSERTION_INVALID, assertion_from_json, value)


# -- enrolment ------------------------------------------------------------------------------


def endorse(record: CredentialRecord, endorser: str, *, by_key: str | None = None):
    s = record.statement
    message = CredentialEndorsement(
        person=s.person,
        credential=credential_key(s.credential_id),
        statement_sha256=record.statement_sha256,
        endorser=endorser,
        signature=bytes(KEYS[by_key or endorser].sign(statement_bytes(s)).signature),
        created_at_ms=now_ms(),
    )
    return enrolment.endorse(record, message, FILE, now_ms())


def revoke(record: CredentialRecord, by: str) -> CredentialRecord:
    s = record.statement
    key = credential_key(s.credential_id)
    unsigned = Revocation(by=by, reason="lost", at_ms=now_ms())
    signature = KEYS[by].sign(revocation_bytes(s.person, key, unsigned)).signature
    revocation = msgspec.structs.replace(unsigned, signature=bytes(signature))
    message = CredentialRevocation(person=s.person, credential=key, revocation=revocation)
    return enrolment.revoke(record, message, FILE)


def enrolled(person: str = "alice") -> tuple[SoftAuthenticator, CredentialRecord]:
    soft = SoftAuthenticator(origin=ORIGIN)
    record = enrolment.propose(registered(soft, person), FILE, now_ms())
    others = [n for n in ("alice", "bob", "carol") if n != person][:2]
    for name in others:
        record = endorse(record, name)
    return soft, record


def test_a_key_counts_only_once_two_others_of_the_group_endorse_it():
    soft = SoftAuthenticator(origin=ORIGIN)
    record = enrolment.propose(registered(soft), FILE, now_ms())
    assert creds.standing(record, FILE).state == "proposed"
    why = refused(ErrorCode.ENDORSEMENT_INVALID, endorse, record, "alice")
    assert "own credential" in why
    refused(ErrorCode.ENDORSEMENT_INVALID, endorse, record, "dave")  # not in the group
    refused(ErrorCode.ENDORSEMENT_INVALID, endorse, record, "bob", by_key="carol")
    once = endorse(record, "bob")
    assert endorse(once, "bob") is once  # counted once
    assert creds.standing(once, FILE).state == "proposed"
    twice = endorse(once, "carol")
    judged = creds.standing(twice, FILE)
    assert judged.state == "active" and judged.endorsers == ("bob", "carol")
    assert creds.active([twice], FILE)["alice"] == (twice.statement,)


def test_readers_recount_the_quorum_whatever_the_record_says():
    _, record = enrolled()
    forged = msgspec.structs.replace(
        record,
        endorsements=[Endorsement(endorser="bob", signature=b"\x00" * 64, at_ms=1)] * 2,
        status="active",
    )
    assert creds.standing(forged, FILE).state == "proposed"
    swapped = msgspec.structs.replace(
        record, statement=msgspec.structs.replace(record.statement, origin="https://evil.example")
    )
    assert creds.standing(swapped, FILE).state == "invalid"
    # Re-hashed by a writer: the endorsements no longer cover it.
    digest = statement_sha256(swapped.statement)
    rehashed = msgspec.structs.replace(swapped, statement_sha256=digest)
    assert creds.standing(rehashed, FILE).state == "proposed"


def test_revocation_by_the_owner_or_the_group_ends_a_key_for_good():
    _, record = enrolled()
    refused(ErrorCode.ENDORSEMENT_INVALID, revoke, record, "dave")
    gone = revoke(record, "carol")
    assert creds.standing(gone, FILE).state == "revoked"
    assert "alice" not in creds.active([gone], FILE)
    refused(
        ErrorCode.CREDENTIAL_REVOKED,
        creds.credential_for,
        [gone],
        "alice",
        gone.statement.credential_id,
        FILE,
    )
    assert creds.standing(revoke(record, "alice"), FILE).state == "revoked"
    # A reader that saw the revocation keeps it, even if the record is rolled back.
    registry = creds.Registry()
    registry.update([gone])
    registry.update([record])
    assert registry.active(FILE) == {}


# -- votes: policy and the hsm-node -----------------------------------------------------


def console_vote(soft: SoftAuthenticator, statement: CredentialStatement, v: ApprovalVote):
    return msgspec.structs.replace(v, assertion=asserted(soft, statement, vote_challenge(v)))


def test_policy_checks_the_security_key_of_the_approver_who_voted():
    soft, record = enrolled("alice")
    _, bob_record = enrolled("bob")
    v = console_vote(soft, record.statement, vote())
    check_signature(v, POLICY, [record, bob_record])
    # Alice's assertion under Bob's name.
    as_bob = msgspec.structs.replace(v, approver="bob")
    why = refused(ErrorCode.UNKNOWN_CREDENTIAL, check_signature, as_bob, POLICY, [record])
    assert "registered to alice, not bob" in why
    # Alice's assertion attached to another vote.
    moved = msgspec.structs.replace(v, request_id="r2")
    refused(ErrorCode.ASSERTION_INVALID, check_signature, moved, POLICY, [record])
    why = refused(ErrorCode.CREDENTIAL_REVOKED, check_signature, v, POLICY, [revoke(record, "bob")])
    assert "revoked by bob" in why
    refused(ErrorCode.UNKNOWN_CREDENTIAL, check_signature, v, POLICY, [])


def test_the_hsm_node_counts_security_key_votes_only_for_pinned_keys():
    desk = nacl.signing.SigningKey.generate()
    policy = nacl.signing.SigningKey.generate()
    req = forge.signed_request(desk, "desk", "desk-btc", hashlib.sha256(b"pay").digest())
    soft_a, rec_a = enrolled("alice")
    soft_b, rec_b = enrolled("bob")

    def of(name, soft, record):
        base = forge.vote(KEYS[name], name, req)
        unsigned = msgspec.structs.replace(base, signature=b"")
        return console_vote(soft, record.statement, unsigned)

    a, b = of("alice", soft_a, rec_a), of("bob", soft_b, rec_b)
    auth = forge.authorization(policy, req, b"", group="treasury", quorum=2, votes=[a, b])
    pins = Pins(
        policy=frozenset({policy.verify_key.encode().hex()}),
        requesters={"desk": desk.verify_key.encode().hex()},
        approvers={n: hexkey(n) for n in KEYS},
        groups={"treasury": frozenset({"alice", "bob", "carol"})},
        credentials=creds.active([rec_a, rec_b], FILE),
    )

    def sign(votes, p=pins):
        return check_sign(
            codec.encode(req), auth, votes, key_id="desk-btc", public_key=b"", pins=p,
            now_ms=now_ms(),
        )  # fmt: skip

    assert sign([a, b])
    # Bob's key revoked: the node's registry no longer has it, his vote does not count.
    revoked = dataclasses.replace(pins, credentials=creds.active([rec_a], FILE))
    refused(ErrorCode.APPROVALS_MISSING, sign, [a, b], revoked)
    # Alice's assertion presented as Bob's vote counts for nobody.
    stolen = msgspec.structs.replace(b, assertion=a.assertion)
    refused(ErrorCode.APPROVALS_MISSING, sign, [a, stolen])
    # A key-file vote needs a TOTP code once second factors are required.
    plain = forge.vote(KEYS["bob"], "bob", req)
    auth2 = forge.authorization(policy, req, b"", group="treasury", quorum=2, votes=[a, plain])
    strict = dataclasses.replace(pins, second_factor_required=True)
    assert check_sign(
        codec.encode(req), auth2, [a, plain], key_id="desk-btc", public_key=b"", pins=pins,
        now_ms=now_ms(),
    )  # fmt: skip
    with pytest.raises(LantauError) as e:
        check_sign(
            codec.encode(req), auth2, [a, plain], key_id="desk-btc", public_key=b"", pins=strict,
            now_ms=now_ms(),
        )  # fmt: skip
    assert e.value.code == ErrorCode.APPROVALS_MISSING
