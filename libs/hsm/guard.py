"""The guard in front of one token: every operation only with its evidence, every
operation on the record.

This is what an hsm-node is (it holds the PIN, so it is the last line); the hsm-node
service is a NATS shell around it, and an in-process slot of a vendor module is guarded
the same way. Before the token signs, generates, wraps or unwraps anything, the guard
checks the evidence (libs/evidence.py) for exactly that key and those bytes; a request
signs once (the replay record) and every operation, done or refused, becomes a receipt.

Key types the token has no mechanism for (HD roots, ML-DSA, HSS) go to the node's
sealed keys (libs/hsm/sealed_keys.py) after the same checks, and after one more: the
sealed record's creation puts the key in this node's region (its blob is readable by
every node of the domain).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

import msgspec

from libs.audit import checkpoint as cp
from libs.clock import now_ms
from libs.evidence import (
    PLATFORM_KEY_PREFIX,
    Pins,
    check_clone,
    check_create,
    check_sealed_use,
    check_sign_bytes,
    check_sign_parties,
    clone_check_message,
)
from libs.hsm.backend import Liveness
from libs.hsm.replay import ReplayLog, Signed, replay
from libs.hsm.sealed_keys import SealedKeys
from libs.hsm.token import Pkcs11Token
from libs.keytypes import kinds
from proto import codec
from proto.authorization import digest_of, statement_hash
from proto.errors import ErrorCode, LantauError
from proto.hsm import (
    HsmCapabilities,
    HsmCloneCheck,
    HsmGenerate,
    HsmKey,
    HsmReceipt,
    HsmSign,
    HsmSignature,
    HsmSignCheckpoint,
    HsmUnwrap,
    HsmWrap,
)
from proto.keys import SealedKey
from proto.requests import SignRequest
from proto.subjects import AUDIT_CHECKPOINT_KEY, request_key

log = logging.getLogger("lantau.hsm_node")

Receipts = Callable[[HsmReceipt], None]


class Guard:
    liveness: Liveness = "in_process"

    def __init__(
        self,
        token: Pkcs11Token,
        *,
        node_id: str,
        pins: Callable[[], Pins],
        replays: ReplayLog,
        on_receipt: Receipts | None = None,
        sealed: SealedKeys | None = None,
    ) -> None:
        """``sealed``: this node's keys kept as sealed material; None serves token keys only."""
        self.name = node_id
        self.token = token
        self.sealed = sealed
        self._pins = pins
        self._replays = replays
        self._on_receipt = on_receipt or (lambda _r: None)
        self._public: dict[str, HsmKey] = {}
        # Sealed records this node checked it may open (creation record, region).
        self._usable: set[str] = set()
        # Requests being signed now: a concurrent repeat waits for the first.
        self._signing: dict[str, tuple[str, asyncio.Future[list[bytes]]]] = {}

    def _receipt(self, op: str, key_id: str, outcome: str, **kw: object) -> None:
        self._on_receipt(HsmReceipt(op=op, key_id=key_id, outcome=outcome, at_ms=now_ms(), **kw))  # type: ignore[arg-type]

    def _checked(self, op: str, key_id: str, check: Callable[[], object]) -> None:
        try:
            check()
        except LantauError as e:
            self._receipt(op, key_id, "refused", code=str(e.code))
            log.warning("refused %s of key %s: %s", op, key_id, e.message)
            raise

    def on_lease(self, key_id: str, start: int, end: int) -> None:
        """A stateful key's range, leased by CAS before any of it is used: on the record."""
        self._receipt("lease", key_id, "done", lease=[start, end])

    async def public_key(self, key_id: str, path: str | None = None) -> HsmKey:
        cached = self._public.get(key_id)
        if cached is not None and path is None:
            return cached
        if cached is None:
            try:
                cached = await self.token.public_key(key_id)
            except LantauError as e:
                if (
                    e.code != ErrorCode.UNKNOWN_KEY
                    or self.sealed is None
                    or key_id.startswith(PLATFORM_KEY_PREFIX)  # platform keys are token keys
                ):
                    raise
                return await self._sealed_public(key_id, path)
            self._public[key_id] = cached
        if path is not None:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH, f"key {key_id} is not an HD key: no path"
            )
        return cached

    async def _sealed_public(self, key_id: str, path: str | None) -> HsmKey:
        sk = await self._usable_sealed("public_key", key_id, None)
        if kinds.is_hd(sk.key_type):
            path = path or "m"
        elif path is not None:
            raise LantauError(
                ErrorCode.INVALID_DERIVATION_PATH, f"key {key_id} is not an HD key: no path"
            )
        assert self.sealed is not None
        return await self.sealed.public(sk, path)

    def _sealed_keys(self, key_type: str) -> SealedKeys:
        if self.sealed is None:
            raise LantauError(
                ErrorCode.KEY_TYPE_UNSUPPORTED, f"node {self.name} does not serve {key_type} keys"
            )
        return self.sealed

    async def _usable_sealed(self, op: str, key_id: str, key_type: str | None) -> SealedKey:
        """The sealed record of a key this node may open (else a refusal, on the record)."""
        sk = await self._sealed_keys(key_type or "sealed").load(key_id)

        def check() -> None:
            if key_type is not None and sk.key_type != key_type:
                raise LantauError(
                    ErrorCode.AUTHORIZATION_MISMATCH,
                    f"key {key_id} is {sk.key_type}, not {key_type}",
                )
            if key_id not in self._usable:  # records never change: checked once
                check_sealed_use(sk, node=self.name, pins=self._pins())

        self._checked(op, key_id, check)
        self._usable.add(key_id)
        return sk

    # -- operations ---------------------------------------------------------------

    async def generate(self, cmd: HsmGenerate) -> HsmKey:
        self._checked(
            "generate",
            cmd.key_id,
            lambda: check_create(
                cmd.request,
                cmd.authorization,
                key_id=cmd.key_id,
                curve=cmd.curve,
                node=self.name,
                pins=self._pins(),
                now_ms=now_ms(),
            ),
        )
        a = cmd.authorization
        if kinds.is_sealed(cmd.curve):
            if a is None:
                raise LantauError(
                    ErrorCode.KEY_TYPE_UNSUPPORTED, f"platform keys are not {cmd.curve} keys"
                )
            key = await self._sealed_keys(cmd.curve).generate(cmd.key_id, cmd.curve, a, a.hss)
        else:
            key = await self.token.generate(cmd.key_id, cmd.curve)
        self._receipt(
            "generate",
            cmd.key_id,
            "done" if key.created else "replayed",
            request_key=request_key(a.requester, a.request_id) if a else "",
            authorization=statement_hash(a) if a else "",
        )
        return key

    async def sign(self, cmd: HsmSign) -> list[bytes]:
        """Sign a request's bytes, once: a repeat gets the signatures already made."""
        return (await self.sign_reply(cmd)).signatures

    async def sign_reply(self, cmd: HsmSign) -> HsmSignature:
        """The signatures, and the public key that made them when it is not the key's own
        (an HD key's child at the request's path)."""
        a = cmd.authorization
        request: list[SignRequest] = []
        self._checked(
            "sign",
            cmd.key_id,
            lambda: request.append(
                check_sign_parties(
                    cmd.request,
                    a,
                    cmd.approvals,
                    key_id=cmd.key_id,
                    pins=self._pins(),
                    now_ms=now_ms(),
                )
            ),
        )
        path = request[0].path
        sealed_key: SealedKey | None = None
        if kinds.is_sealed(a.curve):
            sealed_key = await self._usable_sealed("sign", cmd.key_id, a.curve)
            public = (await self._sealed_keys(a.curve).public(sealed_key, path)).public_key
        else:
            native = await self.public_key(cmd.key_id)
            if native.curve != a.curve:
                self._checked("sign", cmd.key_id, lambda: _wrong_type(cmd.key_id, native.curve))
            public = native.public_key
        data: list[bytes] = []
        self._checked(
            "sign", cmd.key_id, lambda: data.extend(check_sign_bytes(request[0], a, public))
        )
        child = public if path is not None else b""
        key = request_key(a.requester, a.request_id)
        content = statement_hash(a)
        receipt = {"request_key": key, "authorization": content, "digests": a.digests}
        try:
            done = replay(self._replays.get(key), key, content)
        except LantauError as e:
            self._receipt("sign", cmd.key_id, "refused", code=str(e.code), **receipt)
            raise
        if done is not None:
            self._receipt("sign", cmd.key_id, "replayed", **receipt)
            return HsmSignature(key_id=cmd.key_id, signatures=done, public_key=child)
        if key in self._signing:
            running_content, running = self._signing[key]
            replay(Signed(running_content, []), key, content)  # refuses other content
            signatures = await asyncio.shield(running)
            return HsmSignature(key_id=cmd.key_id, signatures=signatures, public_key=child)
        running = asyncio.get_running_loop().create_future()
        self._signing[key] = (content, running)
        try:
            indices: list[int] = []
            if sealed_key is not None:
                signatures, indices = await self._sealed_keys(a.curve).sign(sealed_key, path, data)
            else:
                signatures = [await self.token.sign(cmd.key_id, cmd.curve, d) for d in data]
            # Durable before it leaves the node: a repeat can never make a second one.
            await self._replays.record(key, Signed(content, signatures), a.not_after_ms)
            self._receipt("sign", cmd.key_id, "done", indices=indices, **receipt)
            log.info("signed request %s with key %s", key, cmd.key_id)
            running.set_result(signatures)
            return HsmSignature(key_id=cmd.key_id, signatures=signatures, public_key=child)
        except BaseException as e:
            running.set_exception(e)
            running.exception()  # retrieved: there may be no waiter
            raise
        finally:
            self._signing.pop(key, None)

    async def sign_checkpoint(self, cmd: HsmSignCheckpoint) -> bytes:
        """The audit key signs checkpoints only: the digest is computed here."""

        def check() -> None:
            if cmd.key_id != AUDIT_CHECKPOINT_KEY:
                raise LantauError(
                    ErrorCode.EVIDENCE_REFUSED, f"key {cmd.key_id} does not sign checkpoints"
                )

        self._checked("sign_checkpoint", cmd.key_id, check)
        digest = cp.digest(cmd.checkpoint)
        signature = await self.token.sign(cmd.key_id, "secp256k1", digest)
        self._receipt("sign_checkpoint", cmd.key_id, "done", digests=[digest_of(digest)])
        return signature

    async def clone_check(self, cmd: HsmCloneCheck) -> bytes:
        data = clone_check_bytes(cmd.curve, cmd.key_id, self.name)
        if kinds.is_sealed(cmd.curve):
            sk = await self._usable_sealed("clone_check", cmd.key_id, cmd.curve)
            signature = await self._sealed_keys(cmd.curve).sign_check(sk, data)
        else:
            signature = await self.token.sign(cmd.key_id, cmd.curve, data)
        self._receipt("clone_check", cmd.key_id, "done", digests=[digest_of(data)])
        return signature

    def _clone_checked(self, op: str, cmd: HsmWrap | HsmUnwrap) -> None:
        self._checked(
            op,
            cmd.key_id,
            lambda: check_clone(
                cmd.clone,
                cmd.created,
                key_id=cmd.key_id,
                node=self.name,
                as_source=op == "wrap",
                pins=self._pins(),
                now_ms=now_ms(),
            ),
        )

    async def wrap(self, cmd: HsmWrap) -> bytes:
        """A key for a clone or a backup, never in plaintext: a token key wrapped under the
        domain KEK, or a sealed key's record (ciphertext under the domain sealing key)."""
        self._clone_checked("wrap", cmd)
        if kinds.is_sealed(cmd.clone.curve):
            sk = await self._usable_sealed("wrap", cmd.key_id, cmd.clone.curve)
            self._checked("wrap", cmd.key_id, lambda: _same_record(sk, cmd.created, cmd.clone))
            exported = await self._sealed_keys(sk.key_type).export(sk)
            self._receipt("wrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
            return codec.encode(exported)
        wrapped = await self.token.wrap(cmd.key_id, cmd.kek_label)
        self._receipt("wrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
        return wrapped

    async def unwrap(self, cmd: HsmUnwrap) -> HsmKey:
        self._clone_checked("unwrap", cmd)
        if cmd.public_key != cmd.clone.public_key:
            raise LantauError(ErrorCode.AUTHORIZATION_MISMATCH, "the clone is of another key")
        if kinds.is_sealed(cmd.curve):
            return await self._adopt(cmd)
        key = await self.token.unwrap(
            cmd.key_id, cmd.curve, cmd.kek_label, cmd.wrapped, cmd.public_key
        )
        self._receipt("unwrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
        return key

    async def _adopt(self, cmd: HsmUnwrap) -> HsmKey:
        sealed = self._sealed_keys(cmd.curve)
        sk = codec.SEALED_KEY.decode(cmd.wrapped)

        def check() -> None:
            if (sk.key_id, sk.key_type) != (cmd.key_id, cmd.curve):
                raise LantauError(ErrorCode.AUTHORIZATION_MISMATCH, "the clone is of another key")
            _same_record(sk, cmd.created, cmd.clone)
            check_sealed_use(sk, node=self.name, pins=self._pins())

        self._checked("unwrap", cmd.key_id, check)
        key = await sealed.adopt(sk)
        self._usable.add(cmd.key_id)
        self._receipt("unwrap", cmd.key_id, "done", authorization=statement_hash(cmd.clone))
        return key

    async def probe(self) -> None:
        await self.token.probe()

    async def capabilities(self) -> HsmCapabilities:
        """The token's mechanisms, and how this node keeps each key type it serves."""
        native = await self.token.capabilities()
        protections = {}
        for key_type in kinds.ALL_TYPES:
            how = kinds.protection_for(key_type, native.mechanisms)
            if how is not None and (how == "hsm" or self.sealed is not None):
                protections[key_type] = how
        sealing = self.sealed is not None and await self.sealed.has_sealing_key()
        return msgspec.structs.replace(
            native,
            key_types=sorted(protections),
            protections=protections,
            sealing_key=sealing,
        )

    async def close(self) -> None:
        await self.token.close()


def clone_check_bytes(curve: str, key_id: str, node: str) -> bytes:
    """What a clone signs to prove it works: ECDSA signs the statement's SHA-256."""
    message = clone_check_message(key_id, node)
    return hashlib.sha256(message).digest() if kinds.scheme(curve) == "secp256k1" else message


def _wrong_type(key_id: str, found: str) -> None:
    raise LantauError(ErrorCode.AUTHORIZATION_MISMATCH, f"key {key_id} is a {found} key")


def _same_record(sk: SealedKey, created: object, clone: object) -> None:
    """A sealed record goes with the creation record and the key the clone names."""
    from proto.authorization import CloneAuthorization

    assert isinstance(clone, CloneAuthorization)
    if sk.created != created:
        raise LantauError(
            ErrorCode.AUTHORIZATION_MISMATCH, "the sealed key comes with another creation record"
        )
    if (sk.key_type, sk.public_key) != (clone.curve, clone.public_key):
        raise LantauError(ErrorCode.AUTHORIZATION_MISMATCH, "the clone names another key")
