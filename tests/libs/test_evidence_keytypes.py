"""The hsm-node's evidence check for the new key types, as pure calls: the HD path is
policy's word like the bytes are, the HSS shape is the one policy authorized, and a
sealed record opens only where its creation record puts the key."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from devkit import forge
from libs.clock import now_ms
from libs.evidence import check_create, check_sealed_use, check_sign_bytes, check_sign_parties
from proto import codec
from proto.common import HssShape
from proto.errors import ErrorCode, LantauError
from proto.keys import SealedKey
from proto.requests import CreateKeyRequest
from proto.requests import signing_bytes as request_bytes
from tests.libs.test_evidence import DESK, MALLORY, OLD_POLICY, PINS, POLICY

DIGEST = hashlib.sha256(b"pay").digest()
CHILD = b"\x02" + b"\x11" * 32


def hd_request(path: str | None, key_id: str = "desk-hd"):
    req = forge.signed_request(DESK, "desk", key_id, DIGEST)
    req = msgspec.structs.replace(req, path=path)
    return msgspec.structs.replace(req, signature=DESK.sign(request_bytes(req)).signature)


def checked(req, auth):
    request = check_sign_parties(
        codec.encode(req), auth, [], key_id=req.key_id, pins=PINS, now_ms=now_ms()
    )
    return check_sign_bytes(request, auth, CHILD)


def refused(code: ErrorCode, fn, *args, **kw) -> str:
    with pytest.raises(LantauError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value.message


def test_an_hd_signature_is_authorized_for_exactly_its_path():
    req = hd_request("m/44'/60'/0'/0/5")
    good = forge.authorization(POLICY, req, CHILD, curve="bip32-secp256k1", path=req.path)
    assert checked(req, good) == [DIGEST]
    other = forge.authorization(POLICY, req, CHILD, curve="bip32-secp256k1", path="m/0")
    refused(ErrorCode.AUTHORIZATION_MISMATCH, checked, req, other)
    # A request without a path for an HD key, or with one for another type.
    bare = hd_request(None)
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        checked,
        bare,
        forge.authorization(POLICY, bare, CHILD, curve="bip32-secp256k1"),
    )
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        checked,
        req,
        forge.authorization(POLICY, req, CHILD, curve="ml-dsa-65", path=req.path),
    )


def test_a_request_edited_to_another_path_fails_the_requesters_signature():
    req = hd_request("m/44'/60'/0'/0/5")
    edited = msgspec.structs.replace(req, path="m/44'/60'/0'/0/6")
    auth = forge.authorization(POLICY, edited, CHILD, curve="bip32-secp256k1", path=edited.path)
    refused(ErrorCode.EVIDENCE_REFUSED, checked, edited, auth)


def hss_create(shape: HssShape | None):
    now = now_ms()
    req = CreateKeyRequest(
        request_id="c-hss",
        requester="desk",
        key_id="desk-hss",
        curve="lms-hss",
        region="hk",
        hss=shape,
        created_at_ms=now,
        expires_at_ms=now + 60_000,
    )
    return msgspec.structs.replace(req, signature=DESK.sign(request_bytes(req)).signature)


def create(req, auth, node="hk-1"):
    check_create(
        codec.encode(req),
        auth,
        key_id=req.key_id,
        curve=req.curve,
        node=node,
        pins=PINS,
        now_ms=now_ms(),
    )


def test_an_hss_key_is_made_with_the_shape_policy_authorized():
    small = HssShape(levels=2, height=5, winternitz=4)
    req = hss_create(small)
    create(req, forge.create_authorization(POLICY, req, hss=small))
    refused(
        ErrorCode.AUTHORIZATION_MISMATCH,
        create,
        req,
        forge.create_authorization(POLICY, req, hss=HssShape(levels=2, height=10)),
    )
    refused(ErrorCode.AUTHORIZATION_MISMATCH, create, req, forge.create_authorization(POLICY, req))
    default = hss_create(None)  # policy fills in the default shape
    create(default, forge.create_authorization(POLICY, default, hss=HssShape()))


def sealed(created, **changes) -> SealedKey:
    record = SealedKey(
        key_id="desk-hss",
        key_type="lms-hss",
        blob=b"\x01" * 60,
        public_key=b"\x00" * 60,
        hss=HssShape(levels=2, height=5, winternitz=4),
        created=created,
        sealed_by="hk-1",
        sealed_at_ms=1,
    )
    return msgspec.structs.replace(record, **changes)


def test_a_sealed_record_opens_only_in_its_keys_region():
    small = HssShape(levels=2, height=5, winternitz=4)
    req = hss_create(small)
    created = forge.create_authorization(POLICY, req, hss=small)
    check_sealed_use(sealed(created), node="hk-2", pins=PINS)
    refused(
        ErrorCode.RESIDENCY_VIOLATION, check_sealed_use, sealed(created), node="sg-1", pins=PINS
    )
    refused(ErrorCode.EVIDENCE_REFUSED, check_sealed_use, sealed(None), node="hk-2", pins=PINS)
    forged = forge.create_authorization(MALLORY, req, hss=small)
    refused(ErrorCode.EVIDENCE_REFUSED, check_sealed_use, sealed(forged), node="hk-2", pins=PINS)
    for wrong in ({"key_id": "desk-other"}, {"key_type": "ml-dsa-65"}, {"hss": HssShape()}):
        refused(
            ErrorCode.AUTHORIZATION_MISMATCH,
            check_sealed_use,
            sealed(created, **wrong),
            node="hk-2",
            pins=PINS,
        )
    # A key created under a policy key since rotated out still opens in its region.
    old = forge.create_authorization(OLD_POLICY, req, hss=small)
    check_sealed_use(sealed(old), node="hk-1", pins=PINS)
