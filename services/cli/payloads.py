"""What ``lantau sign`` is asked to sign: the payload, its kind and a declared transfer,
from the command line's text. Pure: no I/O but reading the named file."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import get_args

import msgspec

from proto.common import PayloadKind
from proto.requests import Transfer
from services.cli.usage import UsageError

KINDS: tuple[str, ...] = get_args(PayloadKind)
# Bitcoin Core and most wallets write a PSBT as base64 text: "psbt\xff" is "cHNidP".
_PSBT_BASE64 = b"cHNidP"


def payload(
    *, hex_text: str | None, message: str | None, file: str | None, kind: str | None
) -> tuple[bytes, PayloadKind]:
    """The bytes to sign and their kind; exactly one of hex, message and file is given."""
    if sum(v is not None for v in (hex_text, message, file)) != 1:
        raise UsageError(
            "give the payload with one of --hex (hex bytes), --message (text) or --file"
        )
    if hex_text is not None:
        try:
            data = bytes.fromhex(hex_text.removeprefix("0x"))
        except ValueError:
            raise UsageError("--hex is not valid hexadecimal") from None
        return data, _kind(kind, "digest")
    if message is not None:
        return message.encode(), _kind(kind, "message")
    assert file is not None
    if kind is None:
        raise UsageError(f"--file needs --kind (one of {', '.join(KINDS)})")
    try:
        data = Path(file).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror}") from None
    if kind == "btc_psbt" and data.lstrip().startswith(_PSBT_BASE64):
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise UsageError(f"{file} looks like a base64 PSBT but is not valid base64") from None
    return data, _kind(kind, kind)


def _kind(given: str | None, default: str) -> PayloadKind:
    kind = given or default
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


def transfer(text: str | None) -> Transfer | None:
    """``ASSET:AMOUNT:DEST`` as a declared Transfer. The asset and the destination may hold
    colons themselves (``erc20:0x...``, ``op_return:...``): the amount is the first field,
    after the asset's first, that is all digits."""
    if text is None:
        return None
    parts = text.split(":")
    for i in range(1, len(parts) - 1):
        if parts[i].isascii() and parts[i].isdigit():
            fields = {
                "asset": ":".join(parts[:i]),
                "amount": int(parts[i]) if len(parts[i]) <= 18 else parts[i],
                "destination": ":".join(parts[i + 1 :]),
            }
            try:
                return msgspec.convert(fields, Transfer)
            except msgspec.ValidationError as e:
                raise UsageError(f"--transfer {text!r}: {e}") from None
    raise UsageError(
        f"--transfer {text!r} is not ASSET:AMOUNT:DESTINATION (amount in minor units, digits)"
    )
