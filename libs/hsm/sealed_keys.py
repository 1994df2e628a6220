"""The hsm-node's key types that its token has no mechanism for: material from the
token's RNG, kept only sealed under the domain sealing key, opened in this process for
one operation and wiped.

Only the guard calls this, after the evidence check (and the residency check of the
sealed record against this node's region). The token is touched on its own worker
thread (sessions are not thread-safe; SoftHSM runs unlocked); pure work that can take
long (HSS trees) runs on another thread with the material the worker handed over.

Stateful keys (lms-hss): a node signs only at indices of a range it leased by
compare-and-set in the shared ledger, and the lease is durable before any index of it
is used. Its lower trees exist only in this process's memory, so a restarted node,
another node or a key restored from a backup always leases a fresh range: a one-time
key is never used twice, and a node that dies burns the rest of its range.

What the wipe covers: our bytearray of the material. The libraries keep their own
copies (coincurve, cryptography, pyhsslms: an HSS signer holds its top tree's SEED for
its lease's life, which a one-time signature scheme needs: a lower tree regenerated
under the same top leaf would sign twice). See libs/keytypes/sealed.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from libs.hsm.sealed_store import IndexLedger, SealedStore
from libs.hsm.token import Pkcs11Token
from libs.keytypes import kinds, lms, lms_state, material, sealed
from proto.authorization import CreateKeyAuthorization, statement_hash
from proto.common import Curve, HssShape
from proto.errors import ErrorCode, LantauError, TransientError
from proto.hsm import HsmKey
from proto.keys import SealedKey

log = logging.getLogger("lantau.hsm_node")

_CAS_ATTEMPTS = 20
# One-time indices a stateful signature used, and leases taken: for receipts.
OnLease = Callable[[str, int, int], None]


@dataclass
class _Lease:
    signer: lms.HssSigner
    cursor: lms_state.LeaseCursor
    randomness: _Prefetched


class _Prefetched:
    """Token randomness drawn on the worker thread ahead of a signature, so pyhsslms can
    make lower trees on another thread without touching the token there."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def fill(self, data: bytes | bytearray) -> None:
        self._buffer = bytearray(data)

    def __call__(self, n: int) -> bytes:
        if n > len(self._buffer):
            raise LantauError(ErrorCode.INTERNAL, "token randomness for a new tree ran out")
        out = bytes(self._buffer[:n])
        self._buffer[:n] = bytes(n)
        del self._buffer[:n]
        return out


