"""The hsm-node's guard serving sealed key types on real SoftHSM2 tokens of one key
domain (the shared stores in memory): evidence, residency, replay, receipts, copies, and
HSS indices leased by compare-and-set, never used twice across nodes and restarts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import coincurve
import msgspec
import nacl.signing
import pkcs11
import pytest
from bip32 import BIP32
from dilithium_py.ml_dsa import ML_DSA_65

from devkit import forge
from devkit.softhsm import SoftHsmToken, find_module, init_slots
from libs import curves
from libs.clock import now_ms
from libs.evidence import Pins
from libs.hsm import ceremony
from libs.hsm.guard import Guard, clone_check_bytes
from libs.hsm.replay import ReplayLog
from libs.hsm.sealed_keys import SealedKeys
from libs.hsm.sealed_store import MemoryIndexLedger, MemorySealedStore
from libs.hsm.token import Pkcs11Token
from libs.keytypes import hd, lms
from proto import codec
from proto.authorization import CloneAuthorization, signing_bytes
from proto.common import HssShape
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import (
    HsmCloneCheck,
    HsmGenerate,
    HsmReceipt,
    HsmSign,
    HsmUnwrap,
    HsmWrap,
)
from proto.requests import CreateKeyRequest
from proto.requests import signing_bytes as request_bytes
from tests.keytypes.test_lms import assert_no_one_time_key_reused, second_opinion

KEK = "lantau-domain-kek"
POLICY, BACKUP, DESK = (nacl.signing.SigningKey.generate() for _ in range(3))
NODES = {"hk-1": "hk", "hk-2": "hk", "sg-1": "sg"}
PINS = Pins(
    policy=frozenset({POLICY.verify_key.encode().hex()}),
    backup=frozenset({BACKUP.verify_key.encode().hex()}),
    requesters={"desk": DESK.verify_key.encode().hex()},
    regions=NODES,
)
SMALL = HssShape(levels=2, height=5, winternitz=4)  # 1024 signatures, leases of 32


def _pin(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SoftHsmToken]]:
    """Three HSMs of one key domain: the domain made on hk-1, the others admitted."""
    made = init_slots(Path(tmp_path_factory.mktemp("guard")), list(NODES))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(made[0].conf_path)
    lib = pkcs11.lib(find_module())
    try:
        lib.get_token(token_label="hk-1")
    except pkcs11.NoSuchToken:
        lib.reinitialize()
    m = find_module()
    first, *others = made
    ceremony.init_domain(m, first.label, _pin(first.so_pin_file), KEK)
    ceremony.init_sealing_key(m, first.label, _pin(first.pin_file), KEK)
    for t in others:
        transport = ceremony.make_transport_key(m, t.label, _pin(t.so_pin_file))
        wrapped = ceremony.export_domain_key(
            m, first.label, _pin(first.so_pin_file), KEK, transport
        )
        ceremony.import_domain_key(m, t.label, _pin(t.so_pin_file), KEK, wrapped)
        sealing = ceremony.export_sealing_key(m, first.label, _pin(first.pin_file), KEK)
        ceremony.import_sealing_key(m, t.label, _pin(t.pin_file), KEK, sealing)
    try:
        yield {t.label: t for t in made}
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


class Domain:
    """The nodes' guards, the shared stores, and every receipt."""

    def __init__(self, tokens: dict[str, SoftHsmToken]) -> None:
        self.store = MemorySealedStore()
        self.ledger = MemoryIndexLedger()
        self.receipts: list[tuple[str, HsmReceipt]] = []
        self.worker = ThreadPoolExecutor(max_workers=1)  # SoftHSM unlocked: one thread
        self.guards = {name: self.guard(name, tokens[name]) for name in NODES}

    def guard(self, name: str, t: SoftHsmToken) -> Guard:
        token = Pkcs11Token(find_module(), t.label, _pin(t.pin_file), executor=self.worker)
        g = Guard(
            token,
            node_id=name,
            pins=lambda: PINS,
            replays=ReplayLog(None),
            on_receipt=lambda r: self.receipts.append((name, r)),
        )
        g.sealed = SealedKeys(
            token,
            node_id=name,
            sealing_label=ceremony.sealing_label(KEK),
            store=self.store,
            ledger=self.ledger,
            on_lease=g.on_lease,
        )
        return g


@pytest.fixture(scope="module")
async def domain(tokens: dict[str, SoftHsmToken]) -> AsyncIterator[Domain]:
    d = Domain(tokens)
    yield d
    for g in d.guards.values():
        await g.close()
    d.worker.shutdown()


