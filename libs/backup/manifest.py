"""Backup ceremony manifests: what a ceremony found and did, signed with the backup set's
key, so that the audit trail holds a statement only a quorum of custodians could make.

Canonical bytes, like the authorizations' (proto/authorization.py): a domain line, then
sorted-key JSON of every field but ``signature``. Pure functions.
"""

from __future__ import annotations

import msgspec
import nacl.signing

from libs.evidence import signed_by
from proto.events import BackupManifest

DOMAIN = b"lantau/backup-manifest/v1\n"


def manifest_bytes(manifest: BackupManifest) -> bytes:
    unsigned = msgspec.structs.replace(manifest, signature=b"")
    return DOMAIN + msgspec.json.encode(unsigned, order="sorted")


def sign_manifest(manifest: BackupManifest, key: nacl.signing.SigningKey) -> BackupManifest:
    """The manifest signed by the set's key (``signed_by`` set to its public key)."""
    unsigned = msgspec.structs.replace(
        manifest, signed_by=key.verify_key.encode().hex(), signature=b""
    )
    return msgspec.structs.replace(unsigned, signature=key.sign(manifest_bytes(unsigned)).signature)


def manifest_verifies(manifest: BackupManifest, pinned_key: str) -> bool:
    """True when the manifest is signed by ``pinned_key`` (the set's key in the config)."""
    return manifest.signed_by == pinned_key.lower() and signed_by(
        pinned_key, manifest_bytes(manifest), manifest.signature
    )
