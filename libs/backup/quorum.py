"""M-of-N sharing of a backup set's master secret among custodians.

The master secret is split with SLIP-39 (shamir-mnemonic) into one mnemonic per
custodian, each sealed to that custodian in a ShareEnvelope (envelope.py). A ceremony
opens M shares, combines them, uses the derived credentials and wipes them.

Pure functions: no files, no clock; files.py does the I/O.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import shamir_mnemonic as slip39

from libs.backup.custodian import Custodian, seal, validate_custodians
from libs.backup.derive import MASTER_SECRET_BYTES, BackupSecrets, set_fingerprint, share_tag
from libs.backup.envelope import (
    FORMAT_VERSION,
    HEADER,
    MAX_SHARES,
    BackupSetId,
    DecryptedShare,
    Payload,
    ShareEnvelope,
    header_of,
    labels,
    parse_mnemonic,
    zero,
)
from proto.errors import ErrorCode, LantauError

NONCE_BYTES = 16
# PBKDF2 stretching protects a weak SLIP-39 passphrase. There is none here (the shares are
# sealed to each custodian instead) and the secret is 256 random bits, so rounds would
# only slow ceremonies. The exponent is written in every mnemonic: any SLIP-39 tool reads it.
ITERATION_EXPONENT = 0

_BACKUP_SET_RE = r"^[A-Za-z0-9_-]{1,64}$"


def create_backup_set(
    backup_set: str,
    custodians: list[Custodian],
    threshold: int,
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[list[ShareEnvelope], BackupSecrets]:
    """A new random master secret, split so that any `threshold` custodians can rebuild it.

    `rng` draws the master secret (the backup token's RNG in a ceremony). Returns one
    envelope per custodian, in order, and the derived credentials to set up the token.
    """
    _check_backup_set(backup_set)
    _check_sharing(custodians, threshold)
    drawn = rng(MASTER_SECRET_BYTES)
    if not isinstance(drawn, bytes | bytearray) or len(drawn) != MASTER_SECRET_BYTES:
        raise LantauError(
            ErrorCode.INTERNAL,
            f"the random source gave something other than {MASTER_SECRET_BYTES} bytes",
        )
    master = bytearray(drawn)
    try:
        envelopes = _split(master, backup_set, custodians, threshold)
        secrets = BackupSecrets(
            master, backup_set=backup_set, set_fingerprint=envelopes[0].set_fingerprint
        )
    finally:
        zero(master)
    return envelopes, secrets


def reshare(
    shares_in: list[DecryptedShare],
    new_custodians: list[Custodian],
    threshold: int,
    *,
    backup_set: str,
    current_fingerprint: str | None = None,
) -> list[ShareEnvelope]:
    """Split the same secret anew, for a new custodian list and threshold.

    The new sharing has a new SLIP-39 identifier and fingerprint: its shares do not combine
    with the old ones. The secret, hence the token PIN and KEK, stay as they were.
    """
    _check_backup_set(backup_set)
    _check_sharing(new_custodians, threshold)
    master, _ = _recover(shares_in, backup_set, current_fingerprint)
    old_identifier = parse_mnemonic(shares_in[0]).identifier
    try:
        return _split(master, backup_set, new_custodians, threshold, avoid=old_identifier)
    finally:
        zero(master)


def combine(
    shares: list[DecryptedShare],
    backup_set: str,
    *,
    current_fingerprint: str | None = None,
) -> BackupSecrets:
    """Rebuild the backup set's credentials from at least `threshold` opened shares.

    Give `current_fingerprint` (the set's record) so shares from a replaced sharing are
    refused even when all of them are old; without it only mixing old and new is refused.
    """
    master, fingerprint = _recover(shares, backup_set, current_fingerprint)
    try:
        return BackupSecrets(master, backup_set=backup_set, set_fingerprint=fingerprint)
    finally:
        zero(master)


# -- internals ---------------------------------------------------------------


def _split(
    master: bytearray,
    backup_set: str,
    custodians: list[Custodian],
    threshold: int,
    *,
    avoid: int | None = None,
) -> list[ShareEnvelope]:
    count = len(custodians)
    while True:
        # One SLIP-39 group of one member per custodian, `threshold` groups needed. The
        # library refuses 1-of-N at the member level; groups take every M-of-N one way.
        groups = slip39.generate_mnemonics(
            threshold,
            [(1, 1)] * count,
            bytes(master),
            b"",
            extendable=False,  # the identifier salts the encryption: a reshare shares nothing
            iteration_exponent=ITERATION_EXPONENT,
        )
        identifier = slip39.Share.from_mnemonic(groups[0][0]).identifier
        # The identifier is 15 random bits: a reshare must not draw the old one again.
        if identifier != avoid:
            break
    by_index = {slip39.Share.from_mnemonic(g[0]).group_index + 1: g[0] for g in groups}
    nonce = os.urandom(NONCE_BYTES)
    fingerprint = set_fingerprint(
        master,
        backup_set=backup_set,
        nonce=nonce,
        identifier=identifier,
        threshold=threshold,
        count=count,
    )
    envelopes = []
    for index, custodian in enumerate(custodians, start=1):
        header: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "backup_set": backup_set,
            "set_fingerprint": fingerprint,
            "custodian": custodian.name,
            "custodian_key": custodian.public_key,
            "index": index,
            "threshold": threshold,
            "count": count,
        }
        mnemonic = by_index[index]
        tag = _tag(master, header, nonce, mnemonic)
        payload = Payload(**header, nonce=nonce, mnemonic=mnemonic, tag=tag)
        ciphertext = seal(custodian.public_key, msgspec.msgpack.encode(payload), custodian.name)
        envelopes.append(ShareEnvelope(**header, ciphertext=ciphertext))
    return envelopes


def _recover(
    shares: list[DecryptedShare], backup_set: str, current_fingerprint: str | None
) -> tuple[bytearray, str]:
    """Check the shares as a set, rebuild the master secret and verify it; caller wipes it."""
    first = _check_set(shares, backup_set, current_fingerprint)
    return _rebuild(shares, first)


def _check_set(
    shares: list[DecryptedShare], backup_set: str, current_fingerprint: str | None
) -> DecryptedShare:
    """Refuse shares that cannot make a quorum of this sharing; returns the lowest-numbered."""
    if not shares:
        raise LantauError(
            ErrorCode.QUORUM_NOT_MET, f"no shares were given for backup set {backup_set!r}"
        )
    for s in shares:
        if not isinstance(s, DecryptedShare):
            raise LantauError(ErrorCode.INVALID_FIELD, "shares must be opened DecryptedShares")
        if s.wiped:
            raise LantauError(ErrorCode.INVALID_FIELD, f"{s.label} was wiped before use")

    foreign = [s for s in shares if s.backup_set != backup_set]
    if foreign:
        sets = sorted({s.backup_set for s in foreign})
        raise LantauError(
            ErrorCode.WRONG_BACKUP_SET,
            f"{labels(foreign)} belong(s) to backup set {', '.join(map(repr, sets))}, "
            f"not to {backup_set!r}",
        )
    if current_fingerprint is not None:
        stale = [s for s in shares if s.set_fingerprint != current_fingerprint]
        if stale:
            raise LantauError(
                ErrorCode.WRONG_BACKUP_SET,
                f"{labels(stale)} come(s) from another sharing of backup set {backup_set!r} "
                f"({_short(stale[0].set_fingerprint)}), not the current one "
                f"({_short(current_fingerprint)}): shares issued before a reshare no longer count",
            )
    sharings: dict[str, list[DecryptedShare]] = {}
    for s in shares:
        sharings.setdefault(s.set_fingerprint, []).append(s)
    if len(sharings) > 1:
        parts = "; ".join(f"{_short(fp)}: {labels(group)}" for fp, group in sharings.items())
        raise LantauError(
            ErrorCode.WRONG_BACKUP_SET,
            f"the shares come from {len(sharings)} different sharings of backup set "
            f"{backup_set!r} ({parts}): shares from before a reshare do not combine with new ones",
        )

    first = min(shares, key=lambda s: s.index)
    odd = [
        s
        for s in shares
        if (s.threshold, s.count, s.nonce) != (first.threshold, first.count, first.nonce)
    ]
    if odd:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{labels(odd)} disagree(s) with {first.label} on the threshold, the count or the "
            "sharing it belongs to: one of them is not genuine",
        )
    _refuse_duplicates(shares)
    threshold = first.threshold
    if len(shares) < threshold:
        raise LantauError(
            ErrorCode.QUORUM_NOT_MET,
            f"{len(shares)} of the {threshold} shares backup set {backup_set!r} needs were "
            f"given ({labels(shares)})",
        )
    return first


def _rebuild(shares: list[DecryptedShare], first: DecryptedShare) -> tuple[bytearray, str]:
    """The master secret from the lowest-numbered quorum, checked against every share."""
    threshold = first.threshold
    # A share of another sharing under this header (forged: its SLIP-39 identifier differs)
    # fails the rebuild if it is among the shares used, else the share check below.
    parsed = {s.index: parse_mnemonic(s) for s in shares}
    used = sorted(shares, key=lambda s: s.index)[:threshold]
    master = _combine_mnemonics([s.mnemonic for s in used])
    if master is None:
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{labels(used)} do not rebuild a secret together (SLIP-39 finds them "
            "inconsistent): one of them is not genuine",
        )
    fingerprint = ""
    if len(master) == MASTER_SECRET_BYTES:
        fingerprint = set_fingerprint(
            master,
            backup_set=first.backup_set,
            nonce=first.nonce,
            identifier=parsed[first.index].identifier,
            threshold=threshold,
            count=first.count,
        )
    if not hmac.compare_digest(fingerprint.encode(), first.set_fingerprint.encode()):
        zero(master)
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"the secret rebuilt from {labels(used)} does not match the set fingerprint "
            f"{_short(first.set_fingerprint)}: one of them is not genuine",
        )
    forged = [
        s
        for s in shares
        if not hmac.compare_digest(
            _tag(master, header_of(s), s.nonce, s.mnemonic),
            s.tag,
        )
    ]
    if forged:
        zero(master)
        raise LantauError(
            ErrorCode.BAD_SHARE,
            f"{labels(forged)} fail(s) the share check against the rebuilt secret: "
            "not issued with this sharing (forged, or its header edited)",
        )
    return master, fingerprint


def _refuse_duplicates(shares: Iterable[DecryptedShare]) -> None:
    by_index: dict[int, DecryptedShare] = {}
    by_custodian: dict[str, DecryptedShare] = {}
    for s in sorted(shares, key=lambda s: s.index):
        seen = by_index.get(s.index)
        if seen is not None:
            if seen.custodian == s.custodian:
                message = f"{s.label} was given twice"
            else:
                message = (
                    f"share #{s.index} was given by both {seen.custodian!r} and {s.custodian!r}"
                )
            raise LantauError(ErrorCode.DUPLICATE_SHARE, message)
        seen = by_custodian.get(s.custodian)
        if seen is not None:
            raise LantauError(
                ErrorCode.DUPLICATE_SHARE,
                f"custodian {s.custodian!r} gave two shares (#{seen.index} and #{s.index}): "
                "one person counts once towards the quorum",
            )
        by_index[s.index] = s
        by_custodian[s.custodian] = s


def _combine_mnemonics(mnemonics: list[str]) -> bytearray | None:
    # Returns None rather than raise inside `except`: the library's messages quote mnemonic
    # words, and the LantauError raised next must not even be chained to one.
    try:
        return bytearray(slip39.combine_mnemonics(mnemonics, b""))
    except Exception:
        return None


def _tag(master: bytearray, header: dict[str, Any], nonce: bytes, mnemonic: str) -> bytes:
    fields = [header[f] for f in HEADER]
    return share_tag(master, header["backup_set"], [*fields, nonce, mnemonic])


def _check_backup_set(backup_set: str) -> None:
    try:
        msgspec.convert(backup_set, BackupSetId)
    except msgspec.ValidationError:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"backup set id must match {_BACKUP_SET_RE}",
        ) from None


def _check_sharing(custodians: list[Custodian], threshold: int) -> None:
    if not 1 <= len(custodians) <= MAX_SHARES:
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"a backup set has 1 to {MAX_SHARES} custodians (SLIP-39), not {len(custodians)}",
        )
    validate_custodians(custodians)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise LantauError(ErrorCode.INVALID_FIELD, "threshold must be an integer")
    if not 1 <= threshold <= len(custodians):
        raise LantauError(
            ErrorCode.INVALID_FIELD,
            f"threshold must be between 1 and the number of custodians ({len(custodians)}), "
            f"not {threshold}",
        )


def _short(fingerprint: str) -> str:
    return f"set {fingerprint[:8]}"
