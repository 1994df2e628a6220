"""Checkpoint signing and verification: pure functions (the HSM call is the caller's)."""

from __future__ import annotations

import hashlib

import msgspec

from libs import curves
from proto.audit import AuditCheckpoint
from proto.errors import LantauError

_DOMAIN = b"lantau/audit-checkpoint/v1\n"


def digest(checkpoint: AuditCheckpoint) -> bytes:
    """SHA-256 of the canonical bytes: every field but the signature, sorted-key JSON."""
    body = msgspec.structs.replace(checkpoint, signature=b"")
    return hashlib.sha256(_DOMAIN + msgspec.json.encode(body, order="sorted")).digest()


def verify(checkpoint: AuditCheckpoint, trusted_public_keys: list[bytes]) -> bool:
    """True if one of the auditor's trusted keys signed this checkpoint."""
    for key in trusted_public_keys:
        try:
            curves.verify_secp256k1(key, digest(checkpoint), checkpoint.signature)
            return True
        except (LantauError, ValueError, TypeError):
            continue
    return False
