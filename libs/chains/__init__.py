"""Clear signing: decode real transactions, compute what the HSM signs, assemble the result.

Pure functions, no I/O. See docs/chains.md for what each payload kind parses,
signs, returns and refuses.
"""

from libs.chains.dispatch import (
    address_of,
    assemble,
    curve_for,
    parse,
    parse_for_signing,
    signing_inputs,
)
from libs.chains.model import TX_KINDS, Movement, ParsedTx, view_digest


def preload() -> None:
    """Import what the parsers load on first use, so no request waits for it."""
    import eth_account.messages  # noqa: F401


__all__ = [
    "TX_KINDS",
    "Movement",
    "ParsedTx",
    "address_of",
    "assemble",
    "curve_for",
    "parse",
    "parse_for_signing",
    "preload",
    "signing_inputs",
    "view_digest",
]
