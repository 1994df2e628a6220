"""CustodyClient: what a trading system uses to create keys and get signatures.

Requests are signed with the requester's Ed25519 key and published durably on the
requester's own subject (``lantau.request.sign.<requester>``); the client then waits for
the one terminal result on ``lantau.result.<requester>.<request_id>``. The connection is
the requester's NATS identity (an nkey seed, not the request-signing key) over TLS.
Sending the same request id again (same content) returns the same result and
never makes a second signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import TypeVar

import msgspec
import nacl.signing
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from libs import tracing
from libs.bus.connect import connect
from libs.bus.permissions import requester_identity
from libs.bus.publish import RETRY_FOR_S, last_on_subject, put
from libs.bus.violations import subscribe_checked
from libs.clock import now_ms
from libs.config import NatsConfig
from proto import codec
from proto.common import Curve, HssShape, PayloadKind
from proto.errors import ErrorCode, LantauError
from proto.requests import (
    CreateKeyRequest,
    Request,
    SignRequest,
    Transfer,
    message_id,
    request_hash,
    signing_bytes,
)
from proto.results import KeyResult, Result, SignResult
from proto.subjects import (
    HDR_MSG_ID,
    HDR_REQUEST_ID,
    RESULTS,
    create_key_request_subject,
    result_subject,
    results_of,
    sign_request_subject,
)

R = TypeVar("R", SignRequest, CreateKeyRequest)

DEFAULT_TTL_MS = 120_000
# While waiting, also look at the stored result now and then: covers a resend whose
# original was answered long ago, and results published during a reconnect.
POLL_INTERVAL_S = 1.0
# A request JetStream did not acknowledge (a NATS server lost, a stream electing its
# leader) is published again with the same message id for this long: JetStream keeps one.
SUBMIT_RETRY_S = RETRY_FOR_S


class CustodyError(LantauError):
    """Base of the client's exceptions; carries the request id when there is one."""

    code_for_class = ErrorCode.BUS_UNAVAILABLE

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(self.code_for_class, message)
        self.request_id = request_id


class ResultTimeout(CustodyError):
    """No terminal result in time; the request may still complete: ask get_result() later."""

    code_for_class = ErrorCode.RESULT_TIMEOUT


class RequestIdConflict(CustodyError):
    """The request id was already used for a different request."""

    code_for_class = ErrorCode.REQUEST_ID_CONFLICT


class PermissionDenied(CustodyError):
    """The bus refused this identity something (a misconfigured or revoked identity)."""

    code_for_class = ErrorCode.PERMISSION_DENIED


class BadKeyFile(CustodyError):
    """A key file that does not hold what it should."""

    code_for_class = ErrorCode.CONFIG_INVALID


