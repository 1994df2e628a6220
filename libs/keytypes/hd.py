"""Hierarchical deterministic keys: BIP32 on secp256k1, SLIP-10 on Ed25519 (hardened only).

Pure: the caller passes the seed it has just unsealed. EC arithmetic is coincurve's
(libsecp256k1), Ed25519 public keys are cryptography's, Base58Check is the `base58`
package's; this module only composes them as the two specifications say.

Invalid-key cases (probability below 2^-127 per step on secp256k1) follow BIP32, not
SLIP-10's retry: a seed whose master key is invalid is refused, and an index whose
child is invalid is refused so the caller moves to the next index.

Paths are absolute ("m/44'/60'/0'/0/7", "h" or "H" also mark hardened) and written
canonically: no leading zeros, no raw indices >= 2^31, so one key has one path
string (policies match on it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, field
from typing import Literal

import base58
import coincurve
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proto.errors import ErrorCode, LantauError

HdCurve = Literal["secp256k1", "ed25519"]
Network = Literal["mainnet", "testnet"]

HARDENED = 0x80000000
MAX_DEPTH = 255  # the serialised depth is one byte
SEED_MIN, SEED_MAX = 16, 64  # 128 to 512 bits, as both specifications require

_MASTER_HMAC_KEY: dict[str, bytes] = {"secp256k1": b"Bitcoin seed", "ed25519": b"ed25519 seed"}
_VERSIONS: dict[tuple[Network, bool], bytes] = {
    ("mainnet", False): bytes.fromhex("0488b21e"),  # xpub
    ("mainnet", True): bytes.fromhex("0488ade4"),  # xprv
    ("testnet", False): bytes.fromhex("043587cf"),  # tpub
    ("testnet", True): bytes.fromhex("04358394"),  # tprv
}
_NETWORK_OF = {v: k for k, v in _VERSIONS.items()}
_STEP = re.compile(r"(0|[1-9][0-9]{0,9})(['hH]?)")
_MAX_PATH_CHARS = 4096


class ExtendedPublicKey(msgspec.Struct, frozen=True, kw_only=True):
    """A public key with what derivation needs: BIP32's (K, c) plus its place in the tree."""

    curve: HdCurve
    depth: int
    parent_fingerprint: bytes  # 4 bytes, zero for the master
    child_number: int  # index of this key under its parent, HARDENED bit included
    chain_code: bytes  # 32 bytes
    public_key: bytes  # secp256k1: 33-byte compressed point; ed25519: 32 raw bytes

    @property
    def fingerprint(self) -> bytes:
        """First 4 bytes of HASH160 of the serialised public key (BIP32, SLIP-10)."""
        return _hash160(_ser_p(self.curve, self.public_key))[:4]


@dataclass(frozen=True, slots=True)
class ExtendedPrivateKey:
    """A private key and its chain code; its repr never shows either."""

    curve: HdCurve
    depth: int
    parent_fingerprint: bytes
    child_number: int
    chain_code: bytes = field(repr=False)
    private_key: bytes = field(repr=False)

    def public(self) -> ExtendedPublicKey:
        """The matching extended public key (watch-only form)."""
        return ExtendedPublicKey(
            curve=self.curve,
            depth=self.depth,
            parent_fingerprint=self.parent_fingerprint,
            child_number=self.child_number,
            chain_code=self.chain_code,
            public_key=_public_key(self.curve, self.private_key),
        )

    @property
    def fingerprint(self) -> bytes:
        return self.public().fingerprint


class Ed25519PublicExport(msgspec.Struct, frozen=True, kw_only=True):
    """Ed25519 has no standard xpub: the SLIP-10 public key and chain code as hex."""

    public_key: str  # 32 bytes, hex
    chain_code: str  # 32 bytes, hex
    depth: int
    parent_fingerprint: str  # 4 bytes, hex
    child_number: int


# -- paths ------------------------------------------------------------------------


def parse_path(path: str, curve: HdCurve) -> tuple[int, ...]:
    """Indices of an absolute path such as "m/44'/60'/0'/0/7" (hardened ones >= 2^31)."""
    if not isinstance(path, str) or len(path) > _MAX_PATH_CHARS:
        raise LantauError(ErrorCode.INVALID_DERIVATION_PATH, "path must be a short string")
    parts = path.split("/")
    if parts[0] != "m":
        raise LantauError(ErrorCode.INVALID_DERIVATION_PATH, f"path {path!r} must start with 'm'")
    steps = parts[1:]
    if len(steps) > MAX_DEPTH:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            f"path has {len(steps)} steps; extended keys allow at most {MAX_DEPTH}",
        )
    indices = []
    for n, step in enumerate(steps, start=1):
        m = _STEP.fullmatch(step)
        if m is None:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH,
                f"step {n} {step!r} is not an index: digits without leading zeros, "
                "then ' or h for hardened",
            )
        value, hardened = int(m.group(1)), bool(m.group(2))
        if value >= HARDENED:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH,
                f"step {n} index {value} is out of range: at most {HARDENED - 1}, "
                "marked ' for hardened",
            )
        if curve == "ed25519" and not hardened:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH,
                f"step {n} {step!r} is not hardened: ed25519 (SLIP-10) derives hardened "
                "children only",
            )
        indices.append(value | HARDENED if hardened else value)
    return tuple(indices)