def create(key_id: str, curve: str, region: str | None = "hk", hss: HssShape | None = None):
    request = CreateKeyRequest(
        request_id=f"create-{key_id}",
        requester="desk",
        key_id=key_id,
        curve=curve,  # type: ignore[arg-type]
        region=region,
        hss=hss,
        created_at_ms=now_ms(),
        expires_at_ms=now_ms() + 60_000,
    )
    request = msgspec.structs.replace(
        request, signature=DESK.sign(request_bytes(request)).signature
    )
    shape = (hss or HssShape()) if curve == "lms-hss" else None
    authorization = forge.create_authorization(POLICY, request, hss=shape)
    return HsmGenerate(
        key_id=key_id,
        curve=curve,  # type: ignore[arg-type]
        request=codec.encode(request),
        authorization=authorization,
    )


def sign_command(
    key_id: str, curve: str, payload: bytes, kind: str, public: bytes, path: str | None = None
) -> HsmSign:
    request = forge.signed_request(DESK, "desk", key_id, payload, kind=kind)
    if path is not None:
        request = msgspec.structs.replace(request, path=path)
        request = msgspec.structs.replace(
            request, signature=DESK.sign(request_bytes(request)).signature
        )
    auth = forge.authorization(POLICY, request, public, curve=curve, path=path)
    return HsmSign(key_id=key_id, curve=curve, request=codec.encode(request), authorization=auth)  # type: ignore[arg-type]


def refused(code: ErrorCode, exc: pytest.ExceptionInfo[Any]) -> None:
    assert isinstance(exc.value, LantauError | TransientError)
    assert exc.value.code == code, exc.value


@pytest.fixture(scope="module")
async def keys(domain: Domain) -> dict[str, Any]:
    made = {}
    g = domain.guards["hk-1"]
    for key_id, curve, hss in (
        ("desk-hd", "bip32-secp256k1", None),
        ("desk-sol", "slip10-ed25519", None),
        ("desk-pq", "ml-dsa-65", None),
        ("desk-hss", "lms-hss", SMALL),
    ):
        command = create(key_id, curve, hss=hss)
        made[key_id] = await g.generate(command)
        made[key_id + "/command"] = command
    return made


async def test_every_new_type_is_generated_sealed_and_generation_is_idempotent(
    domain: Domain, keys: dict[str, Any]
) -> None:
    for key_id, key in keys.items():
        if key_id.endswith("/command"):
            continue
        assert key.created and key.protection == "hsm-wrapped"
        stored = domain.store.blobs[key_id]
        assert stored.public_key == key.public_key and stored.sealed_by == "hk-1"
        assert stored.key_type == key.curve
    assert len(keys["desk-pq"].public_key) == 1952
    assert keys["desk-hd"].hd.path == "m" and keys["desk-hd"].hd.xpub.startswith("xpub")
    # A redelivered creation order gets the key it made (on any node of the region).
    for key_id in ("desk-pq", "desk-hd", "desk-hss"):
        again = await domain.guards["hk-2"].generate(keys[f"{key_id}/command"])
        assert not again.created and again.public_key == keys[key_id].public_key
        assert again.hd == keys[key_id].hd
    with pytest.raises(LantauError) as e:  # the same id for another creation
        await domain.guards["hk-1"].generate(create("desk-pq", "ml-dsa-65"))
    refused(ErrorCode.KEY_EXISTS, e)
    state, _ = await domain.ledger.read("desk-hss")
    assert state is not None and state.total == 1024 and state.alignment == 32
    with pytest.raises(LantauError) as e:  # the same id for another creation
        await domain.guards["hk-1"].generate(create("desk-pq", "ml-dsa-65", region="sg"))
    refused(ErrorCode.RESIDENCY_VIOLATION, e)


