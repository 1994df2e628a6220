"""Signature normalisation and software verification, against independent libraries."""

import hashlib

import coincurve
import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from libs import curves
from proto.errors import ErrorCode, LantauError


def high_s(compact: bytes) -> bytes:
    s = int.from_bytes(compact[32:64], "big")
    return compact[:32] + (curves.SECP256K1_N - s).to_bytes(32, "big")


@pytest.mark.parametrize("seed", range(20))
def test_secp256k1_low_s_and_recovery_id(seed):
    key = coincurve.PrivateKey(hashlib.sha256(bytes([seed])).digest())
    digest = hashlib.sha256(b"tx" + bytes([seed])).digest()
    rec = key.sign_recoverable(digest, hasher=None)
    pub = key.public_key.format()
    for raw in (rec[:64], high_s(rec[:64])):
        final = curves.finalize("secp256k1", pub, digest, raw)
        s = int.from_bytes(final.signature[32:], "big")
        assert s <= curves.SECP256K1_N // 2
        assert final.recovery_id == rec[64]
        # An independent library (OpenSSL via cryptography) accepts it.
        r = int.from_bytes(final.signature[:32], "big")
        der = utils.encode_dss_signature(r, s)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub).verify(
            der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )


def test_secp256k1_wrong_key_is_refused():
    key, other = coincurve.PrivateKey(), coincurve.PrivateKey()
    digest = hashlib.sha256(b"x").digest()
    raw = key.sign_recoverable(digest, hasher=None)[:64]
    with pytest.raises(LantauError) as e:
        curves.finalize("secp256k1", other.public_key.format(), digest, raw)
    assert e.value.code == ErrorCode.SIGNATURE_VERIFICATION_FAILED


def test_ed25519_verifies_and_rejects_tampering():
    key = nacl.signing.SigningKey.generate()
    sig = key.sign(b"hello").signature
    pub = key.verify_key.encode()
    assert curves.finalize("ed25519", pub, b"hello", sig).signature == sig
    with pytest.raises(LantauError):
        curves.finalize("ed25519", pub, b"hellO", sig)


@pytest.mark.parametrize(
    ("curve", "kind", "payload"),
    [
        ("secp256k1", "message", b"x" * 32),
        ("secp256k1", "digest", b"x" * 31),
        ("ed25519", "digest", b"x" * 32),
        ("ed25519", "message", b""),
    ],
)
def test_payload_rules(curve, kind, payload):
    with pytest.raises(LantauError) as e:
        curves.check_payload(curve, kind, payload)
    assert e.value.code == ErrorCode.INVALID_PAYLOAD


def test_ec_point_decoding():
    key = coincurve.PrivateKey()
    uncompressed = key.public_key.format(compressed=False)
    der = bytes([0x04, len(uncompressed)]) + uncompressed
    assert curves.public_key_from_ec_point("secp256k1", der) == key.public_key.format()
    ed = nacl.signing.SigningKey.generate().verify_key.encode()
    assert curves.public_key_from_ec_point("ed25519", b"\x04\x20" + ed) == ed
