"""The keys that sign authorizations: policy's (over every order) and the backup
service's (over every clone). Ed25519, held in a PKCS#11 token where there is one, else
in a 0600 seed file; the hsm-nodes pin the public halves ([evidence] in the config).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import nacl.signing
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from libs.config import AuthorityConfig, ConfigError
from libs.curves import public_key_from_ec_point

_ED25519_OID = "1.3.101.112"
T = TypeVar("T")


class AuthorityKey(Protocol):
    public_hex: str

    async def sign(self, data: bytes) -> bytes: ...

    async def close(self) -> None: ...


class SoftwareAuthority:
    """An Ed25519 key from a seed file: for development, or where no token exists."""

    def __init__(self, seed_file: str) -> None:
        try:
            seed = bytes.fromhex(Path(seed_file).read_text().strip())
            self._key = nacl.signing.SigningKey(seed)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"authority seed file {seed_file}: {type(e).__name__}") from None
        self.public_hex = self._key.verify_key.encode().hex()

    async def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)

    async def close(self) -> None:
        return None


class TokenAuthority:
    """An Ed25519 key inside a PKCS#11 token: the private half never leaves it."""

    def __init__(self, cfg: AuthorityConfig) -> None:
        if cfg.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = cfg.softhsm_conf
        pin = _read_pin(cfg)
        try:
            token = pkcs11.lib(cfg.module).get_token(token_label=cfg.token_label)
            # Read-write: policy also keeps its second-factor sealing key in this token
            # (made on first use: services/policy/second_factors.py).
            self._session = token.open(rw=True, user_pin=pin)
            self._private: Any = self._session.get_key(
                object_class=ObjectClass.PRIVATE_KEY, label=cfg.key_label
            )
            public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=cfg.key_label)
        except (pkcs11.PKCS11Error, pkcs11.NoSuchKey, pkcs11.NoSuchToken) as e:
            raise ConfigError(
                f"authority key {cfg.key_label!r} on token {cfg.token_label!r}: {type(e).__name__}"
            ) from None
        self.public_hex = public_key_from_ec_point("ed25519", public[Attribute.EC_POINT]).hex()
        # Sessions are not thread-safe: one worker thread owns this one.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authority")

    async def sign(self, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._sign, data)

    def _sign(self, data: bytes) -> bytes:
        return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))

    async def in_token(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` on the one worker thread that owns the token's session."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self._session)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._session.close()


def load(cfg: AuthorityConfig) -> AuthorityKey:
    if cfg.seed_file:
        return SoftwareAuthority(cfg.seed_file)
    return TokenAuthority(cfg)


def _read_pin(cfg: AuthorityConfig) -> str:
    if not cfg.pin_file:
        raise ConfigError("a token authority key needs pin_file")
    try:
        pin = Path(cfg.pin_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read authority pin_file: {e.strerror}") from None
    if not pin:
        raise ConfigError("the authority pin_file is empty")
    return pin


def create_token_key(cfg: AuthorityConfig, label: str) -> str:
    """The ceremony: a new Ed25519 authority key in the token (sensitive, never
    extractable, sign only); returns its public key in hex. Refuses an existing label."""
    if cfg.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = cfg.softhsm_conf
    pin = _read_pin(cfg)
    token = pkcs11.lib(cfg.module).get_token(token_label=cfg.token_label)
    with token.open(rw=True, user_pin=pin) as session:
        try:
            session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        except pkcs11.NoSuchKey:
            pass
        else:
            raise ConfigError(f"token {cfg.token_label!r} already has a key labelled {label!r}")
        params = session.create_domain_parameters(
            KeyType.EC_EDWARDS,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
            local=True,
        )
        public, _ = params.generate_keypair(
            store=True,
            label=label,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
            private_template=_AUTHORITY_PRIVATE,
        )
        return public_key_from_ec_point("ed25519", public[Attribute.EC_POINT]).hex()


_AUTHORITY_PRIVATE: dict[Any, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DERIVE: False,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.ENCRYPT: pkcs11.DEFAULT,
    Attribute.VERIFY: pkcs11.DEFAULT,
    Attribute.WRAP: pkcs11.DEFAULT,
}