async def test_hd_children_sign_and_verify_under_keys_bip32_derives_from_the_xpub(
    domain: Domain, keys: dict[str, Any]
) -> None:
    watch_only = BIP32.from_xpub(keys["desk-hd"].hd.xpub)
    digest = hashlib.sha256(b"pay 1").digest()
    for node in ("hk-1", "hk-2"):
        for path in ("m/0/5", "m/1/2/3"):  # non-hardened: derivable watch-only
            public = watch_only.get_pubkey_from_path(path)
            cmd = sign_command("desk-hd", "bip32-secp256k1", digest, "digest", public, path)
            reply = await domain.guards[node].sign_reply(cmd)
            assert reply.public_key == public
            curves.finalize("bip32-secp256k1", public, digest, reply.signatures[0])
    hardened = "m/44'/60'/0'/0/5"
    account = await domain.guards["hk-2"].public_key("desk-hd", "m/44'/60'/0'")
    child = hd.derive_public(hd.parse_extended_key(account.hd.xpub)[0], "m/0/5").public_key  # type: ignore[arg-type]
    cmd = sign_command("desk-hd", "bip32-secp256k1", digest, "digest", child, hardened)
    reply = await domain.guards["hk-1"].sign_reply(cmd)
    assert reply.public_key == child
    assert coincurve.PublicKey(child).verify(
        coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(reply.signatures[0])),
        digest,
        hasher=None,
    )
    # The same request signed under another path is another authorization: refused.
    forged = msgspec.structs.replace(cmd.authorization, path="m/0/6")
    with pytest.raises(LantauError) as e:
        await domain.guards["hk-1"].sign(msgspec.structs.replace(cmd, authorization=forged))
    refused(ErrorCode.EVIDENCE_REFUSED, e)  # policy's signature no longer holds


async def test_slip10_and_ml_dsa_signatures_verify_and_a_second_implementation_agrees(
    domain: Domain, keys: dict[str, Any]
) -> None:
    path = "m/44'/501'/0'/0'"
    child = (await domain.guards["hk-1"].public_key("desk-sol", path)).public_key
    cmd = sign_command("desk-sol", "slip10-ed25519", b"hello sol", "message", child, path)
    reply = await domain.guards["hk-2"].sign_reply(cmd)
    curves.finalize("slip10-ed25519", child, b"hello sol", reply.signatures[0])
    public = keys["desk-pq"].public_key
    cmd = sign_command("desk-pq", "ml-dsa-65", b"post-quantum", "message", public)
    (signature,) = await domain.guards["hk-2"].sign(cmd)
    assert ML_DSA_65.verify(public, b"post-quantum", signature)
    assert not ML_DSA_65.verify(public, b"post-quantum!", signature)


async def test_a_node_outside_the_keys_region_refuses_to_open_it(
    domain: Domain, keys: dict[str, Any]
) -> None:
    cmd = sign_command("desk-pq", "ml-dsa-65", b"x", "message", keys["desk-pq"].public_key)
    with pytest.raises(LantauError) as e:
        await domain.guards["sg-1"].sign(cmd)
    refused(ErrorCode.RESIDENCY_VIOLATION, e)
    assert ("sg-1", "sign", "refused", "RESIDENCY_VIOLATION") in {
        (n, r.op, r.outcome, r.code) for n, r in domain.receipts
    }
    # A creation record of the same key id for another region does not open the blob.
    stored = domain.store.blobs["desk-pq"]
    other = create("desk-pq", "ml-dsa-65", region="sg").authorization
    moved = msgspec.structs.replace(stored, created=other)
    sg = domain.guards["sg-1"].sealed
    assert sg is not None
    with pytest.raises(LantauError) as e:
        await sg.public(moved, None)
    refused(ErrorCode.SEALED_BLOB_INVALID, e)


async def test_an_altered_or_moved_blob_never_opens(domain: Domain, keys: dict[str, Any]) -> None:
    sealed = domain.guards["hk-2"].sealed
    assert sealed is not None
    stored = domain.store.blobs["desk-pq"]
    flipped = bytearray(stored.blob)
    flipped[20] ^= 1
    for bad in (
        msgspec.structs.replace(stored, blob=bytes(flipped)),
        msgspec.structs.replace(stored, key_id="desk-other"),
        msgspec.structs.replace(stored, public_key=keys["desk-hss"].public_key),
        msgspec.structs.replace(domain.store.blobs["desk-hss"], hss=HssShape(levels=2, height=10)),
    ):
        with pytest.raises(LantauError) as e:
            await sealed.public(bad, None)
        refused(ErrorCode.SEALED_BLOB_INVALID, e)