def load_signing_key(path: str | Path) -> nacl.signing.SigningKey:
    """Read an Ed25519 seed (64 hex characters) from a file made by ``lantau keygen``."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise CustodyError(f"cannot read key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        # Never quote the content: it is meant to be a secret.
        raise CustodyError(f"{path} does not hold a 32-byte Ed25519 seed in hex") from None
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise BadKeyFile(f"{path} does not hold a 32-byte Ed25519 seed in hex") from None
    return nacl.signing.SigningKey(seed)


class CustodyClient:
    def __init__(
        self,
        nc: Client,
        requester: str,
        signing_key: nacl.signing.SigningKey,
        *,
        owns_connection: bool = False,
        submit_retry_s: float = SUBMIT_RETRY_S,
    ) -> None:
        self._nc = nc
        self.submit_retry_s = submit_retry_s
        self._js: JetStreamContext = nc.jetstream()
        self.requester = requester
        self._key = signing_key
        self._owns = owns_connection
        # One subscription per client to all of its results, instead of one per request.
        self._results: Subscription | None = None
        # Concurrent first sends wait for the one subscription being made (checking it
        # takes round trips): without this each made its own, and every result then
        # reached this client once per subscription.
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, list[asyncio.Queue[bytes]]] = {}

    @classmethod
    async def connect(
        cls,
        servers: list[str] | str,
        requester: str,
        signing_key: nacl.signing.SigningKey,
        *,
        seed_file: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        ping_interval_s: float | None = None,
    ) -> CustodyClient:
        """Connect as the requester's NATS identity: ``seed_file`` holds its nkey seed
        (``lantau bus nkey``); ``ca_file`` turns TLS on, ``cert_file``/``key_file`` add
        the client certificate when the server wants mutual TLS. Give every server of a
        cluster: the connection moves to another when its server dies, or stops answering
        for about three ``ping_interval_s`` (NatsConfig's default when not given)."""
        cfg = NatsConfig(
            servers=[servers] if isinstance(servers, str) else list(servers),
            seed_file=seed_file,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        if ping_interval_s is not None:
            cfg = msgspec.structs.replace(cfg, ping_interval_s=ping_interval_s)
        try:
            nc = await connect(
                cfg, f"lantau-client-{requester}", identity=requester_identity(requester)
            )
        except LantauError:
            raise
        except Exception as e:
            raise CustodyError(f"cannot connect to NATS at {servers}: {type(e).__name__}") from None
        return cls(nc, requester, signing_key, owns_connection=True)

    @property
    def connection(self) -> Client:
        """The NATS connection this client uses (shared with the caller when it passed one)."""
        return self._nc

    async def close(self) -> None:
        if self._owns:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def __aenter__(self) -> CustodyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------

    def sign_request(
        self,
        key_id: str,
        payload: bytes,
        *,
        payload_kind: PayloadKind = "digest",
        chain: str | None = None,
        transfer: Transfer | None = None,
        request_id: str | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
        path: str | None = None,
    ) -> SignRequest:
        """A signed request, not yet sent. ``chain``: the network where the payload does not
        say it (a PSBT's "testnet", a Solana "solana:devnet"); ``transfer``: what the requester
        declares it moves (policy refuses a declaration the parsed transaction contradicts);
        ``path``: an HD key's derivation path (the child that signs)."""
        created = now_ms()
        request = SignRequest(
            request_id=request_id or uuid.uuid4().hex,
            requester=self.requester,
            key_id=key_id,
            payload=payload,
            payload_kind=payload_kind,
            chain=chain,
            transfer=transfer,
            created_at_ms=created,
            expires_at_ms=created + ttl_ms,
            path=path,
        )
        return self.signed(request)

    def create_key_request(
        self,
        key_id: str,
        curve: Curve,
        *,
        region: str | None = None,
        request_id: str | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
        hss: HssShape | None = None,
    ) -> CreateKeyRequest:
        """``curve``: the key type; ``hss``: an lms-hss key's shape (else policy's default)."""
        created = now_ms()
        request = CreateKeyRequest(
            request_id=request_id or uuid.uuid4().hex,
            requester=self.requester,
            key_id=key_id,
            curve=curve,
            region=region,
            created_at_ms=created,
            expires_at_ms=created + ttl_ms,
            hss=hss,
        )
        return self.signed(request)

    def signed(self, request: R) -> R:
        """``request`` validated and signed with this requester's key (for requests built
        or changed by the caller; ``sign_request`` and ``create_key_request`` call it)."""
        try:
            validated = msgspec.convert(msgspec.to_builtins(request), type(request))
        except msgspec.ValidationError as e:
            raise LantauError(ErrorCode.INVALID_FIELD, str(e)) from None
        signature = self._key.sign(signing_bytes(validated)).signature
        return msgspec.structs.replace(validated, signature=signature)

    async def sign(
        self,
        key_id: str,
        payload: bytes,
        *,
        payload_kind: PayloadKind = "digest",
        chain: str | None = None,
        transfer: Transfer | None = None,
        request_id: str | None = None,
        timeout: float = 30.0,
        path: str | None = None,
    ) -> SignResult:
        """Ask for a signature and wait for the terminal result (signed, rejected, ...).

        For a transaction kind the result's ``signed_payload`` is what a wallet broadcasts."""
        request = self.sign_request(
            key_id,
            payload,
            payload_kind=payload_kind,
            chain=chain,
            transfer=transfer,
            request_id=request_id,
            path=path,
        )
        result = await self.send(request, timeout=timeout, resend=request_id is not None)
        assert isinstance(result, SignResult)
        return result

    async def create_key(
        self,
        key_id: str,
        curve: Curve,
        *,
        region: str | None = None,
        request_id: str | None = None,
        timeout: float = 30.0,
        hss: HssShape | None = None,
    ) -> KeyResult:
        request = self.create_key_request(
            key_id, curve, region=region, request_id=request_id, hss=hss
        )
        result = await self.send(request, timeout=timeout, resend=request_id is not None)
        assert isinstance(result, KeyResult)
        return result

    async def send(
        self, request: Request, *, timeout: float = 30.0, resend: bool = False
    ) -> Result:
        """Publish a signed request durably and wait for its result.

        ``resend``: the id may have been sent before (its result may already be stored)."""
        with tracing.span(
            f"lantau {type(request).__name__}",
            kind=tracing.SpanKind.PRODUCER,
            request_id=request.request_id,
            key_id=request.key_id,
        ) as span:
            result = await self._send(request, timeout, resend)
            tracing.outcome(span, result.status, result.error.code if result.error else None)
            return result

    async def _listen(self) -> None:
        if self._results is not None:
            return
        async with self._subscribing:
            if self._results is not None:
                return
            try:
                self._results = await subscribe_checked(
                    self._nc, results_of(self.requester), cb=self._on_result
                )
            except LantauError as e:
                raise PermissionDenied(e.message) from None

    async def _on_result(self, msg: Msg) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        for queue in self._waiting.get(request_id, ()):
            queue.put_nowait(msg.data)

    async def _send(self, request: Request, timeout: float, resend: bool) -> Result:
        expected = request_hash(request)
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        await self._listen()
        self._waiting.setdefault(request.request_id, []).append(inbox)
        try:
            if await self.submit(request) or resend:
                stored = await self._poll(request.request_id)
                if stored is not None:
                    return self._own(stored, expected, request.request_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(inbox.get(), timeout=min(left, POLL_INTERVAL_S))
                    return self._own(codec.RESULT.decode(data), expected, request.request_id)
                except TimeoutError:
                    stored = await self._poll(request.request_id)
                    if stored is not None:
                        return self._own(stored, expected, request.request_id)
            raise ResultTimeout(
                f"no result for request {request.request_id} within {timeout:g} s; "
                "it may still complete: call get_result() later",
                request.request_id,
            )
        finally:
            waiting = self._waiting.get(request.request_id, [])
            waiting.remove(inbox)
            if not waiting:
                self._waiting.pop(request.request_id, None)

    async def submit(self, request: Request) -> bool:
        """Publish durably without waiting for the result; True if JetStream saw it before."""
        subject = (
            sign_request_subject(request.requester)
            if isinstance(request, SignRequest)
            else create_key_request_subject(request.requester)
        )
        headers = tracing.inject(
            {
                HDR_MSG_ID: message_id(request),
                HDR_REQUEST_ID: request.request_id,
            }
        )
        try:
            # Tried again (same message id) through a leader election or a lost server.
            done = await put(
                self._js,
                subject,
                codec.encode(request),
                headers,
                retry_for_s=self.submit_retry_s,
                expects_last=False,
            )
        except LantauError as e:
            raise PermissionDenied(e.message, request.request_id) from None
        except (nats.errors.Error, TimeoutError) as e:
            raise CustodyError(
                f"request {request.request_id} was not accepted by the bus ({type(e).__name__}); "
                "it is safe to send it again",
                request.request_id,
            ) from None
        assert done.ack is not None  # expects_last=False: a refusal raises
        return bool(done.ack.duplicate)

    async def _poll(self, request_id: str) -> Result | None:
        """``get_result`` while waiting: a bus that does not answer this time (a server
        lost, the client reconnecting) is not an answer; the wait goes on."""
        try:
            return await self.get_result(request_id)
        except PermissionDenied:
            raise
        except (nats.errors.Error, TimeoutError):
            return None

    async def get_result(self, request_id: str) -> Result | None:
        """The stored terminal result of a request, or None while it has none."""
        subject = result_subject(self.requester, request_id)
        try:
            data = await last_on_subject(self._js, RESULTS.name, subject)
        except LantauError as e:
            raise PermissionDenied(e.message, request_id) from None
        return codec.RESULT.decode(data) if data is not None else None

    @staticmethod
    def _own(result: Result, expected_hash: str, request_id: str) -> Result:
        if result.request_hash and result.request_hash != expected_hash:
            raise RequestIdConflict(
                f"request id {request_id} already belongs to a different request", request_id
            )
        return result
