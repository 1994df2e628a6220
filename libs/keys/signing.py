"""Which public key signs a request, as far as it can be known without an HSM: pure.

A key's own public key, or for an HD key the child at the request's path, derived from
the record's exported extended public keys (non-hardened steps below the nearest one).
None when only an HSM can derive it (a hardened step below every export): a blind
payload is still signed (its bytes do not depend on the key) and the hsm-node says
which child signed; a transaction needs the key to be decoded, so policy refuses it.
"""

from __future__ import annotations

from libs.keytypes import kinds, material
from proto.errors import ErrorCode, LantauError
from proto.keys import KeyRecord


def signing_public(record: KeyRecord, path: str | None) -> bytes | None:
    """The public key that signs at ``path`` (the key's own for non-HD keys), if known."""
    if not kinds.is_hd(record.curve):
        return record.public_key
    if path is None:
        return None
    return material.child_public(record.curve, record.xpubs, path)


def required_public(record: KeyRecord, path: str | None) -> bytes:
    """As `signing_public`, or a typed refusal naming what to export first."""
    public = signing_public(record, path)
    if public is None:
        raise LantauError(
            ErrorCode.XPUB_NOT_EXPORTED,
            f"nobody can derive the public key of {record.key_id} at {path} without an HSM: "
            f"export an ancestor first (lantau keys xpub {record.key_id} --path ...)",
        )
    return public
