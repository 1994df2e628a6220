"""``lantau sign``'s arguments: payload, kind and declared transfer from the command line."""

from __future__ import annotations

import base64

import coincurve
import pytest

from devkit import demo_policy as demo
from devkit import txs
from proto.requests import Transfer
from services.cli.payloads import payload, transfer
from services.cli.usage import UsageError


def test_hex_message_and_file_payloads(tmp_path) -> None:
    tx = txs.eth_transfer(demo.COLD_EVM, 1)
    assert payload(hex_text="0x" + tx.hex(), message=None, file=None, kind="evm_tx") == (
        tx,
        "evm_tx",
    )
    assert payload(hex_text="ab" * 32, message=None, file=None, kind=None) == (
        b"\xab" * 32,
        "digest",
    )
    assert payload(hex_text=None, message="hi", file=None, kind=None) == (b"hi", "message")
    path = tmp_path / "tx.bin"
    path.write_bytes(tx)
    assert payload(hex_text=None, message=None, file=str(path), kind="evm_tx") == (tx, "evm_tx")


def test_a_psbt_file_may_be_base64_as_wallets_write_it(tmp_path) -> None:
    key = coincurve.PrivateKey(b"\x11" * 32).public_key.format(compressed=True)
    psbt = txs.btc_spend(key, demo.COLD_BTC, 1_000).payload
    text, binary = tmp_path / "a.psbt", tmp_path / "b.psbt"
    text.write_bytes(base64.b64encode(psbt) + b"\n")
    binary.write_bytes(psbt)
    for path in (text, binary):
        assert payload(hex_text=None, message=None, file=str(path), kind="btc_psbt")[0] == psbt
    text.write_bytes(b"cHNidP!!not base64")
    with pytest.raises(UsageError, match="base64"):
        payload(hex_text=None, message=None, file=str(text), kind="btc_psbt")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"hex_text": None, "message": None, "file": None, "kind": None}, "one of"),
        ({"hex_text": "ab", "message": "x", "file": None, "kind": None}, "one of"),
        ({"hex_text": "zz", "message": None, "file": None, "kind": None}, "hexadecimal"),
        ({"hex_text": None, "message": None, "file": "f", "kind": None}, "needs --kind"),
        ({"hex_text": None, "message": None, "file": "/nonexistent/x", "kind": "evm_tx"}, "read"),
        ({"hex_text": "ab", "message": None, "file": None, "kind": "psbt"}, "not one of"),
    ],
)
def test_bad_payload_arguments_are_usage_errors(args, needle) -> None:
    with pytest.raises(UsageError, match=needle):
        payload(**args)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BTC:60000:tb1qxyz", Transfer(asset="BTC", amount=60_000, destination="tb1qxyz")),
        (
            f"erc20:{demo.TOKEN}:1500000:{demo.COLD_EVM}",
            Transfer(asset=f"erc20:{demo.TOKEN}", amount=1_500_000, destination=demo.COLD_EVM),
        ),
        ("BTC:0:op_return:00ff", Transfer(asset="BTC", amount=0, destination="op_return:00ff")),
        (
            "ETH:" + "9" * 30 + ":0xfeed",
            Transfer(asset="ETH", amount="9" * 30, destination="0xfeed"),
        ),
    ],
)
def test_declared_transfers(text, expected) -> None:
    assert transfer(text) == expected
    assert transfer(None) is None


@pytest.mark.parametrize(
    "text", ["BTC", "BTC:12", "BTC:x:dest", ":12:dest", "BTC:-1:d", "B T C:1:d"]
)
def test_bad_transfers_are_usage_errors(text) -> None:
    with pytest.raises(UsageError, match="--transfer"):
        transfer(text)