def format_path(indices: tuple[int, ...] | list[int]) -> str:
    """The canonical path string of a list of indices."""
    return "/".join(["m"] + [f"{i - HARDENED}'" if i >= HARDENED else str(i) for i in indices])


# -- derivation -------------------------------------------------------------------


def master_key(seed: bytes | bytearray, curve: HdCurve) -> ExtendedPrivateKey:
    """The master extended private key of a 16..64-byte seed."""
    if curve not in _MASTER_HMAC_KEY:
        raise LantauError(ErrorCode.INVALID_FIELD, f"unsupported HD curve {curve!r}")
    if not SEED_MIN <= len(seed) <= SEED_MAX:
        raise LantauError(
            ErrorCode.INVALID_SEED,
            f"seed must be {SEED_MIN}..{SEED_MAX} bytes, got {len(seed)}",
        )
    digest = hmac.digest(_MASTER_HMAC_KEY[curve], seed, "sha512")
    key, chain = digest[:32], digest[32:]
    if curve == "secp256k1" and not _valid_scalar(key):
        raise LantauError(
            ErrorCode.INVALID_SEED, "this seed gives an invalid BIP32 master key; draw another"
        )
    return ExtendedPrivateKey(
        curve=curve,
        depth=0,
        parent_fingerprint=bytes(4),
        child_number=0,
        chain_code=chain,
        private_key=key,
    )


def ckd_priv(parent: ExtendedPrivateKey, index: int) -> ExtendedPrivateKey:
    """CKDpriv: the child private key at ``index`` (hardened when >= 2^31)."""
    _check_index(index)
    _check_depth(parent.depth + 1)
    hardened = index >= HARDENED
    if parent.curve == "ed25519" and not hardened:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            f"index {index} is not hardened: ed25519 (SLIP-10) derives hardened children only",
        )
    if hardened:
        data = b"\x00" + parent.private_key + struct.pack(">I", index)
    else:
        data = _public_key(parent.curve, parent.private_key) + struct.pack(">I", index)
    digest = hmac.digest(parent.chain_code, data, "sha512")
    tweak, chain = digest[:32], digest[32:]
    if parent.curve == "ed25519":
        child = tweak
    else:
        try:
            child = coincurve.PrivateKey(parent.private_key).add(tweak).secret
        except ValueError:
            raise _invalid_child(index) from None
    return ExtendedPrivateKey(
        curve=parent.curve,
        depth=parent.depth + 1,
        parent_fingerprint=parent.fingerprint,
        child_number=index,
        chain_code=chain,
        private_key=child,
    )


def ckd_pub(parent: ExtendedPublicKey, index: int) -> ExtendedPublicKey:
    """CKDpub: the child public key at a non-hardened ``index`` (secp256k1 only)."""
    _check_index(index)
    _check_depth(parent.depth + 1)
    if parent.curve != "secp256k1":
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            "ed25519 has no public derivation: derive from the private key",
        )
    if index >= HARDENED:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            f"index {index - HARDENED}' is hardened: it needs the private key",
        )
    digest = hmac.digest(parent.chain_code, parent.public_key + struct.pack(">I", index), "sha512")
    tweak, chain = digest[:32], digest[32:]
    try:
        child = coincurve.PublicKey(parent.public_key).add(tweak).format(compressed=True)
    except ValueError:
        raise _invalid_child(index) from None
    return ExtendedPublicKey(
        curve="secp256k1",
        depth=parent.depth + 1,
        parent_fingerprint=parent.fingerprint,
        child_number=index,
        chain_code=chain,
        public_key=child,
    )


def derive_private(seed: bytes | bytearray, path: str, curve: HdCurve) -> ExtendedPrivateKey:
    """The extended private key at an absolute path from the seed."""
    indices = parse_path(path, curve)
    key = master_key(seed, curve)
    for index in indices:
        key = ckd_priv(key, index)
    return key


def derive_public(parent: ExtendedPublicKey, path: str) -> ExtendedPublicKey:
    """Watch-only derivation below ``parent``; ``path`` is relative ("m" is ``parent``)."""
    indices = parse_path(path, parent.curve)
    _check_depth(parent.depth + len(indices))
    key = parent
    for index in indices:
        key = ckd_pub(key, index)
    return key


# -- serialisation ----------------------------------------------------------------


def serialize_xpub(key: ExtendedPublicKey, network: Network = "mainnet") -> str:
    """Base58Check xpub (mainnet) or tpub (testnet); secp256k1 only."""
    _check_serialisable(key.curve)
    return _serialize(_VERSIONS[(network, False)], key, key.public_key)