async def test_hss_nodes_sign_from_their_own_leases_and_a_restart_leases_afresh(
    domain: Domain, keys: dict[str, Any]
) -> None:
    public = keys["desk-hss"].public_key
    signatures: list[bytes] = []
    replies: dict[str, list[bytes]] = {}
    for round_ in range(3):
        for node in ("hk-1", "hk-2"):
            message = f"{node}-{round_}".encode()
            cmd = sign_command("desk-hss", "lms-hss", message, "message", public)
            (signature,) = await domain.guards[node].sign(cmd)
            assert second_opinion(public, message, signature)
            signatures.append(signature)
            replies[message.decode()] = [signature]
        if round_ == 1:
            domain.guards["hk-1"].sealed.forget_leases()  # type: ignore[union-attr]
    # A repeat of a signed request is answered from the replay record: no new index.
    cmd = sign_command("desk-hss", "lms-hss", b"again", "message", public)
    first = await domain.guards["hk-2"].sign(cmd)
    assert await domain.guards["hk-2"].sign(cmd) == first
    signatures += first
    assert_no_one_time_key_reused(public, signatures)
    indices = [_index(s) for s in signatures]
    assert len(set(indices)) == len(indices)
    leases = [
        (n, r.lease) for n, r in domain.receipts if r.op == "lease" and r.key_id == "desk-hss"
    ]
    assert [n for n, _ in leases] == ["hk-1", "hk-2", "hk-1"]
    assert [lease for _, lease in leases] == [[0, 32], [32, 64], [64, 96]]
    used = [i for n, r in domain.receipts if r.op == "sign" for i in r.indices]
    assert sorted(used) == sorted(indices)
    state, _ = await domain.ledger.read("desk-hss")
    assert state is not None and lms_left(state) == 1024 - 96


def lms_left(state: Any) -> int:
    from libs.keytypes.lms_state import signatures_left

    return signatures_left(state)


def _index(signature: bytes) -> int:
    leaves = lms.signature_leaves(signature)
    return (leaves[0] << 5) | leaves[1]


async def test_a_lost_ledger_stops_the_key_until_it_is_fenced(domain: Domain) -> None:
    key = await domain.guards["hk-1"].generate(create("desk-hss-2", "lms-hss", hss=SMALL))
    del domain.ledger.states["desk-hss-2"]
    cmd = sign_command("desk-hss-2", "lms-hss", b"m", "message", key.public_key)
    with pytest.raises(LantauError) as e:
        await domain.guards["hk-2"].sign(cmd)
    refused(ErrorCode.INDEX_LEDGER_MISSING, e)


async def test_a_ledger_rolled_back_behind_what_a_node_saw_is_refused(domain: Domain) -> None:
    key = await domain.guards["hk-1"].generate(create("desk-hss-3", "lms-hss", hss=SMALL))
    g = domain.guards["hk-2"]
    first = sign_command("desk-hss-3", "lms-hss", b"one", "message", key.public_key)
    await g.sign(first)  # hk-2 leases [0, 32)
    older, revision = await domain.ledger.read("desk-hss-3")
    assert older is not None and older.next_unleased == 32
    # Someone writes the ledger back (a restore, a faulty writer): it reads as never leased.
    domain.ledger.states["desk-hss-3"] = (
        msgspec.structs.replace(older, next_unleased=0, leases=()),
        revision + 1,
    )
    g.sealed.forget_leases()  # type: ignore[union-attr]
    second = sign_command("desk-hss-3", "lms-hss", b"two", "message", key.public_key)
    with pytest.raises(LantauError) as e:
        await g.sign(second)
    refused(ErrorCode.INDEX_LEDGER_MISSING, e)


