"""Checkpoint (signed tree head) digests and signature checks: pure (the HSM call is the
caller's)."""

from __future__ import annotations

import hashlib

from libs import curves
from libs.audit.records import canonical
from proto.audit import AuditCheckpoint
from proto.errors import LantauError

DOMAIN = b"lantau/audit-checkpoint/v2\n"


def digest(checkpoint: AuditCheckpoint) -> bytes:
    """SHA-256 of the domain tag and the canonical bytes (every field, signature blank)."""
    return hashlib.sha256(DOMAIN + canonical(checkpoint)).digest()


def verify(checkpoint: AuditCheckpoint, trusted_public_keys: list[bytes]) -> bool:
    """True if one of the auditor's trusted keys signed this checkpoint."""
    for key in trusted_public_keys:
        try:
            curves.verify_secp256k1(key, digest(checkpoint), checkpoint.signature)
            return True
        except (LantauError, ValueError, TypeError):
            continue
    return False
