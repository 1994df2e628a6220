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

__all__ = [
    "TX_KINDS",
    "Movement",
    "ParsedTx",
    "address_of",
    "assemble",
    "curve_for",
    "parse",
    "parse_for_signing",
    "signing_inputs",
    "view_digest",
]