async def test_copies_travel_as_the_sealed_record_and_keep_residency(
    domain: Domain, keys: dict[str, Any]
) -> None:
    stored = domain.store.blobs["desk-hd"]

    def clone(source: str, target: str) -> CloneAuthorization:
        unsigned = CloneAuthorization(
            key_id="desk-hd",
            curve="bip32-secp256k1",
            public_key=stored.public_key,
            source=source,
            target=target,
            issued_at_ms=now_ms(),
            not_after_ms=now_ms() + 60_000,
            signed_by=BACKUP.verify_key.encode().hex(),
        )
        return msgspec.structs.replace(
            unsigned, signature=BACKUP.sign(signing_bytes(unsigned)).signature
        )

    wrap = HsmWrap(
        key_id="desk-hd", kek_label=KEK, clone=clone("hk-1", "hk-2"), created=stored.created
    )
    wrapped = await domain.guards["hk-1"].wrap(wrap)
    assert codec.SEALED_KEY.decode(wrapped) == stored  # ciphertext only, never the seed
    # A domain that lost its copy gets it back from the backup copy (a restore).
    lost = domain.guards["hk-2"]
    assert lost.sealed is not None
    lost.sealed._store = MemorySealedStore()
    lost.sealed._records.clear()
    unwrap = HsmUnwrap(
        key_id="desk-hd",
        curve="bip32-secp256k1",
        kek_label=KEK,
        wrapped=wrapped,
        public_key=stored.public_key,
        clone=clone("hk-1", "hk-2"),
        created=stored.created,
    )
    adopted = await lost.unwrap(unwrap)
    assert adopted.public_key == stored.public_key and adopted.protection == "hsm-wrapped"
    raw = await lost.clone_check(HsmCloneCheck(key_id="desk-hd", curve="bip32-secp256k1"))
    data = clone_check_bytes("bip32-secp256k1", "desk-hd", "hk-2")
    curves.finalize("bip32-secp256k1", stored.public_key, data, raw)
    # Out of the region: the backup's word is not enough.
    with pytest.raises(LantauError) as e:
        await domain.guards["sg-1"].unwrap(
            msgspec.structs.replace(unwrap, clone=clone("hk-1", "sg-1"))
        )
    refused(ErrorCode.RESIDENCY_VIOLATION, e)
    # A stateful key is never test-signed: that would spend a one-time key.
    with pytest.raises(LantauError) as e:
        await domain.guards["hk-1"].clone_check(HsmCloneCheck(key_id="desk-hss", curve="lms-hss"))
    refused(ErrorCode.KEY_TYPE_UNSUPPORTED, e)


async def test_capabilities_say_how_each_type_is_kept(domain: Domain) -> None:
    caps = await domain.guards["hk-1"].capabilities()
    assert caps.sealing_key
    assert caps.protections["secp256k1"] == "hsm"
    for t in ("bip32-secp256k1", "slip10-ed25519", "ml-dsa-65", "lms-hss"):
        assert caps.protections[t] == "hsm-wrapped"
        assert t in caps.key_types
    for t in ("ML_DSA", "HSS", "BIP32"):  # SoftHSM 2.6.1 has none of them natively
        assert not any(t in m for m in caps.mechanisms)


async def test_the_evidence_holds_for_sealed_keys_as_for_token_keys(
    domain: Domain, keys: dict[str, Any]
) -> None:
    g = domain.guards["hk-1"]
    public = keys["desk-hss"].public_key
    ledger_before, _ = await domain.ledger.read("desk-hss")
    # Bytes other than the request's: refused before anything is opened or leased.
    cmd = sign_command("desk-hss", "lms-hss", b"real", "message", public)
    other = forge.authorization(
        POLICY,
        codec.REQUEST.decode(cmd.request),  # type: ignore[arg-type]
        public,
        curve="lms-hss",
        digests=[hashlib.sha256(b"other").hexdigest()],
    )
    with pytest.raises(LantauError) as e:
        await g.sign(msgspec.structs.replace(cmd, authorization=other))
    refused(ErrorCode.AUTHORIZATION_MISMATCH, e)
    # An authorization for another key type than the key's.
    wrong_type = forge.authorization(
        POLICY,
        codec.REQUEST.decode(cmd.request),  # type: ignore[arg-type]
        public,
        curve="ml-dsa-65",
    )
    with pytest.raises(LantauError) as e:
        await g.sign(msgspec.structs.replace(cmd, authorization=wrong_type, curve="ml-dsa-65"))
    refused(ErrorCode.AUTHORIZATION_MISMATCH, e)
    # The request id signed once; the same id for other content is refused, no index spent.
    first = await g.sign(cmd)
    request = codec.REQUEST.decode(cmd.request)
    again = forge.signed_request(
        DESK, "desk", "desk-hss", b"changed", kind="message", request_id=request.request_id
    )
    reuse = HsmSign(
        key_id="desk-hss",
        curve="lms-hss",
        request=codec.encode(again),
        authorization=forge.authorization(POLICY, again, public, curve="lms-hss"),
    )
    with pytest.raises(LantauError) as e:
        await g.sign(reuse)
    refused(ErrorCode.REQUEST_ID_CONFLICT, e)
    assert await g.sign(cmd) == first
    outcomes = [
        (r.outcome, r.code)
        for n, r in domain.receipts[-6:]
        if n == "hk-1" and r.op == "sign" and r.key_id == "desk-hss"
    ]
    assert ("refused", "AUTHORIZATION_MISMATCH") in outcomes and ("replayed", "") in outcomes
    ledger_after, _ = await domain.ledger.read("desk-hss")
    assert ledger_before is not None and ledger_after is not None
    assert ledger_after.next_unleased - ledger_before.next_unleased <= 32  # one lease at most
