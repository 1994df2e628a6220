"""Fields added to signed statements (a sign request's HD path, a key request's HSS
shape, the matching authorization fields) leave the bytes of everything signed without
them unchanged: the digests below were computed by the code before those fields
existed (main at d7e7b15), for the same statements."""

from __future__ import annotations

import hashlib

import msgspec

from proto.authorization import CreateKeyAuthorization, SignAuthorization
from proto.authorization import signing_bytes as authorization_bytes
from proto.common import HssShape
from proto.requests import CreateKeyRequest, SignRequest, Transfer, request_hash, signing_bytes

SIGN = SignRequest(
    request_id="r1",
    requester="desk-a",
    key_id="k",
    payload=b"\x01" * 32,
    payload_kind="digest",
    transfer=Transfer(asset="ETH", amount="123456789012345678901234", destination="0xabc"),
    chain="mainnet",
    created_at_ms=1,
    expires_at_ms=2,
    signature=b"sig",
)
CREATE = CreateKeyRequest(
    request_id="r2",
    requester="desk-a",
    key_id="k",
    curve="secp256k1",
    region="hk",
    created_at_ms=1,
    expires_at_ms=2,
)
SIGN_AUTH = SignAuthorization(
    requester="desk-a",
    request_id="r1",
    request_hash="h",
    key_id="k",
    curve="secp256k1",
    payload_kind="digest",
    blind=True,
    digests=["d"],
    rule="x",
    policy_version="v",
    issued_at_ms=1,
    not_after_ms=2,
    signed_by="ab",
)
CREATE_AUTH = CreateKeyAuthorization(
    requester="desk-a",
    request_id="r2",
    request_hash="h",
    key_id="k",
    curve="ed25519",
    region=None,
    rule="x",
    policy_version="v",
    issued_at_ms=1,
    not_after_ms=2,
    signed_by="ab",
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_statements_without_the_new_fields_keep_their_bytes() -> None:
    assert sha(signing_bytes(SIGN)) == (
        "05ba93975c31e7fa99bcbaec6c3bff7301bdce32642cd4f19c9608c9b672e595"
    )
    assert sha(signing_bytes(CREATE)) == (
        "4e9226aee9c832668fa517b4a36437ca1cecdce21ff83b64f7478c5eb9c11a1c"
    )
    assert sha(authorization_bytes(SIGN_AUTH)) == (
        "fe21845e935ce06f6c3bf73d2f874ddbd43b0fc03e4cfb27f873b2f070306c81"
    )
    assert sha(authorization_bytes(CREATE_AUTH)) == (
        "2dccd0dc80f2e54f47bd46759e5ae814d2b73bf8454326518ca554878e86d3c5"
    )
    assert request_hash(SIGN) == "4845807be65f0bd5692147ee838bfdcfa15c3c0bff8f42806d6d936a98ad4f7b"
    assert request_hash(CREATE) == (
        "f6e7ed4bcfb4ca6117e9e7761fb1179c759915175f95db6b0661e276d05551db"
    )


def test_the_new_fields_are_signed_when_set() -> None:
    hd = msgspec.structs.replace(SIGN, path="m/44'/60'/0'/0/5")
    assert b'"path":"m/44\'/60\'/0\'/0/5"' in signing_bytes(hd)
    assert request_hash(hd) != request_hash(SIGN)
    hss = msgspec.structs.replace(CREATE, curve="lms-hss", hss=HssShape(levels=2, height=5))
    assert b'"hss":{"height":5,"levels":2,"winternitz":4}' in signing_bytes(hss)
    auth = msgspec.structs.replace(SIGN_AUTH, path="m/1")
    assert authorization_bytes(auth) != authorization_bytes(SIGN_AUTH)
    assert b'"path"' not in signing_bytes(SIGN) + authorization_bytes(SIGN_AUTH)
