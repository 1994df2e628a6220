"""Pure checks on who is asking and when: requester signature, freshness, need-to-know."""

from __future__ import annotations

import fnmatch

import nacl.exceptions
import nacl.signing

from libs.config import PolicyConfig, RequesterConfig
from proto.errors import ErrorCode, LantauError
from proto.requests import CreateKeyRequest, Request, SignRequest, signing_bytes


def signed_by(public_key_hex: str, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the Ed25519 signature of ``data`` by this public key."""
    try:
        nacl.signing.VerifyKey(bytes.fromhex(public_key_hex)).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def authenticate(request: Request, requester: RequesterConfig | None) -> RequesterConfig:
    """The registered requester whose Ed25519 key signed this request, or a typed refusal."""
    if requester is None:
        raise LantauError(
            ErrorCode.UNKNOWN_REQUESTER, f"requester {request.requester!r} is not registered"
        )
    if not signed_by(requester.public_key, signing_bytes(request), request.signature):
        raise LantauError(
            ErrorCode.BAD_SIGNATURE,
            f"signature does not match requester {requester.name}'s registered key",
        )
    return requester


def check_freshness(request: Request, cfg: PolicyConfig, now_ms: int) -> None:
    if request.expires_at_ms <= request.created_at_ms:
        raise LantauError(ErrorCode.INVALID_FIELD, "expires_at_ms must be after created_at_ms")
    if request.created_at_ms > now_ms + cfg.clock_skew_ms:
        raise LantauError(
            ErrorCode.REQUEST_FROM_FUTURE,
            f"created_at_ms is {request.created_at_ms - now_ms} ms ahead of policy's clock "
            f"(allowed skew {cfg.clock_skew_ms} ms)",
        )
    if now_ms >= request.expires_at_ms:
        raise LantauError(ErrorCode.REQUEST_EXPIRED, "the request expired before policy saw it")
    if now_ms - request.created_at_ms > cfg.max_request_age_ms:
        raise LantauError(
            ErrorCode.REQUEST_EXPIRED,
            f"the request is older than max_request_age_ms ({cfg.max_request_age_ms} ms)",
        )


def check_blind(request: SignRequest, requester: RequesterConfig) -> None:
    """A raw digest or message nobody can decode is signed only for keys the config
    lets this requester sign blind: a permission of its own, denied by default."""
    if not any(fnmatch.fnmatchcase(request.key_id, p) for p in requester.blind_keys):
        raise LantauError(
            ErrorCode.BLIND_SIGNING_DENIED,
            f"requester {requester.name} may not have key {request.key_id} sign a "
            f"{request.payload_kind} nobody can decode; send the transaction itself",
        )


def check_access(request: Request, requester: RequesterConfig) -> str:
    """Need-to-know, deny by default; returns the pattern that granted access."""
    if isinstance(request, CreateKeyRequest) and not requester.may_create_keys:
        raise LantauError(
            ErrorCode.ACCESS_DENIED, f"requester {requester.name} may not create keys"
        )
    for pattern in requester.keys:
        if fnmatch.fnmatchcase(request.key_id, pattern):
            return pattern
    raise LantauError(
        ErrorCode.ACCESS_DENIED,
        f"requester {requester.name} has no access to key {request.key_id}",
    )


def check_path(request: SignRequest, requester: RequesterConfig) -> None:
    """Need-to-know below an HD root: a requester configured with ``paths`` (fnmatch)
    signs only at matching derivation paths; without them, at any path of its keys."""
    if request.path is None or not requester.paths:
        return
    if not any(fnmatch.fnmatchcase(request.path, p) for p in requester.paths):
        raise LantauError(
            ErrorCode.ACCESS_DENIED,
            f"requester {requester.name} may not sign at path {request.path} of {request.key_id}",
        )
