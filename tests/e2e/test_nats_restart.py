"""SIGKILL of nats-server under load, restarted on the same store: nothing lost, no
request signed twice, every HSM signature covered by its audit intent."""

from __future__ import annotations

import pytest

from devkit.chaos import Fault, hsm_signatures, run_chaos, wait_replicated
from libs.bus.permissions import OPERATOR
from proto import codec
from proto.subjects import AUDIT, AUDIT_INTENT, intent_subject
from tests.conftest import connect_client


@pytest.fixture
def platform_options() -> dict[str, object]:
    return {"nodes": 2}


async def test_a_nats_restart_under_load_signs_each_request_once_and_on_the_record(
    fresh_platform, trader_key
):
    stack = fresh_platform
    clients = [await connect_client(stack, trader_key) for _ in range(2)]
    try:
        await clients[0].create_key("desk-a-natsr", "secp256k1")
        await wait_replicated(clients[0], stack, "desk-a-natsr")
        report = await run_chaos(
            stack,
            clients,
            "desk-a-natsr",
            [Fault(3.0, "kill", "nats"), Fault(4.0, "restart", "nats")],
            duration_s=10.0,
        )
        print("\n".join(report.lines()))
        assert report.sent > 100
        assert report.lost == 0 and report.duplicates == 0 and report.unverified == 0
        assert report.signed == report.sent
        made = hsm_signatures(stack)
        twice = {k: nodes for k, nodes in made.items() if len(nodes) > 1}
        assert not twice, f"requests the HSMs signed more than once: {twice}"
        operator = await stack.connect_as(OPERATOR)  # stream views: the operator's
        js = operator.jetstream()
        info = await js.stream_info(AUDIT.name, subjects_filter=f"{AUDIT_INTENT}.>")
        with_intents = set(info.state.subjects or {})
        for key, nodes in made.items():
            requester, request_id = key.split(".", 1)
            subject = intent_subject(requester, request_id)
            assert subject in with_intents, f"{key} was signed with no audit intent"
            last = codec.AUDIT_INTENT.decode((await js.get_last_msg(AUDIT.name, subject)).data)
            assert set(nodes) <= {*last.earlier_nodes, last.node}, key
        assert len(made) >= report.signed  # every signed request was signed by an HSM
        await operator.close()
    finally:
        for c in clients:
            await c.close()
