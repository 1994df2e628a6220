"""The hsm-node's evidence check, as pure calls: what it lets the HSM sign, and every
way a compromised process might try to get a signature it was not given."""

from __future__ import annotations

import dataclasses
import hashlib

import coincurve
import msgspec
import nacl.signing
import pytest

from devkit import forge, txs
from libs.clock import now_ms
from libs.evidence import Pins, check_clone, check_create, check_sign
from proto import codec
from proto.authorization import CloneAuthorization, signing_bytes
from proto.errors import ErrorCode, LantauError
from proto.requests import CreateKeyRequest
from proto.requests import signing_bytes as request_bytes

POLICY = nacl.signing.SigningKey.generate()
OLD_POLICY = nacl.signing.SigningKey.generate()
BACKUP = nacl.signing.SigningKey.generate()
DESK = nacl.signing.SigningKey.generate()
ALICE, BOB, MALLORY = (nacl.signing.SigningKey.generate() for _ in range(3))


def hexkey(k: nacl.signing.SigningKey) -> str:
    return k.verify_key.encode().hex()


PINS = Pins(
    policy=frozenset({hexkey(POLICY)}),
    retired_policy=frozenset({hexkey(OLD_POLICY)}),
    backup=frozenset({hexkey(BACKUP)}),
    requesters={"desk": hexkey(DESK), "alice": hexkey(ALICE)},
    approvers={"alice": hexkey(ALICE), "bob": hexkey(BOB), "mallory": hexkey(MALLORY)},
    groups={"treasury": frozenset({"alice", "bob"})},
    regions={"hk-1": "hk", "hk-2": "hk", "sg-1": "sg"},
)
DIGEST = hashlib.sha256(b"pay").digest()


def request(**kw):
    return forge.signed_request(DESK, "desk", "desk-btc", kw.pop("payload", DIGEST), **kw)


def sign(req, auth, votes=(), key_id="desk-btc", pins=PINS, now=None):
    return check_sign(
        codec.encode(req),
        auth,
        list(votes),
        key_id=key_id,
        public_key=b"",
        pins=pins,
        now_ms=now or now_ms(),
    )


def refused(code: ErrorCode, fn, *args, **kw) -> str:
    with pytest.raises(LantauError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value.message


def test_the_authorized_bytes_are_what_gets_signed():
    req = request()
    assert sign(req, forge.authorization(POLICY, req, b"")) == [DIGEST]


def test_an_unpinned_policy_key_authorizes_nothing():
    req = request()
    refused(ErrorCode.EVIDENCE_REFUSED, sign, req, forge.authorization(MALLORY, req, b""))
    # A retired key still proves where old keys live, but authorizes no signature.
    refused(ErrorCode.EVIDENCE_REFUSED, sign, req, forge.authorization(OLD_POLICY, req, b""))


def test_an_edited_authorization_fails_its_signature():
    req = request()
    auth = msgspec.structs.replace(forge.authorization(POLICY, req, b""), rule="edited")
    refused(ErrorCode.EVIDENCE_REFUSED, sign, req, auth)


def test_a_policy_key_alone_cannot_sign_without_the_requester():
    """A compromised policy makes up a request: the requester never signed it."""
    forged = forge.signed_request(MALLORY, "desk", "desk-btc", DIGEST)
    refused(ErrorCode.EVIDENCE_REFUSED, sign, forged, forge.authorization(POLICY, forged, b""))
    unknown = forge.signed_request(MALLORY, "nobody", "desk-btc", DIGEST)
    refused(ErrorCode.EVIDENCE_REFUSED, sign, unknown, forge.authorization(POLICY, unknown, b""))


def test_an_authorization_for_other_bytes_or_another_request_is_refused():
    req, other = request(), request(payload=hashlib.sha256(b"other").digest())
    auth_other = forge.authorization(POLICY, other, b"")
    refused(ErrorCode.AUTHORIZATION_MISMATCH, sign, req, auth_other)
    digests = [hashlib.sha256(b"x").hexdigest()]
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        sign,
        req,
        forge.authorization(POLICY, req, b"", digests=digests),
    )
    wrong_hash = forge.authorization(POLICY, req, b"", request_hash="00" * 32)
    refused(ErrorCode.AUTHORIZATION_MISMATCH, sign, req, wrong_hash)


