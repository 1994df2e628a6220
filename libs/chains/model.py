"""What a transaction really does, as facts policy and approvers judge.

``ParsedTx`` is built only from the bytes that get signed, never from what a
requester says about them. Approvers sign ``view_digest(parsed)``, so its encoding
is canonical JSON (sorted keys); msgpack cannot carry the > 2**64 integers that
wei and ERC-20 amounts need, JSON in msgspec can.
"""

from __future__ import annotations

import hashlib

import msgspec

from proto.common import TX_KINDS as TX_KINDS  # the kinds decoded here; named once, in proto

# Anything larger is refused before a library sees it: parsers are not all linear
# in the worst case, and no real single-key transaction is close to this.
MAX_PAYLOAD_BYTES = 64 * 1024
# Inputs, outputs or instructions beyond this are refused (TRANSACTION_TOO_LARGE).
MAX_ITEMS = 256

_VIEW_DOMAIN = b"lantau/chains/parsed-tx/v1\x00"


class Movement(msgspec.Struct, frozen=True, kw_only=True):
    """Value leaving (or, in ``ParsedTx.change``, returning to) the key's control."""

    asset: str
    amount: int
    destination: str


class ParsedTx(msgspec.Struct, frozen=True, kw_only=True):
    """The decoded facts of one transaction payload, for policy and approvers."""

    kind: str
    chain: str
    from_address: str
    movements: list[Movement]
    change: list[Movement]
    fee: int
    fee_asset: str
    contracts: list[str]
    calls: list[str]
    unknown: bool
    summary: list[str]


def view_digest(parsed: ParsedTx) -> str:
    """Hex SHA-256 of the domain-separated canonical JSON of ``parsed``: what approvers sign."""
    return hashlib.sha256(_VIEW_DOMAIN + msgspec.json.encode(parsed, order="sorted")).hexdigest()


def units(amount: int, decimals: int) -> str:
    """Exact decimal rendering of ``amount`` minor units (no floats): 1500, 3 -> '1.5'."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"