class SealedKeys:
    def __init__(
        self,
        token: Pkcs11Token,
        *,
        node_id: str,
        sealing_label: str,
        store: SealedStore,
        ledger: IndexLedger,
        on_lease: OnLease | None = None,
        lease_size: int = 0,
    ) -> None:
        """``lease_size``: indices per lease (rounded up to whole top-level subtrees);
        0 leases one subtree at a time, so a crash burns as little as possible."""
        self.token = token
        self.node_id = node_id
        self.label = sealing_label
        self._store = store
        self._ledger = ledger
        self._on_lease = on_lease or (lambda _k, _s, _e: None)
        self._lease_size = lease_size
        self._local = threading.local()
        self._records: dict[str, SealedKey] = {}
        # By the whole record: a key is cached only for the very record that opened.
        self._public: dict[tuple[SealedKey, str | None], HsmKey] = {}
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The furthest each ledger was seen to reach: a ledger read behind it was rolled
        # back (restored, rewritten), and leasing from it could hand out used indices.
        self._high_water: dict[str, int] = {}

    # -- on the token's worker thread ----------------------------------------------

    def _key(self, session: Any) -> Any:
        cached = getattr(self._local, "key", None)
        if cached is None or getattr(self._local, "session", None) is not session:
            try:
                cached = sealed.find_sealing_key(session, self.label)
            except LantauError as e:
                if e.code != ErrorCode.UNKNOWN_KEY:
                    raise
                # Another node of the domain may have it: worth retrying elsewhere.
                raise TransientError(
                    ErrorCode.HSM_UNAVAILABLE,
                    f"this HSM holds no domain sealing key {self.label!r}: admit it first",
                ) from None
            self._local.key, self._local.session = cached, session
        return cached

    async def _unsealed(self, sk: SealedKey) -> bytearray:
        """The material of a record, opened on the worker; the caller wipes it."""
        aad = _aad(sk)
        return await self.token.run_with_session(
            lambda s: sealed.unseal(self._key(s), sk.blob, aad)
        )

    async def _with_material(self, sk: SealedKey, fn: Callable[[bytearray], Any]) -> Any:
        """Run ``fn`` on the worker with the material open for it, then wipe it."""
        aad = _aad(sk)

        def op(session: Any) -> Any:
            with sealed.unsealed(self._key(session), sk.blob, aad) as secret:
                return fn(secret)

        return await self.token.run_with_session(op)

    async def has_sealing_key(self) -> bool:
        try:
            await self.token.run_with_session(self._key)
        except TransientError:
            return False
        return True

    # -- records ---------------------------------------------------------------------

    async def load(self, key_id: str) -> SealedKey:
        """The sealed record of a key (read once: records are never changed)."""
        cached = self._records.get(key_id)
        if cached is None:
            cached = await self._store.get(key_id)
            if cached is None:
                raise LantauError(ErrorCode.UNKNOWN_KEY, f"key {key_id} is not on this HSM")
            self._records[key_id] = cached
        return cached

    async def generate(
        self,
        key_id: str,
        key_type: Curve,
        created: CreateKeyAuthorization | None,
        hss: HssShape | None,
    ) -> HsmKey:
        """New material from the token RNG, sealed and stored once; an existing record
        of the same creation is returned as it is (a redelivered order)."""
        existing = await self._store.get(key_id)
        if existing is not None:
            if (existing.key_type, existing.hss, existing.created) != (key_type, hss, created):
                raise LantauError(ErrorCode.KEY_EXISTS, f"key {key_id} already exists")
            await self._ensure_ledger(existing)
            root = "m" if kinds.is_hd(key_type) else None
            return _replace_created(await self.public(existing, root), created=False)
        n = kinds.MATERIAL_LEN[key_type]

        def draw(session: Any) -> bytearray:
            self._key(session)  # no sealing key: refuse before drawing anything
            while True:
                secret = sealed.random_bytes(session, n)
                try:
                    material.check_material(key_type, secret)
                    return secret
                except LantauError as e:  # BIP32: an invalid master key (< 2^-127): draw again
                    sealed.wipe(secret)
                    if e.code != ErrorCode.INVALID_SEED:
                        raise

        secret = await self.token.run_with_session(draw)
        try:
            public = await asyncio.to_thread(material.public_key, key_type, secret, hss)
            record = SealedKey(
                key_id=key_id,
                key_type=key_type,
                blob=b"",
                public_key=public,
                hss=hss,
                created=created,
                sealed_by=self.node_id,
                sealed_at_ms=int(time.time() * 1000),
            )
            aad = _aad(record)
            blob = await self.token.run_with_session(
                lambda s: sealed.seal(self._key(s), secret, aad)
            )
            hd_root = material.hd_public(key_type, secret, "m") if kinds.is_hd(key_type) else None
        finally:
            sealed.wipe(secret)
        record = msgspec.structs.replace(record, blob=blob)
        if not await self._store.create(record):
            # Another delivery made it first: ours was never used.
            return await self.generate(key_id, key_type, created, hss)
        self._records[key_id] = record
        await self._ensure_ledger(record)
        key = HsmKey(
            key_id=key_id,
            curve=key_type,
            public_key=public,
            protection="hsm-wrapped",
            hd=hd_root,
        )
        self._public[(record, "m" if hd_root else None)] = key
        return _replace_created(key, created=True)

    async def _ensure_ledger(self, sk: SealedKey) -> None:
        """A new stateful key gets its ledger right after its blob (a crash between the
        two is finished by the redelivered order); never over one that was used."""
        if sk.hss is None:
            return
        params = kinds.hss_parameters(sk.hss)
        fresh = lms_state.new_index_state(
            sk.key_id, lms.total_signatures(params), lms.lease_alignment(params)
        )
        if await self._ledger.write(fresh, 0):
            return
        state, _ = await self._ledger.read(sk.key_id)
        if state is None or (state.total, state.alignment) != (fresh.total, fresh.alignment):
            raise LantauError(
                ErrorCode.INTERNAL, f"the index ledger of {sk.key_id} is not this key's"
            )

    async def public(self, sk: SealedKey, path: str | None) -> HsmKey:
        """The key's public key (an HD key's at ``path``), after the blob authenticated."""
        path = kinds.check_path(sk.key_type, path) if kinds.is_hd(sk.key_type) else path
        cached = self._public.get((sk, path))
        if cached is not None:
            return cached
        if kinds.is_hd(sk.key_type):
            assert path is not None
            ext = await self._with_material(sk, lambda m: material.hd_public(sk.key_type, m, path))
            key = HsmKey(
                key_id=sk.key_id,
                curve=sk.key_type,
                public_key=ext.public_key,
                protection="hsm-wrapped",
                hd=ext,
            )
        else:
            # The blob's AAD binds the record's public key: opening it proves the key.
            await self._with_material(sk, lambda _m: None)
            key = HsmKey(
                key_id=sk.key_id,
                curve=sk.key_type,
                public_key=sk.public_key,
                protection="hsm-wrapped",
            )
        self._public[(sk, path)] = key
        return key

    # -- signing -----------------------------------------------------------------------

    async def sign(
        self, sk: SealedKey, path: str | None, data: list[bytes]
    ) -> tuple[list[bytes], list[int]]:
        """A signature per byte string, and the one-time index each used (stateful keys)."""
        if kinds.is_stateful(sk.key_type):
            return await self._sign_stateful(sk, data)
        signatures = await self._with_material(
            sk, lambda m: [material.sign(sk.key_type, m, d, path) for d in data]
        )
        return signatures, []

    async def sign_check(self, sk: SealedKey, data: bytes) -> bytes:
        """A clone's test signature (an HD key's root signs); never for stateful keys."""
        if kinds.is_stateful(sk.key_type):
            raise LantauError(
                ErrorCode.KEY_TYPE_UNSUPPORTED,
                f"{sk.key_type} keys are checked by their public key: a test signature "
                "would spend a one-time key",
            )
        path = "m" if kinds.is_hd(sk.key_type) else None
        return await self._with_material(sk, lambda m: material.sign(sk.key_type, m, data, path))

    async def _sign_stateful(
        self, sk: SealedKey, data: list[bytes]
    ) -> tuple[list[bytes], list[int]]:
        assert sk.hss is not None
        lock = self._locks.setdefault(sk.key_id, asyncio.Lock())
        signatures, indices = [], []
        async with lock:  # one cursor per key on this node: indices strictly increase
            for message in data:
                lease = self._leases.get(sk.key_id)
                if lease is None or lease.cursor.next >= lease.cursor.lease.end:
                    self._leases.pop(sk.key_id, None)
                    lease = await self._new_lease(sk)
                    self._leases[sk.key_id] = lease
                # The index is consumed before anything signs: a failure burns it.
                lease.cursor, index = lms_state.take(lease.cursor)
                extra = (sk.hss.levels - 1) * (lms.SEED_LEN + lms.I_LEN)
                if extra:
                    lease.randomness.fill(await self.token.run_with_session(_draw(extra)))
                signatures.append(await asyncio.to_thread(lease.signer.sign, index, message))
                indices.append(index)
        return signatures, indices

    async def _new_lease(self, sk: SealedKey) -> _Lease:
        """Lease the next range by compare-and-set; only then open the material."""
        assert sk.hss is not None
        params = kinds.hss_parameters(sk.hss)
        total, align = lms.total_signatures(params), lms.lease_alignment(params)
        for _ in range(_CAS_ATTEMPTS):
            state, revision = await self._ledger.read(sk.key_id)
            if state is None:
                raise LantauError(
                    ErrorCode.INDEX_LEDGER_MISSING,
                    f"key {sk.key_id} has no one-time index ledger: it signs again only once "
                    "the ledger is fenced past every lease the audit log records",
                )
            if (state.key_id, state.total, state.alignment) != (sk.key_id, total, align):
                raise LantauError(
                    ErrorCode.INTERNAL, f"the index ledger of {sk.key_id} is not this key's"
                )
            if state.next_unleased < self._high_water.get(sk.key_id, 0):
                raise LantauError(
                    ErrorCode.INDEX_LEDGER_MISSING,
                    f"the index ledger of {sk.key_id} went back to {state.next_unleased} after "
                    f"this node saw {self._high_water[sk.key_id]}: fence it before it signs",
                )
            updated, granted = lms_state.lease(
                state, self.node_id, self._lease_size or align, time.time()
            )
            if await self._ledger.write(updated, revision):
                self._high_water[sk.key_id] = updated.next_unleased
                break
        else:
            raise TransientError(ErrorCode.INTERNAL, f"the ledger of {sk.key_id} kept changing")
        # Durable: nobody else will ever be given [start, end).
        self._on_lease(sk.key_id, granted.start, granted.end)
        log.info("key %s: leased one-time indices [%d, %d)", sk.key_id, granted.start, granted.end)
        randomness = _Prefetched()
        secret = await self._unsealed(sk)
        try:
            signer = await asyncio.to_thread(
                lms.HssSigner, params, secret, granted.start, granted.end, randomness
            )
        finally:
            sealed.wipe(secret)
        return _Lease(signer, lms_state.open_cursor(granted), randomness)

    # -- copies ------------------------------------------------------------------------

    async def export(self, sk: SealedKey) -> SealedKey:
        """The record as it goes to a clone or a backup: ciphertext, checked to open here."""
        await self._with_material(sk, lambda _m: None)
        return sk

    async def adopt(self, sk: SealedKey) -> HsmKey:
        """Take a record from a clone or a backup: it must open here; stored if the domain
        lost it. A stateful key's ledger is never restored: its copy leases afresh."""
        await self._with_material(sk, lambda _m: None)
        if not await self._store.create(sk):
            current = await self._store.get(sk.key_id)
            if current is None or (current.key_type, current.public_key) != (
                sk.key_type,
                sk.public_key,
            ):
                raise LantauError(
                    ErrorCode.KEY_EXISTS, f"a different key {sk.key_id} is already in the domain"
                )
            sk = current
        self._records[sk.key_id] = sk
        key = await self.public(sk, "m" if kinds.is_hd(sk.key_type) else None)
        return _replace_created(key, created=True)

    def forget_leases(self) -> None:
        """Drop every lease held in memory (what a restart does): the next signature of each
        stateful key leases afresh."""
        self._leases.clear()


def _draw(n: int) -> Callable[[Any], bytearray]:
    return lambda session: sealed.random_bytes(session, n)


def _aad(sk: SealedKey) -> bytes:
    created = statement_hash(sk.created) if sk.created is not None else ""
    return material.blob_aad(sk.key_id, sk.key_type, sk.hss, created, sk.public_key)


def _replace_created(key: HsmKey, *, created: bool) -> HsmKey:
    return msgspec.structs.replace(key, created=created)