def test_an_authorization_for_another_key_or_a_platform_key_is_refused():
    req = request()
    auth = forge.authorization(POLICY, req, b"")
    refused(ErrorCode.AUTHORIZATION_MISMATCH, sign, req, auth, key_id="desk-eth")
    platform = forge.signed_request(DESK, "desk", "lantau-audit-checkpoint", DIGEST)
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        sign,
        platform,
        forge.authorization(POLICY, platform, b""),
        key_id="lantau-audit-checkpoint",
    )


def test_a_blind_payload_cannot_pass_for_a_decoded_one():
    req = request()
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        sign,
        req,
        forge.authorization(POLICY, req, b"", blind=False),
    )


def test_a_transaction_view_other_than_the_nodes_own_decoding_is_refused():
    """Approvers vote on a view; a policy (or its key) that showed them another one than
    the transaction's cannot get it signed: the node decodes the transaction itself."""
    public = coincurve.PrivateKey(b"\x01" * 32).public_key.format(compressed=True)
    tx = txs.eth_transfer("0x" + "11" * 20, 10**15)
    req = request(payload=tx, kind="evm_tx")
    ok = forge.authorization(POLICY, req, public)
    assert len(sign_with(req, ok, public)) == 1
    shown = forge.authorization(POLICY, req, public, view_sha256="ab" * 32)
    assert "view" in refused(ErrorCode.AUTHORIZATION_MISMATCH, sign_with, req, shown, public)


def sign_with(req, auth, public_key: bytes):
    return check_sign(
        codec.encode(req),
        auth,
        [],
        key_id="desk-btc",
        public_key=public_key,
        pins=PINS,
        now_ms=now_ms(),
    )


def test_expired_and_future_authorizations_are_refused():
    req = request()
    expired = forge.authorization(POLICY, req, b"", not_after_ms=now_ms() - 1)
    refused(ErrorCode.AUTHORIZATION_EXPIRED, sign, req, expired)
    future = forge.authorization(POLICY, req, b"", issued_at_ms=now_ms() + 10 * 60_000)
    refused(ErrorCode.AUTHORIZATION_EXPIRED, sign, req, future)


def test_approvals_needed_means_m_distinct_pinned_members_for_this_payload():
    req = request()
    a, b = forge.vote(ALICE, "alice", req), forge.vote(BOB, "bob", req)
    ok = forge.authorization(POLICY, req, b"", group="treasury", quorum=2, votes=[a, b])
    assert sign(req, ok, [a, b]) == [DIGEST]
    # Missing, repeated, outside the group, for other content, forged, or the requester.
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a])
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a, a])
    m = forge.vote(MALLORY, "mallory", req)
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a, m])
    other = forge.vote(BOB, "bob", req, payload_sha256="00" * 32)
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a, other])
    forged = forge.vote(MALLORY, "bob", req)
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a, forged])
    rejected = forge.vote(BOB, "bob", req, vote="reject")
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a, rejected])
    unknown_group = forge.authorization(POLICY, req, b"", group="nobody", quorum=1, votes=[a])
    refused(ErrorCode.APPROVALS_MISSING, sign, req, unknown_group, [a])


def test_a_nodes_approval_floor_cannot_be_waived_by_policys_key():
    """The one gap a stolen policy key leaves (a genuine request under a rule that needs
    no approvals) is closed for the keys a node sets a floor for."""
    floored = dataclasses.replace(PINS, floors=((("desk-*",), "treasury", 2),))
    req = request()
    a, b = forge.vote(ALICE, "alice", req), forge.vote(BOB, "bob", req)
    # Policy says none are needed, or too few, or another group's: refused.
    for auth in (
        forge.authorization(POLICY, req, b""),
        forge.authorization(POLICY, req, b"", group="treasury", quorum=1, votes=[a]),
        forge.authorization(POLICY, req, b"", group="ops", quorum=2, votes=[a, b]),
    ):
        message = refused(ErrorCode.APPROVALS_MISSING, sign, req, auth, [a, b], pins=floored)
        assert "needs 2 approvals of group 'treasury'" in message
    ok = forge.authorization(POLICY, req, b"", group="treasury", quorum=2, votes=[a, b])
    assert sign(req, ok, [a, b], pins=floored) == [DIGEST]
    # The votes are still checked: a floor met on paper with one vote is refused.
    refused(ErrorCode.APPROVALS_MISSING, sign, req, ok, [a], pins=floored)
    # Keys the floor does not name sign as policy says.
    other = forge.signed_request(DESK, "desk", "ops-btc", DIGEST)
    assert sign(other, forge.authorization(POLICY, other, b""), key_id="ops-btc", pins=floored)