def serialize_xprv(key: ExtendedPrivateKey, network: Network = "mainnet") -> str:
    """Base58Check xprv or tprv: the whole subtree's secret, for backups only."""
    _check_serialisable(key.curve)
    return _serialize(_VERSIONS[(network, True)], key, b"\x00" + key.private_key)


def export_ed25519(key: ExtendedPublicKey) -> Ed25519PublicExport:
    """The SLIP-10 Ed25519 public key and chain code, for records (there is no xpub)."""
    if key.curve != "ed25519":
        raise LantauError(ErrorCode.CURVE_MISMATCH, "export_ed25519 takes an ed25519 key")
    return Ed25519PublicExport(
        public_key=key.public_key.hex(),
        chain_code=key.chain_code.hex(),
        depth=key.depth,
        parent_fingerprint=key.parent_fingerprint.hex(),
        child_number=key.child_number,
    )


def parse_extended_key(text: str) -> tuple[ExtendedPublicKey | ExtendedPrivateKey, Network]:
    """Decode and check an xpub/xprv/tpub/tprv (BIP32 test vector 5 lists what is refused)."""
    if not isinstance(text, str) or len(text) > 120:
        raise LantauError(ErrorCode.INVALID_EXTENDED_KEY, "extended key must be a short string")
    try:
        raw = base58.b58decode_check(text)
    except ValueError:
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, "extended key is not valid Base58Check"
        ) from None
    if len(raw) != 78:
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, f"extended key is {len(raw)} bytes, expected 78"
        )
    version, depth, parent, child = raw[:4], raw[4], raw[5:9], raw[9:13]
    chain, key_data = raw[13:45], raw[45:]
    if version not in _NETWORK_OF:
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, f"unknown extended key version {version.hex()}"
        )
    network, private = _NETWORK_OF[version]
    child_number = int.from_bytes(child, "big")
    if depth == 0 and parent != bytes(4):
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, "a depth-0 key must have a zero parent fingerprint"
        )
    if depth == 0 and child_number != 0:
        raise LantauError(ErrorCode.INVALID_EXTENDED_KEY, "a depth-0 key must have index 0")
    common = {
        "curve": "secp256k1",
        "depth": depth,
        "parent_fingerprint": parent,
        "child_number": child_number,
        "chain_code": chain,
    }
    if private:
        if key_data[0] != 0:
            raise LantauError(
                ErrorCode.INVALID_EXTENDED_KEY, "private key data must start with 0x00"
            )
        if not _valid_scalar(key_data[1:]):
            raise LantauError(ErrorCode.INVALID_EXTENDED_KEY, "private key is not in 1..n-1")
        return ExtendedPrivateKey(private_key=key_data[1:], **common), network  # type: ignore[arg-type]
    if key_data[0] not in (2, 3):
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, "public key must be a compressed point (02/03)"
        )
    try:
        coincurve.PublicKey(key_data)
    except ValueError:
        raise LantauError(
            ErrorCode.INVALID_EXTENDED_KEY, "public key is not a point on secp256k1"
        ) from None
    return ExtendedPublicKey(public_key=key_data, **common), network  # type: ignore[arg-type]


# -- helpers ----------------------------------------------------------------------


def _serialize(version: bytes, key: ExtendedPublicKey | ExtendedPrivateKey, key_data: bytes) -> str:
    raw = (
        version
        + bytes([key.depth])
        + key.parent_fingerprint
        + struct.pack(">I", key.child_number)
        + key.chain_code
        + key_data
    )
    return base58.b58encode_check(raw).decode()


def _check_serialisable(curve: HdCurve) -> None:
    if curve != "secp256k1":
        raise LantauError(
            ErrorCode.CURVE_MISMATCH,
            "xpub/xprv exist for secp256k1 only; export ed25519 keys with export_ed25519",
        )


def _public_key(curve: HdCurve, private_key: bytes) -> bytes:
    if curve == "secp256k1":
        return coincurve.PublicKey.from_secret(private_key).format(compressed=True)
    return (
        Ed25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def _ser_p(curve: HdCurve, public_key: bytes) -> bytes:
    # SLIP-10 serialises an Ed25519 point as 0x00 || ENC(point): 33 bytes, like secp256k1.
    return public_key if curve == "secp256k1" else b"\x00" + public_key


def _hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def _valid_scalar(k: bytes) -> bool:
    try:
        coincurve.PrivateKey(k)
    except ValueError:
        return False
    return True


def _check_index(index: int) -> None:
    if not 0 <= index < 2**32:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH, f"index {index} is out of range 0..2^32-1"
        )


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise LantauError(
            ErrorCode.INVALID_DERIVATION_PATH,
            f"depth {depth} is beyond {MAX_DEPTH}, the deepest an extended key can record",
        )


def _invalid_child(index: int) -> LantauError:
    return LantauError(
        ErrorCode.INVALID_DERIVATION_PATH,
        f"index {index} gives an invalid key (BIP32: use the next index)",
    )
