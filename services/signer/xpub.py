"""``lantau keys xpub``, answered by one signer replica: an HD key's extended public key
at a path, derived by a node holding the key (hardened steps need the sealed root),
checked against what the exported keys already derive, and recorded in the key
directory, where policy and signers derive non-hardened children below it."""

from __future__ import annotations

from libs.hsm.backend import HsmBackend
from libs.hsm.pool import HsmPool
from libs.keys.directory import KeyDirectory
from libs.keytypes import kinds, material
from proto.admin import XpubAnswer, XpubQuery
from proto.common import ErrorInfo, ExtendedPublic
from proto.errors import ErrorCode, LantauError, TransientError


async def export_xpub(
    pool: HsmPool, keys: KeyDirectory, signing_nodes: set[str], query: XpubQuery
) -> ExtendedPublic:
    """The recorded extended public key, or a typed error."""
    record, _ = await keys.get(query.key_id, fresh=True)
    if record is None or record.status != "active":
        raise LantauError(ErrorCode.UNKNOWN_KEY, f"key {query.key_id} does not exist")
    if not kinds.is_hd(record.curve):
        raise LantauError(
            ErrorCode.KEY_TYPE_UNSUPPORTED, f"{query.key_id} is a {record.curve} key, not HD"
        )
    path = kinds.check_path(record.curve, query.path)
    assert path is not None

    async def derive(backend: HsmBackend, _n: int) -> ExtendedPublic:
        key = await backend.public_key(query.key_id, path)
        ext = key.hd
        if ext is None or ext.path != path or ext.public_key != key.public_key:
            raise TransientError(ErrorCode.HSM_ERROR, f"{backend.name} did not derive {path}")
        known = material.child_public(record.curve, record.xpubs, path)
        if known is not None and known != ext.public_key:
            raise TransientError(
                ErrorCode.HSM_ERROR,
                f"{backend.name}'s key at {path} is not what the exported xpubs derive",
            )
        return ext

    holders = [n for n in record.nodes if n in signing_nodes]
    ext, _ = await pool.run("public_key", holders, derive, max_attempts=len(holders) or 1)
    await keys.add_xpub(query.key_id, ext)
    return ext


async def answer(
    pool: HsmPool, keys: KeyDirectory, signing_nodes: set[str], query: XpubQuery
) -> XpubAnswer:
    try:
        ext = await export_xpub(pool, keys, signing_nodes, query)
    except (LantauError, TransientError) as e:
        return XpubAnswer(key_id=query.key_id, error=ErrorInfo(code=str(e.code), message=e.message))
    return XpubAnswer(key_id=query.key_id, extended=ext)