def test_the_votes_counted_must_be_the_ones_policy_named():
    req = request()
    a, b = forge.vote(ALICE, "alice", req), forge.vote(BOB, "bob", req)
    named = forge.authorization(POLICY, req, b"", group="treasury", quorum=1, votes=[a])
    refused(ErrorCode.APPROVALS_MISSING, sign, req, named, [b])


def create_request(region: str | None = "hk", key_id: str = "desk-hk") -> CreateKeyRequest:
    now = now_ms()
    unsigned = CreateKeyRequest(
        request_id="c1",
        requester="desk",
        key_id=key_id,
        curve="secp256k1",
        region=region,
        created_at_ms=now,
        expires_at_ms=now + 60_000,
    )
    return msgspec.structs.replace(unsigned, signature=DESK.sign(request_bytes(unsigned)).signature)


def create(req, auth, node="hk-1", key_id="desk-hk"):
    return check_create(
        codec.encode(req),
        auth,
        key_id=key_id,
        curve="secp256k1",
        node=node,
        pins=PINS,
        now_ms=now_ms(),
    )


def test_generation_needs_policy_and_requester_and_the_right_region():
    req = create_request()
    auth = forge.create_authorization(POLICY, req)
    create(req, auth)
    refused(ErrorCode.RESIDENCY_VIOLATION, create, req, auth, node="sg-1")
    refused(ErrorCode.EVIDENCE_REFUSED, create, req, None)
    refused(ErrorCode.EVIDENCE_REFUSED, create, req, forge.create_authorization(MALLORY, req))
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        create,
        req,
        forge.create_authorization(POLICY, req, region="sg"),
    )
    # Platform keys are made with no request; they sign only what their own op allows.
    check_create(
        b"",
        None,
        key_id="lantau-audit-checkpoint",
        curve="secp256k1",
        node="sg-1",
        pins=PINS,
        now_ms=now_ms(),
    )


def clone_auth(key=BACKUP, source="hk-1", target="hk-2", **kw) -> CloneAuthorization:
    now = now_ms()
    unsigned = CloneAuthorization(
        key_id=kw.pop("key_id", "desk-hk"),
        curve="secp256k1",
        public_key=b"\x02" * 33,
        source=source,
        target=target,
        issued_at_ms=now,
        not_after_ms=kw.pop("not_after_ms", now + 60_000),
        signed_by=hexkey(key),
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(signing_bytes(unsigned)).signature)


def clone(auth, created, node, as_source, key_id="desk-hk"):
    return check_clone(
        auth, created, key_id=key_id, node=node, as_source=as_source, pins=PINS, now_ms=now_ms()
    )


def test_clones_need_the_backup_service_and_stay_in_the_keys_region():
    created = forge.create_authorization(POLICY, create_request())
    clone(clone_auth(), created, "hk-1", True)
    clone(clone_auth(), created, "hk-2", False)
    refused(ErrorCode.EVIDENCE_REFUSED, clone, clone_auth(key=MALLORY), created, "hk-2", False)
    refused(ErrorCode.RESIDENCY_VIOLATION, clone, clone_auth(target="sg-1"), created, "sg-1", False)
    refused(ErrorCode.RESIDENCY_VIOLATION, clone, clone_auth(target="sg-1"), created, "hk-1", True)
    refused(ErrorCode.AUTHORIZATION_MISMATCH, clone, clone_auth(), created, "hk-1", False)
    stale = clone_auth(not_after_ms=now_ms() - 1)
    refused(ErrorCode.AUTHORIZATION_EXPIRED, clone, stale, created, "hk-2", False)
    refused(ErrorCode.EVIDENCE_REFUSED, clone, clone_auth(), None, "hk-2", False)
    # A key made under a policy key since rotated out still clones within its region.
    old = forge.create_authorization(OLD_POLICY, create_request())
    clone(clone_auth(), old, "hk-2", False)
    made_up = forge.create_authorization(MALLORY, create_request())
    refused(ErrorCode.EVIDENCE_REFUSED, clone, clone_auth(), made_up, "hk-2", False)
