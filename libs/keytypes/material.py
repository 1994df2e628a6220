"""Using sealed material once it is open: public keys, HD derivation, stateless signing.

Pure: the caller (the hsm-node) has just unsealed ``material`` and wipes it afterwards.
Stateful HSS signing is not here: it goes through `lms.HssSigner` and the lease ledger.
Also the binding of a blob to its record (`blob_aad`) and watch-only HD derivation from
exported extended public keys (`child_public`), which policy and signers use.
"""

from __future__ import annotations

import hashlib
import struct

import coincurve
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.keytypes import hd, kinds, lms, mldsa
from libs.keytypes.sealed import material_aad
from proto.common import ExtendedPublic, HssShape
from proto.errors import ErrorCode, LantauError


def blob_aad(
    key_id: str, key_type: str, hss: HssShape | None, created: str, public_key: bytes
) -> bytes:
    """The AAD of a sealed blob: key id, key type with its HSS shape, the creation record
    (``created``: its statement hash, "" for none) and the public key. A blob opens for
    no other record, and once it opens its record's public key is the material's.

    The shape is bound because LM-OTS private keys depend on SEED, I and the leaf only:
    the same material under another height or W would reuse one-time keys.
    """
    label = key_type
    if hss is not None:
        label += f"/L{hss.levels}/H{hss.height}/W{hss.winternitz}"
    binding = created.encode() + b"\x00" + hashlib.sha256(public_key).digest()
    return material_aad(key_id, label) + struct.pack(">H", len(binding)) + binding


def check_material(key_type: str, material: bytes | bytearray) -> None:
    """Refuse material of the wrong length (or a seed BIP32 calls invalid: draw again)."""
    want = kinds.MATERIAL_LEN.get(key_type)
    if want is None:
        raise LantauError(ErrorCode.KEY_TYPE_UNSUPPORTED, f"{key_type} is not kept as material")
    if len(material) != want:
        raise LantauError(
            ErrorCode.INVALID_SEED, f"{key_type} material is {want} bytes, got {len(material)}"
        )
    if kinds.is_hd(key_type):
        hd.master_key(material, kinds.hd_curve(key_type))


def public_key(key_type: str, material: bytes | bytearray, hss: HssShape | None = None) -> bytes:
    """The key's public key: an HD root's master key, ML-DSA's pkEncode, HSS's public key."""
    check_material(key_type, material)
    if kinds.is_hd(key_type):
        return hd.master_key(material, kinds.hd_curve(key_type)).public().public_key
    if key_type == "ml-dsa-65":
        return mldsa.public_key(material, "ML-DSA-65")
    assert key_type == "lms-hss"
    if hss is None:
        raise LantauError(ErrorCode.INVALID_FIELD, "an lms-hss key needs its shape")
    return lms.public_key(kinds.hss_parameters(hss), material)


def extended(key: hd.ExtendedPublicKey, path: str) -> ExtendedPublic:
    """The wire form of an extended public key (with its xpub for secp256k1)."""
    return ExtendedPublic(
        path=path,
        public_key=key.public_key,
        chain_code=key.chain_code,
        depth=key.depth,
        parent_fingerprint=key.parent_fingerprint,
        child_number=key.child_number,
        xpub=hd.serialize_xpub(key) if key.curve == "secp256k1" else "",
    )


def hd_public(key_type: str, material: bytes | bytearray, path: str) -> ExtendedPublic:
    """The extended public key at ``path`` of an HD root (hardened steps need the seed)."""
    check_material(key_type, material)
    curve = kinds.hd_curve(key_type)
    return extended(hd.derive_private(material, path, curve).public(), path)


def sign(key_type: str, material: bytes | bytearray, data: bytes, path: str | None) -> bytes:
    """One signature of a stateless type: r||s (low S) for an HD secp256k1 child, RFC 8032
    for an HD Ed25519 child, FIPS 204 (hedged, empty context) for ML-DSA-65."""
    check_material(key_type, material)
    if kinds.is_hd(key_type):
        if path is None:
            raise LantauError(ErrorCode.INVALID_DERIVATION_PATH, "an HD key signs at a path")
        child = hd.derive_private(material, path, kinds.hd_curve(key_type))
        if key_type == "bip32-secp256k1":
            if len(data) != 32:
                raise LantauError(ErrorCode.INVALID_PAYLOAD, "ECDSA signs a 32-byte digest")
            # libsecp256k1 signs with RFC 6979 nonces and always returns low S.
            return coincurve.PrivateKey(child.private_key).sign_recoverable(data, hasher=None)[:64]
        return Ed25519PrivateKey.from_private_bytes(child.private_key).sign(data)
    if key_type == "ml-dsa-65":
        return mldsa.sign(material, data, "ML-DSA-65", kinds.MLDSA_CONTEXT)
    raise LantauError(
        ErrorCode.KEY_TYPE_UNSUPPORTED,
        f"{key_type} is stateful: it signs only inside a leased index range",
    )


def child_public(key_type: str, xpubs: list[ExtendedPublic], path: str) -> bytes | None:
    """The public key at ``path`` derived without an HSM from the exported extended public
    keys: the nearest exported ancestor, then non-hardened steps (BIP32 CKDpub). None
    when no exported key leads there (a hardened step below every export, or Ed25519,
    which has no public derivation)."""
    curve = kinds.hd_curve(key_type)
    best: ExtendedPublic | None = None
    for x in xpubs:
        if (path == x.path or path.startswith(x.path + "/")) and (
            best is None or len(x.path) > len(best.path)
        ):
            best = x
    if best is None:
        return None
    if best.path == path:
        return best.public_key
    if curve != "secp256k1":
        return None
    rest = path[len(best.path) + 1 :]
    if "'" in rest:
        return None
    parent = hd.ExtendedPublicKey(
        curve="secp256k1",
        depth=best.depth,
        parent_fingerprint=best.parent_fingerprint,
        child_number=best.child_number,
        chain_code=best.chain_code,
        public_key=best.public_key,
    )
    return hd.derive_public(parent, "m/" + rest).public_key
