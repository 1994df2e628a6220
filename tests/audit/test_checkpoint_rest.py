"""An idle log comes to rest: the receipts of checkpoint signatures (echoes) do not call
for a checkpoint of their own within checkpoint_interval_s. Pure."""

from __future__ import annotations

import msgspec
import pytest

from libs.config import AuditConfig
from proto import codec
from proto.hsm import HsmReceipt, HsmReceipts
from proto.subjects import AUDIT_CHECKPOINT_KEY
from services.audit.appender import checkpoint_due
from services.audit.facts import checkpoint_echo
from tests.proto.test_codec import REQ


def _receipts(*receipts: HsmReceipt) -> bytes:
    return codec.encode(HsmReceipts(node="hsm-1", receipts=list(receipts)))


def _receipt(op: str = "sign_checkpoint", key_id: str = AUDIT_CHECKPOINT_KEY, **kw) -> HsmReceipt:
    return HsmReceipt(op=op, key_id=key_id, outcome=kw.pop("outcome", "done"), at_ms=1, **kw)


def test_receipts_of_checkpoint_signatures_only_are_an_echo():
    assert checkpoint_echo(_receipts(_receipt()))
    assert checkpoint_echo(_receipts(_receipt(), _receipt()))


@pytest.mark.parametrize(
    "data",
    [
        # A signature for a request travels in the same batch: it calls for a checkpoint.
        _receipts(_receipt(), _receipt(op="sign", key_id="desk-a")),
        # A refusal is news, even of a checkpoint signature.
        _receipts(_receipt(outcome="refused", code="EVIDENCE_REFUSED")),
        # The op on another key (a node refuses it, but the claim itself is news).
        _receipts(_receipt(key_id="desk-a")),
        _receipts(_receipt(op="clone_check")),
        _receipts(),
        b"",
        b"\xff\x00garbage",
        msgspec.msgpack.encode({"type": "hsm_receipts", "receipts": "not a list"}),
        msgspec.msgpack.encode(
            {"type": "audit_note", "receipts": [{"op": "sign_checkpoint", "outcome": "done"}]}
        ),
    ],
)
def test_anything_else_is_not_an_echo(data):
    assert not checkpoint_echo(data)


def test_a_request_is_not_an_echo():
    assert not checkpoint_echo(codec.encode(REQ))


CFG = AuditConfig(witness_files=["w"], checkpoint_interval_s=5.0, checkpoint_idle_s=60.0)


def test_a_record_with_news_is_checkpointed_within_the_interval():
    assert not checkpoint_due(4.9, called=True, cfg=CFG)
    assert checkpoint_due(5.0, called=True, cfg=CFG)


def test_echoes_and_an_idle_head_wait_for_the_idle_interval():
    assert not checkpoint_due(5.0, called=False, cfg=CFG)
    assert not checkpoint_due(59.9, called=False, cfg=CFG)
    assert checkpoint_due(60.0, called=False, cfg=CFG)
    assert checkpoint_due(float("inf"), called=False, cfg=CFG)  # no checkpoint yet


def test_an_idle_interval_shorter_than_the_interval_bounds_both():
    cfg = msgspec.structs.replace(CFG, checkpoint_idle_s=2.0)
    assert checkpoint_due(2.0, called=True, cfg=cfg)
    assert checkpoint_due(2.0, called=False, cfg=cfg)
