"""One PKCS#11 token through python-pkcs11: the raw operations, with no checks of who
asks. Only ``libs.hsm.guard.Guard`` (the hsm-node's evidence check) calls them for work.

PKCS#11 calls block, so they run on worker threads, one session per thread
(sessions are not thread-safe). Login is per application: one session logs in at
start and stays open; worker sessions share that login and never log out. The
default is one worker: python-pkcs11 calls C_Initialize(NULL), so SoftHSM runs
without locks and two threads in it at once crash the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from libs.curves import ec_point_from_public_key, public_key_from_ec_point
from proto.common import Curve
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import HsmCapabilities, HsmKey

T = TypeVar("T")

# Every private key Lantau stores, generated or unwrapped: sensitive, extractable only
# wrapped under a trusted key (the domain KEK), and usable for signing only: no ECDH
# (DERIVE), no DECRYPT/UNWRAP, no sign-recover. Not copyable and not modifiable, so
# that nobody holding the PIN can later add a right (measured on SoftHSM 2.6.1: with
# CKA_MODIFIABLE true, C_SetAttributeValue turns CKA_DERIVE on). A clone gets exactly
# the original's rights; tests/backup/test_token_rights.py reads them back with
# pkcs11-tool and softhsm2-dump-file.
PRIVATE_KEY_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.SIGN: True,
    Attribute.SIGN_RECOVER: False,
    Attribute.DERIVE: False,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.COPYABLE: False,
    # Last: SoftHSM 2.6.1 applies a template attribute by attribute and, when unwrapping,
    # refuses every attribute after CKA_MODIFIABLE went false (CKR_ATTRIBUTE_READ_ONLY).
    Attribute.MODIFIABLE: False,
}
# The public half, generated or written next to a clone: verify only, unchangeable.
PUBLIC_KEY_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.VERIFY_RECOVER: False,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
    Attribute.COPYABLE: False,
    Attribute.MODIFIABLE: False,
}
# python-pkcs11 fills these in for a private key and SoftHSM refuses them
# (AttributeTypeInvalid): DEFAULT leaves them out of the template.
_NOT_ON_PRIVATE_KEYS = {
    a: pkcs11.DEFAULT for a in (Attribute.ENCRYPT, Attribute.VERIFY, Attribute.WRAP)
}
_PROBE_LABEL = "lantau-probe"

_CURVE_PARAMS = {
    "secp256k1": (KeyType.EC, "secp256k1", None, Mechanism.ECDSA),
    # 1.3.101.112 is id-Ed25519 (RFC 8410).
    "ed25519": (
        KeyType.EC_EDWARDS,
        "1.3.101.112",
        Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        Mechanism.EDDSA,
    ),
}


class Pkcs11Token:
    """One token (one HSM, or one HA slot of a vendor client), several sessions."""

    def __init__(
        self,
        module: str,
        token_label: str,
        pin: str,
        *,
        sessions: int = 1,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        """``executor``: worker threads shared with other slots of the same module (a
        module initialised without locking, like SoftHSM here, must see one thread)."""
        self.name = token_label
        self._lib = pkcs11.lib(module)
        try:
            self._token = self._lib.get_token(token_label=token_label)
        except pkcs11.NoSuchToken:
            raise LantauError(
                ErrorCode.HSM_UNAVAILABLE, f"no token labelled {token_label!r}"
            ) from None
        try:
            self._login_session = self._token.open(rw=True, user_pin=pin)
        except pkcs11.PinIncorrect:
            raise LantauError(
                ErrorCode.HSM_UNAVAILABLE, f"token {token_label!r} refused the PIN"
            ) from None
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._sessions_lock = threading.Lock()
        # Generation is serialised so two requests for one key id cannot make two keys.
        self._generate_lock = threading.Lock()
        self._owns_pool = executor is None
        self._pool = executor or ThreadPoolExecutor(
            max_workers=sessions, thread_name_prefix=f"p11-{token_label}"
        )

    # -- thread-side helpers -------------------------------------------------

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._token.open(rw=True)
            self._local.session = session
            self._local.keys = {}
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _private_key(self, key_id: str) -> Any:
        cache: dict[str, Any] = self._local.keys if hasattr(self._local, "keys") else {}
        key = cache.get(key_id)
        if key is None:
            key = _find(self._session(), ObjectClass.PRIVATE_KEY, key_id)
            self._local.keys[key_id] = key
        return key

    def _public(self, key_id: str, curve: Curve | None = None) -> HsmKey:
        pub = _find(self._session(), ObjectClass.PUBLIC_KEY, key_id)
        found = _curve_of(pub)
        if curve is not None and found != curve:
            raise LantauError(ErrorCode.CURVE_MISMATCH, f"key {key_id} is {found}, not {curve}")
        return HsmKey(
            key_id=key_id,
            curve=found,
            public_key=public_key_from_ec_point(found, pub[Attribute.EC_POINT]),
        )

    def _generate(self, key_id: str, curve: Curve) -> HsmKey:
        with self._generate_lock:
            try:
                return self._public(key_id, curve)
            except LantauError as e:
                if e.code != ErrorCode.UNKNOWN_KEY:
                    raise
            key_type, oid, mechanism, _ = _params(curve)
            session = self._session()
            params = session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(oid)}, local=True
            )
            pub, _priv = params.generate_keypair(
                store=True,
                label=key_id,
                id=key_id.encode(),
                mechanism=mechanism,
                public_template=PUBLIC_KEY_TEMPLATE,
                private_template={**_NOT_ON_PRIVATE_KEYS, **PRIVATE_KEY_TEMPLATE},
            )
            return HsmKey(
                key_id=key_id,
                curve=curve,
                public_key=public_key_from_ec_point(curve, pub[Attribute.EC_POINT]),
                created=True,
            )

    def _sign(self, key_id: str, curve: Curve, data: bytes) -> bytes:
        key = self._private_key(key_id)
        mechanism = _params(curve)[3]
        try:
            return bytes(key.sign(data, mechanism=mechanism))
        except pkcs11.KeyTypeInconsistent:
            raise LantauError(
                ErrorCode.CURVE_MISMATCH, f"key {key_id} is not a {curve} key"
            ) from None

    def _wrap(self, key_id: str, kek_label: str) -> bytes:
        session = self._session()
        kek = _find_secret(session, kek_label)
        key = _find(session, ObjectClass.PRIVATE_KEY, key_id)
        try:
            return bytes(kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD))
        except pkcs11.KeyNotWrappable:
            raise LantauError(
                ErrorCode.KEY_NOT_WRAPPABLE,
                f"token {self.name} cannot wrap key {key_id} (its key type is not exportable)",
            ) from None

    def _unwrap(
        self, key_id: str, curve: Curve, kek_label: str, wrapped: bytes, public_key: bytes
    ) -> HsmKey:
        with self._generate_lock:
            try:
                existing = self._public(key_id, curve)
            except LantauError as e:
                if e.code != ErrorCode.UNKNOWN_KEY:
                    raise
            else:
                if existing.public_key != public_key:
                    raise LantauError(
                        ErrorCode.KEY_EXISTS, f"a different key {key_id} is already on this HSM"
                    )
                return existing
            session = self._session()
            kek = _find_secret(session, kek_label)
            key_type, oid, _, _ = _params(curve)
            params = encode_named_curve_parameters(oid)
            priv = kek.unwrap_key(
                ObjectClass.PRIVATE_KEY,
                key_type,
                wrapped,
                label=key_id,
                id=key_id.encode(),
                store=True,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                template={**_NOT_ON_PRIVATE_KEYS, **PRIVATE_KEY_TEMPLATE},
            )
            try:
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.KEY_TYPE: key_type,
                        Attribute.LABEL: key_id,
                        Attribute.ID: key_id.encode(),
                        Attribute.EC_PARAMS: params,
                        Attribute.EC_POINT: ec_point_from_public_key(curve, public_key),
                        **PUBLIC_KEY_TEMPLATE,
                    }
                )
            except pkcs11.PKCS11Error:
                priv.destroy()  # never leave a private key without its public half
                raise
            return HsmKey(key_id=key_id, curve=curve, public_key=public_key, created=True)

    def _key_ids(self) -> list[str]:
        session = self._session()
        found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        # Signing keys only: an SO ceremony's transient RSA transport key is not one.
        return sorted(str(k.label) for k in found if k.key_type in (KeyType.EC, KeyType.EC_EDWARDS))

    async def key_ids(self) -> list[str]:
        """The ids of every signing key the token holds (what a backup set contains)."""
        return await self._run(self._key_ids)

    async def run_with_session(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` on this token's worker thread, with that thread's session
        (how sealed key material is drawn, sealed and opened: libs/hsm/sealed_keys.py)."""
        return await self._run(lambda: fn(self._session()))

    async def wrap(self, key_id: str, kek_label: str) -> bytes:
        return await self._run(self._wrap, key_id, kek_label)

    async def unwrap(
        self, key_id: str, curve: Curve, kek_label: str, wrapped: bytes, public_key: bytes
    ) -> HsmKey:
        return await self._run(self._unwrap, key_id, curve, kek_label, wrapped, public_key)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except (LantauError, TransientError):
            raise
        except pkcs11.PKCS11Error as e:
            # Token-level failures (device error, session closed) may pass on another node.
            raise TransientError(
                ErrorCode.HSM_ERROR, f"token {self.name}: {type(e).__name__}"
            ) from None

    # -- HsmBackend ----------------------------------------------------------

    async def generate(self, key_id: str, curve: Curve) -> HsmKey:
        return await self._run(self._generate, key_id, curve)

    async def public_key(self, key_id: str) -> HsmKey:
        return await self._run(self._public, key_id)

    async def sign(self, key_id: str, curve: Curve, data: bytes) -> bytes:
        return await self._run(self._sign, key_id, curve, data)

    async def probe(self) -> None:
        """Any answer from the token proves it serves; only token failures raise."""
        try:
            await self._run(self._public, _PROBE_LABEL)
        except LantauError:
            return

    async def capabilities(self) -> HsmCapabilities:
        return await self._run(self._capabilities)

    def _capabilities(self) -> HsmCapabilities:
        mechanisms = {m.name for m in self._token.slot.get_mechanisms() if hasattr(m, "name")}
        key_types = []
        if {"ECDSA", "EC_KEY_PAIR_GEN"} <= mechanisms:
            key_types.append("secp256k1")
        if {"EDDSA", "EC_EDWARDS_KEY_PAIR_GEN"} <= mechanisms:
            key_types.append("ed25519")
        wrappable = []
        if "AES_KEY_WRAP_PAD" in mechanisms:
            wrappable.append("secp256k1")
            # SoftHSM 2.6 answers CKR_KEY_NOT_WRAPPABLE for EdDSA keys whatever the
            # attributes (measured); other tokens are asked, not assumed to fail.
            if "ed25519" in key_types and "SoftHSM" not in self._token.manufacturer_id:
                wrappable.append("ed25519")
        return HsmCapabilities(
            mechanisms=sorted(mechanisms), key_types=key_types, wrappable=wrappable
        )

    async def close(self) -> None:
        if self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._close_sessions()
        else:  # the shared worker thread owns the sessions: close them there
            await asyncio.get_running_loop().run_in_executor(self._pool, self._close_sessions)

    def _close_sessions(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                _quietly(session.close)
            self._sessions.clear()
        _quietly(self._login_session.close)


def _params(curve: str) -> tuple[Any, str, Any, Any]:
    try:
        return _CURVE_PARAMS[curve]
    except KeyError:
        raise LantauError(
            ErrorCode.KEY_TYPE_UNSUPPORTED, f"{curve} keys are not token objects here"
        ) from None


def _find(session: Any, object_class: ObjectClass, key_id: str) -> Any:
    try:
        return session.get_key(object_class=object_class, label=key_id)
    except pkcs11.NoSuchKey:
        raise LantauError(ErrorCode.UNKNOWN_KEY, f"key {key_id} is not on this HSM") from None
    except pkcs11.MultipleObjectsReturned:
        raise LantauError(ErrorCode.HSM_ERROR, f"key {key_id} exists twice on this HSM") from None


def _find_secret(session: Any, label: str) -> Any:
    try:
        return session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
    except pkcs11.NoSuchKey:
        raise TransientError(
            ErrorCode.HSM_UNAVAILABLE, f"this HSM holds no domain key {label!r}: admit it first"
        ) from None


def _curve_of(pub: Any) -> Curve:
    if pub.key_type == KeyType.EC_EDWARDS:
        return "ed25519"
    if pub[Attribute.EC_PARAMS] == encode_named_curve_parameters("secp256k1"):
        return "secp256k1"
    raise LantauError(ErrorCode.CURVE_MISMATCH, "key uses a curve Lantau does not sign with")


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except pkcs11.PKCS11Error:
        pass
