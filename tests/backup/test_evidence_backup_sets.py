"""The guard's clone check for offline backup sets, as pure calls: only the set's own key
moves keys into or out of it, and a key tagged with a region goes only to a set there."""

from __future__ import annotations

import msgspec
import nacl.signing
import pytest

from devkit import forge
from libs import config as config_mod
from libs.clock import now_ms
from libs.evidence import Pins, check_clone, pins_from
from proto.authorization import CloneAuthorization, signing_bytes
from proto.errors import ErrorCode, LantauError
from proto.requests import CreateKeyRequest
from proto.requests import signing_bytes as request_bytes

POLICY = nacl.signing.SigningKey.generate()
BACKUP_SERVICE = nacl.signing.SigningKey.generate()
HK_VAULT = nacl.signing.SigningKey.generate()
SG_VAULT = nacl.signing.SigningKey.generate()
DESK = nacl.signing.SigningKey.generate()


def hexkey(k: nacl.signing.SigningKey) -> str:
    return k.verify_key.encode().hex()


PINS = Pins(
    policy=frozenset({hexkey(POLICY)}),
    backup=frozenset({hexkey(BACKUP_SERVICE)}),
    backup_sets={"hk-vault": hexkey(HK_VAULT), "sg-vault": hexkey(SG_VAULT), "new-vault": ""},
    requesters={"desk": hexkey(DESK)},
    regions={
        "hk-1": "hk",
        "hk-2": "hk",
        "sg-1": "sg",
        "hk-vault": "hk",
        "sg-vault": "sg",
        "new-vault": "hk",
    },
)


def created(region: str | None, key_id: str = "desk-k"):
    unsigned = CreateKeyRequest(
        requester="desk",
        request_id=f"r-{key_id}",
        key_id=key_id,
        curve="secp256k1",
        region=region,
        created_at_ms=now_ms(),
        expires_at_ms=now_ms() + 60_000,
    )
    req = msgspec.structs.replace(unsigned, signature=DESK.sign(request_bytes(unsigned)).signature)
    return forge.create_authorization(POLICY, req)


def clone_auth(key, source, target, key_id="desk-k", **kw) -> CloneAuthorization:
    now = now_ms()
    unsigned = CloneAuthorization(
        key_id=key_id,
        curve="secp256k1",
        public_key=b"\x02" * 33,
        source=source,
        target=target,
        issued_at_ms=kw.pop("issued_at_ms", now),
        not_after_ms=kw.pop("not_after_ms", now + 60_000),
        signed_by=hexkey(key),
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(signing_bytes(unsigned)).signature)


def check(auth, made, node, as_source, key_id="desk-k"):
    check_clone(
        auth, made, key_id=key_id, node=node, as_source=as_source, pins=PINS, now_ms=now_ms()
    )


def refused(code: ErrorCode, *args, **kw) -> str:
    with pytest.raises(LantauError) as e:
        check(*args, **kw)
    assert e.value.code == code, e.value
    return e.value.message


def test_the_sets_own_key_moves_a_key_into_the_set_and_back_out():
    made = created("hk")
    into = clone_auth(HK_VAULT, "hk-1", "hk-vault")
    check(into, made, "hk-1", True)  # the online node wraps it
    check(into, made, "hk-vault", False)  # the backup token unwraps it
    out = clone_auth(HK_VAULT, "hk-vault", "hk-2")
    check(out, made, "hk-vault", True)
    check(out, made, "hk-2", False)


def test_no_other_key_moves_keys_into_or_out_of_a_set():
    made = created("hk")
    # Not the online backup service's key (it runs unattended: no quorum behind it) ...
    message = refused(
        ErrorCode.EVIDENCE_REFUSED,
        clone_auth(BACKUP_SERVICE, "hk-1", "hk-vault"),
        made,
        "hk-1",
        True,
    )
    assert "backup set hk-vault" in message
    refused(
        ErrorCode.EVIDENCE_REFUSED,
        clone_auth(BACKUP_SERVICE, "hk-vault", "hk-1"),
        made,
        "hk-1",
        False,
    )
    # ... nor another set's key, nor a set whose key is not pinned yet.
    refused(
        ErrorCode.EVIDENCE_REFUSED, clone_auth(SG_VAULT, "hk-1", "hk-vault"), made, "hk-1", True
    )
    refused(
        ErrorCode.EVIDENCE_REFUSED, clone_auth(HK_VAULT, "hk-1", "new-vault"), made, "hk-1", True
    )


def test_a_sets_key_authorizes_nothing_between_online_nodes():
    made = created("hk")
    refused(ErrorCode.EVIDENCE_REFUSED, clone_auth(HK_VAULT, "hk-1", "hk-2"), made, "hk-1", True)
    check(clone_auth(BACKUP_SERVICE, "hk-1", "hk-2"), made, "hk-1", True)


def test_never_from_one_set_to_another():
    made = created(None)
    auth = clone_auth(HK_VAULT, "hk-vault", "sg-vault")
    assert "one backup set to another" in refused(
        ErrorCode.EVIDENCE_REFUSED, auth, made, "hk-vault", True
    )


def test_a_tagged_key_goes_only_to_a_set_of_its_region_and_back_only_to_its_region():
    hk_key = created("hk")
    auth = clone_auth(SG_VAULT, "hk-1", "sg-vault")
    message = refused(ErrorCode.RESIDENCY_VIOLATION, auth, hk_key, "hk-1", True)
    assert "sg-vault" in message
    refused(ErrorCode.RESIDENCY_VIOLATION, auth, hk_key, "sg-vault", False)
    # Restoring a hk key from the hk set onto a node in Singapore: refused at both ends.
    out = clone_auth(HK_VAULT, "hk-vault", "sg-1")
    refused(ErrorCode.RESIDENCY_VIOLATION, out, hk_key, "hk-vault", True)
    refused(ErrorCode.RESIDENCY_VIOLATION, out, hk_key, "sg-1", False)
    # An untagged key may go to any set of the domain, and come back to any node.
    free = created(None)
    check(clone_auth(SG_VAULT, "hk-1", "sg-vault"), free, "hk-1", True)
    check(clone_auth(HK_VAULT, "hk-vault", "sg-1"), free, "hk-vault", True)


def test_platform_keys_need_no_creation_record_but_still_the_sets_key():
    auth = clone_auth(HK_VAULT, "hk-1", "hk-vault", key_id="lantau-audit-checkpoint")
    check(auth, None, "hk-vault", False, key_id="lantau-audit-checkpoint")
    rogue = clone_auth(BACKUP_SERVICE, "hk-1", "hk-vault", key_id="lantau-audit-checkpoint")
    refused(
        ErrorCode.EVIDENCE_REFUSED, rogue, None, "hk-vault", False, key_id="lantau-audit-checkpoint"
    )


def test_expired_or_edited_set_authorizations_are_refused():
    made = created("hk")
    stale = clone_auth(HK_VAULT, "hk-1", "hk-vault", not_after_ms=now_ms() - 1)
    refused(ErrorCode.AUTHORIZATION_EXPIRED, stale, made, "hk-1", True)
    edited = msgspec.structs.replace(clone_auth(HK_VAULT, "hk-1", "hk-vault"), target="hk-2")
    refused(ErrorCode.EVIDENCE_REFUSED, edited, made, "hk-2", False)


def test_pins_from_the_config():
    key = hexkey(HK_VAULT)
    cfg = config_mod.loads(
        f"""
[[hsm_nodes]]
id = "hk-1"
token_label = "t1"
region = "hk"

[[backup_sets]]
id = "hk-vault"
region = "hk"
token_label = "vault"

[[backup_sets]]
id = "unpinned"
token_label = "vault-2"

[evidence]
backup_set_keys = {{ hk-vault = "{key.upper()}" }}
""",
        env={},
    )
    pins = pins_from(cfg, None)
    assert pins.backup_sets == {"hk-vault": key, "unpinned": ""}
    assert pins.regions == {"hk-1": "hk", "hk-vault": "hk", "unpinned": None}


def test_a_set_may_not_share_an_id_with_a_node():
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.loads(
            '[[hsm_nodes]]\nid = "x"\ntoken_label = "a"\n'
            '[[backup_sets]]\nid = "x"\ntoken_label = "b"\n',
            env={},
        )
    assert "distinct" in e.value.message
