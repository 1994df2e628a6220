"""Clear signing through the real platform: real transactions of every chain signed by
SoftHSM keys and verified with other libraries; rules on what they really do; hostile
transactions refused with their code and nothing signed; approvers reading the decoded
transaction.

The policy is the dev stack's (devkit/demo_policy.py). desk-a may sign blind only with
desk-a-blind; desk-b may use desk-a-blind but never blind.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import msgspec
import nacl.signing
import pytest
from embit import ec
from embit.psbt import PSBT
from embit.script import Script, p2wpkh
from embit.transaction import TransactionOutput
from eth_account.typed_transactions import TypedTransaction
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from solders.instruction import Instruction
from solders.pubkey import Pubkey
from spl.token.constants import TOKEN_2022_PROGRAM_ID

from devkit import demo_policy as demo
from devkit import txcheck, txs
from libs import chains
from libs.bus.permissions import PROVISIONER, approver_identity
from libs.client import CustodyClient
from libs.config import RequesterConfig
from libs.secret_files import write_secret
from proto import codec
from proto.errors import ErrorCode, LantauError
from proto.requests import Transfer, signing_bytes
from proto.results import SignResult
from proto.subjects import RECEIPTS, intent_subject, sign_request_subject
from services.cli.approvals_cmd import find, held_requests, send_vote, signed_vote
from tests.conftest import TRADER, connect_client
from tests.e2e.helpers import lantau, verify_independently
from tests.e2e.test_poison import dead_letter_for
from tests.e2e.test_policy import vote, wait_held, wait_result

OTHER = "desk-b"
EVM, BTC, SOL, BLIND = "desk-a-eth", "desk-a-btc", "desk-a-sol", "desk-a-blind"
NET = demo.BTC_NETWORK
CLUSTER = demo.SOL_CLUSTER
# Every request refused below: at the end, no HSM node may have signed any of them.
REFUSED: list[str] = []


@pytest.fixture(scope="module")
def other_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


@pytest.fixture(scope="module")
def requesters(trader_key, other_key) -> list[RequesterConfig]:
    return [
        RequesterConfig(
            name=TRADER,
            public_key=trader_key.verify_key.encode().hex(),
            keys=["desk-a-*"],
            may_create_keys=True,
            blind_keys=[BLIND],
        ),
        RequesterConfig(name=OTHER, public_key=other_key.verify_key.encode().hex(), keys=[BLIND]),
    ]


@pytest.fixture(scope="module")
async def keys(client: CustodyClient) -> dict[str, bytes]:
    out = {}
    for key_id, curve in ((EVM, "secp256k1"), (BTC, "secp256k1"), (SOL, "ed25519")):
        created = await client.create_key(key_id, curve)
        assert created.status == "created", created.error
        out[key_id] = created.public_key
    created = await client.create_key(BLIND, "secp256k1")
    assert created.status == "created", created.error
    out[BLIND] = created.public_key
    return out


def spl_send(me: bytes, amount: int, **over: object) -> Instruction:
    """An SPL transferChecked of the demo mint this key authorises."""
    return txs.spl_send(
        me,
        source=demo.COLD_SOL,
        mint=demo.MINT,
        dest=demo.COLD_SOL,
        amount=amount,
        decimals=6,
        **over,  # type: ignore[arg-type]
    )


def signed(result: SignResult) -> bytes:
    assert result.status == "signed", result.error
    assert result.signed_payload is not None
    return result.signed_payload


async def refused(
    client: CustodyClient, code: ErrorCode, key_id: str, payload: bytes, kind: str, **kw: object
) -> SignResult:
    """The platform answers with ``code`` and no signature; remembered for the final check."""
    result = await client.sign(key_id, payload, payload_kind=kind, timeout=20, **kw)  # type: ignore[arg-type]
    REFUSED.append(result.request_id)
    assert result.status == "rejected", (result.status, result.error)
    assert result.error is not None and result.error.code == code, result.error
    assert result.error.message
    assert result.signature is None and result.signatures == [] and result.signed_payload is None
    return result


# -- one real transaction of each chain, verified independently --------------------------


async def test_eip1559_and_legacy_transfers_recover_to_the_keys_address(client, keys):
    me = txcheck.evm_address(keys[EVM])
    payload = txs.eth_transfer(demo.COLD_EVM, 5 * 10**16, nonce=3)
    result = await client.sign(
        EVM,
        payload,
        payload_kind="evm_tx",
        transfer=Transfer(asset="ETH", amount=5 * 10**16, destination=demo.COLD_EVM.lower()),
    )
    raw = signed(result)
    assert txcheck.check_evm_tx(raw, keys[EVM]).endswith("this key's address")
    sent = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    assert (to_checksum_address(sent["to"]), sent["value"], sent["chainId"], sent["nonce"]) == (
        demo.COLD_EVM,
        5 * 10**16,
        1,
        3,
    )
    assert result.signatures == [result.signature] and result.recovery_id in (0, 1)

    legacy = txs.unsigned_evm(
        {
            "chainId": 11155111,
            "nonce": 0,
            "to": demo.COLD_EVM,
            "value": 10**15,
            "gas": 21_000,
            "gasPrice": 20 * txs.GWEI,
            "data": b"",
        }
    )
    raw = signed(await client.sign(EVM, legacy, payload_kind="evm_tx", chain="eip155:11155111"))
    assert txcheck.check_evm_tx(raw, keys[EVM]) == (
        f"eth-account recovers the sender {me}: this key's address"
    )


async def test_an_erc20_transfer_and_a_permit_recover_to_the_keys_address(client, keys):
    payload = txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, 1_500_000)
    txcheck.check_evm_tx(signed(await client.sign(EVM, payload, payload_kind="evm_tx")), keys[EVM])

    doc = txs.permit(txcheck.evm_address(keys[EVM]), demo.TOKEN, demo.COLD_EVM, 10**6)
    result = await client.sign(EVM, txs.typed_data(doc), payload_kind="evm_typed_data")
    sig65 = signed(result)
    assert len(sig65) == 65 and sig65[:64] == result.signature
    txcheck.check_typed_data(doc, sig65, keys[EVM])


async def test_a_psbt_is_signed_and_every_input_verifies_with_python_bitcoinlib(client, keys):
    spend = txs.btc_spend(keys[BTC], demo.COLD_BTC, 60_000)
    result = await client.sign(
        BTC,
        spend.payload,
        payload_kind="btc_psbt",
        chain=f"bip122:{NET}",
        transfer=Transfer(asset="BTC", amount=60_000, destination=demo.COLD_BTC),
    )
    psbt = signed(result)
    # The PSBT comes back with our partial signature in place, nothing else changed.
    back = PSBT.parse(psbt)
    assert back.tx.txid() == spend.psbt.tx.txid()
    assert [len(i.partial_sigs) for i in back.inputs] == [1]
    assert "every input verified" in txcheck.check_psbt(psbt, spend.spent)


async def test_solana_transfers_verify_with_solders_and_pynacl(client, keys):
    me = keys[SOL]
    message = txs.sol_message(me, txs.sol_send(me, demo.COLD_SOL, 10**7))
    raw = signed(await client.sign(SOL, message, payload_kind="sol_message", chain=CLUSTER))
    assert "PyNaCl" in txcheck.check_solana(raw, message, me)

    spl = txs.sol_message(me, spl_send(me, 2_500_000))
    raw = signed(await client.sign(SOL, spl, payload_kind="sol_message", chain="devnet"))
    txcheck.check_solana(raw, spl, me)


async def test_lantau_sign_takes_a_transaction_file(platform, keys, trader_key, tmp_path):
    key_file = tmp_path / "desk-a.key"
    write_secret(key_file, trader_key.encode().hex() + "\n")
    spend = txs.btc_spend(keys[BTC], demo.COLD_BTC, 70_000, salt=11)
    psbt_file = tmp_path / "tx.psbt"
    psbt_file.write_bytes(base64.b64encode(spend.payload) + b"\n")  # as Bitcoin Core writes it
    common = ("--requester", TRADER, "--key-file", str(key_file))
    common += ("--config", str(platform.config_path))
    args = ("sign", BTC, "--kind", "btc_psbt", "--file", str(psbt_file), "--chain", NET)
    done = lantau(*args, "--transfer", f"BTC:70000:{demo.COLD_BTC}", *common)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "signed"
    txcheck.check_psbt(bytes.fromhex(result["signed_payload"]), spend.spent)
    lie = lantau(*args, "--transfer", f"BTC:7:{demo.COLD_BTC}", *common)
    assert lie.returncode == 1 and json.loads(lie.stdout)["error"]["code"] == "TRANSFER_MISMATCH"
    REFUSED.append(json.loads(lie.stdout)["request_id"])


# -- rules on what the transaction really does --------------------------------------------


SANCTIONED = [
    ("evm", EVM, "evm_tx", None, "ETH", demo.SANCTIONED, demo.COLD_EVM),
    ("btc", BTC, "btc_psbt", NET, "BTC", demo.SANCTIONED_BTC, demo.COLD_BTC),
    ("sol", SOL, "sol_message", CLUSTER, "SOL", demo.SANCTIONED_SOL, demo.COLD_SOL),
]


def _to(key_id: str, public: bytes, destination: str, amount: int) -> bytes:
    if key_id == EVM:
        return txs.eth_transfer(destination, amount)
    if key_id == BTC:
        return txs.btc_spend(public, destination, amount, salt=7).payload
    return txs.sol_message(public, txs.sol_send(public, destination, amount))


@pytest.mark.parametrize(
    ("key_id", "kind", "chain", "asset", "bad", "cold"),
    [c[1:] for c in SANCTIONED],
    ids=[c[0] for c in SANCTIONED],
)
async def test_a_sanctioned_destination_is_refused_whatever_the_declaration_says(
    client, keys, key_id, kind, chain, asset, bad, cold
):
    payload = _to(key_id, keys[key_id], bad, 50_000)
    # The trading system declares 50,000 to the cold wallet; the transaction pays the
    # sanctioned address: a lie, refused before any rule.
    lie = Transfer(asset=asset, amount=50_000, destination=cold)
    result = await refused(
        client, ErrorCode.TRANSFER_MISMATCH, key_id, payload, kind, chain=chain, transfer=lie
    )
    assert bad.lower() in result.error.message.lower()
    # Without a declaration, the rule judges the parsed destination.
    result = await refused(client, ErrorCode.POLICY_DENIED, key_id, payload, kind, chain=chain)
    assert "no-sanctioned-destinations" in result.error.message
    assert "sanctions list" in result.error.message


async def test_token_contract_and_program_allowlists(platform, client, keys):
    stranger = "0x" + "77" * 20
    unknown_token = txs.erc20_transfer(stranger, demo.COLD_EVM, 1)
    await refused(client, ErrorCode.UNKNOWN_ASSET, EVM, unknown_token, "evm_tx")
    not_ours = txs.erc20_transfer(demo.OTHER_TOKEN, demo.COLD_EVM, 1)
    result = await refused(client, ErrorCode.POLICY_DENIED, EVM, not_ours, "evm_tx")
    assert "deny by default" in result.error.message

    # Token-2022 decodes, but is not a program the desk may invoke.
    me = keys[SOL]
    t22 = txs.sol_message(me, spl_send(me, 1, program=TOKEN_2022_PROGRAM_ID))
    await refused(client, ErrorCode.POLICY_DENIED, SOL, t22, "sol_message", chain=CLUSTER)

    # An undecoded call to a contract the desk uses goes to people; they reject it.
    transfer_from = bytes.fromhex("23b872dd") + b"\x00" * 96
    call = txs.unsigned_evm(txs.eip1559(demo.TOKEN, data=transfer_from, gas=80_000))
    request = client.sign_request(EVM, call, payload_kind="evm_tx")
    await client.submit(request)
    listing = await wait_held(platform, request.request_id)
    assert (
        "undecoded-calls-to-our-contracts" in listing and "unknown selector 0x23b872dd" in listing
    )
    assert vote(platform, "reject", request.request_id, "carol").returncode == 0
    result = await wait_result(client, request.request_id)
    assert result is not None and result.status == "rejected"
    REFUSED.append(request.request_id)
    # The same call to any other contract: nobody can read it, no rule allows it.
    other = txs.unsigned_evm(txs.eip1559("0x" + "99" * 20, data=transfer_from, gas=80_000))
    result = await refused(client, ErrorCode.POLICY_DENIED, EVM, other, "evm_tx")
    assert "deny by default" in result.error.message


async def test_fee_caps(client, keys):
    greedy = txs.eth_transfer(demo.COLD_EVM, 1, max_fee=1_000 * txs.GWEI)
    result = await refused(client, ErrorCode.POLICY_DENIED, EVM, greedy, "evm_tx")
    assert "evm-fee-cap" in result.error.message
    psbt = txs.btc_spend(keys[BTC], demo.COLD_BTC, 60_000, fee=200_000, salt=8).payload
    result = await refused(client, ErrorCode.POLICY_DENIED, BTC, psbt, "btc_psbt", chain=NET)
    assert "btc-fee-cap" in result.error.message


# -- hostile transactions: a typed refusal each, nothing signed ---------------------------


async def test_malformed_and_already_signed_evm_transactions(client, keys):
    good = txs.eth_transfer(demo.COLD_EVM, 1)
    for bad in (b"\x02\xf8\xff\x00", good[:-3], good + b"\x00", b"\x02" + b"\x01" * 40):
        await refused(client, ErrorCode.INVALID_TRANSACTION, EVM, bad, "evm_tx")
    already = signed(
        await client.sign(EVM, txs.eth_transfer(demo.COLD_EVM, 2), payload_kind="evm_tx")
    )
    await refused(client, ErrorCode.INVALID_TRANSACTION, EVM, already, "evm_tx")


async def test_wrong_chain(client):
    bsc = txs.eth_transfer(demo.COLD_EVM, 1, chain_id=56)
    result = await refused(client, ErrorCode.POLICY_DENIED, EVM, bsc, "evm_tx")
    assert "deny by default" in result.error.message  # the evm rule's chains do not list it
    await refused(client, ErrorCode.CHAIN_MISMATCH, EVM, bsc, "evm_tx", chain="eip155:1")
    no_chain_id = txs.unsigned_evm(
        {"nonce": 0, "to": demo.COLD_EVM, "value": 1, "gas": 21_000, "gasPrice": txs.GWEI}
    )
    await refused(client, ErrorCode.CHAIN_ID_REQUIRED, EVM, no_chain_id, "evm_tx")


def _psbt(keys) -> PSBT:
    return PSBT.parse(txs.btc_spend(keys[BTC], demo.COLD_BTC, 60_000, salt=9).payload)


async def test_psbts_without_utxo_data_or_with_lying_amounts(client, keys):
    witness_only = _psbt(keys)
    witness_only.inputs[0].non_witness_utxo = None
    await refused(
        client, ErrorCode.UTXO_NOT_PROVEN, BTC, witness_only.serialize(), "btc_psbt", chain=NET
    )
    bare = _psbt(keys)
    bare.inputs[0].non_witness_utxo = None
    bare.inputs[0].witness_utxo = None
    await refused(client, ErrorCode.UNSUPPORTED_INPUT, BTC, bare.serialize(), "btc_psbt", chain=NET)

    # The segwit amount says more than the previous transaction proves (the BIP-143 fee
    # attack: the fee shown would be a lie).
    lying = _psbt(keys)
    real = lying.inputs[0].witness_utxo
    lying.inputs[0].witness_utxo = TransactionOutput(real.value + 1_000_000, real.script_pubkey)
    await refused(client, ErrorCode.AMOUNT_MISMATCH, BTC, lying.serialize(), "btc_psbt", chain=NET)

    # A previous transaction that is not the one the input spends.
    impostor = _psbt(keys)
    fake = txs.funding((10**8, real.script_pubkey), salt=0xCC)
    impostor.inputs[0].non_witness_utxo = fake
    impostor.inputs[0].witness_utxo = fake.vout[0]
    await refused(
        client, ErrorCode.UTXO_NOT_PROVEN, BTC, impostor.serialize(), "btc_psbt", chain=NET
    )
    # A PSBT does not say its network.
    await refused(client, ErrorCode.CHAIN_ID_REQUIRED, BTC, _psbt(keys).serialize(), "btc_psbt")


async def test_oversized_transactions(platform, client, keys, trader_key):
    # Within the 64 KiB wire limit, but 300 outputs: more than a single key ever signs.
    ours = Script(b"\x00\x14" + bytes(20))
    prev = txs.funding((10**7, p2wpkh(ec.PublicKey.parse(keys[BTC]))), salt=0xDD)
    many = txs.psbt_of([(prev, 0)], [(1_000, ours)] * 300)
    await refused(
        client, ErrorCode.TRANSACTION_TOO_LARGE, BTC, many.serialize(), "btc_psbt", chain=NET
    )
    doc = txs.permit(txcheck.evm_address(keys[EVM]), demo.TOKEN, demo.COLD_EVM, 1)
    for i in range(40):
        doc["types"][f"T{i}"] = [{"name": "x", "type": "uint256"}]
    await refused(
        client, ErrorCode.TRANSACTION_TOO_LARGE, EVM, txs.typed_data(doc), "evm_typed_data"
    )
    # Beyond the wire limit the client refuses it, and a forged one is dead-lettered.
    huge = txs.unsigned_evm(txs.eip1559(demo.TOKEN, data=b"\x01" * 70_000, gas=5_000_000))
    with pytest.raises(LantauError) as info:
        client.sign_request(EVM, huge, payload_kind="evm_tx")
    assert info.value.code == ErrorCode.INVALID_FIELD and "payload" in info.value.message
    forged = client.sign_request(EVM, b"\x02", payload_kind="evm_tx")
    forged = msgspec.structs.replace(forged, payload=huge, signature=b"")
    forged = msgspec.structs.replace(
        forged, signature=trader_key.sign(signing_bytes(forged)).signature
    )
    ack = await client.connection.jetstream().publish(
        sign_request_subject(client.requester), codec.encode(forged)
    )
    inspector = await platform.connect_as(PROVISIONER)
    try:
        record = await dead_letter_for(inspector.jetstream(), "LANTAU_REQUESTS", ack.seq)
    finally:
        await inspector.close()
    assert record.code and "payload" in record.message
    assert await client.get_result(forged.request_id) is None
    REFUSED.append(forged.request_id)


async def test_unknown_programs_and_calls_are_denied_by_default(client, keys):
    me = keys[SOL]
    program = Pubkey.from_string("83dHLTpaGaQzej6bkdro1yVjcGc7zTyK2MVNFirGTyXz")
    message = txs.sol_message(
        me, txs.sol_send(me, demo.COLD_SOL, 1), Instruction(program, b"\x01\x02", [])
    )
    result = await refused(
        client, ErrorCode.POLICY_DENIED, SOL, message, "sol_message", chain=CLUSTER
    )
    assert "deny by default" in result.error.message
    init_code = b"\x60\x00\x60\x00"
    creation = txs.unsigned_evm(
        txs.eip1559("0x" + "00" * 20, data=init_code, gas=500_000) | {"to": b""}
    )
    await refused(client, ErrorCode.POLICY_DENIED, EVM, creation, "evm_tx")
    # Not this key's transaction: another key pays and signs.
    other = nacl.signing.SigningKey.generate().verify_key.encode()
    theirs = txs.sol_message(other, txs.sol_send(other, demo.COLD_SOL, 1))
    await refused(client, ErrorCode.NOT_OUR_TRANSACTION, SOL, theirs, "sol_message", chain=CLUSTER)
    # A Solana message for a secp256k1 key.
    await refused(client, ErrorCode.CURVE_MISMATCH, EVM, message, "sol_message", chain=CLUSTER)


@pytest.mark.parametrize(
    "declared",
    [
        Transfer(asset="ETH", amount=1, destination=demo.COLD_EVM),
        Transfer(asset=f"erc20:{demo.TOKEN}", amount=2, destination=demo.COLD_EVM),
        Transfer(asset=f"erc20:{demo.TOKEN}", amount=1, destination=demo.SANCTIONED),
    ],
    ids=["asset", "amount", "destination"],
)
async def test_mismatched_declarations(client, keys, declared):
    payload = txs.erc20_transfer(demo.TOKEN, demo.COLD_EVM, 1)
    await refused(client, ErrorCode.TRANSFER_MISMATCH, EVM, payload, "evm_tx", transfer=declared)


async def test_blind_signing_is_a_permission_of_requester_and_key(
    client, keys, platform, other_key
):
    digest = hashlib.sha256(b"blind").digest()
    await refused(client, ErrorCode.BLIND_SIGNING_DENIED, EVM, digest, "digest")
    await refused(client, ErrorCode.BLIND_SIGNING_DENIED, SOL, b"transfer 3 SOL", "message")
    async with await connect_client(platform, other_key, OTHER) as desk_b:
        await refused(desk_b, ErrorCode.BLIND_SIGNING_DENIED, BLIND, digest, "digest")
    ok = await client.sign(BLIND, digest)
    assert ok.status == "signed" and ok.signed_payload is None
    verify_independently(ok, digest)


# -- approvers read the decoded transaction -----------------------------------------------


async def test_an_approval_shows_the_decoded_transaction_and_binds_its_view(
    platform, client, keys, nc
):
    payload = txs.eth_transfer(demo.COLD_EVM, 2 * 10**18, nonce=9)
    request = client.sign_request(EVM, payload, payload_kind="evm_tx")
    await client.submit(request)
    listing = await wait_held(platform, request.request_id)
    view = chains.view_digest(chains.parse("evm_tx", payload, keys[EVM]))
    for needle in (
        "rule 'large-eth'",
        "what will be signed (evm_tx, decoded)",
        f"chain eip155:1, from {txcheck.evm_address(keys[EVM])}, nonce 9",
        f"send 2 ETH (2000000000000000000 wei) to {demo.COLD_EVM}",
        "max fee 0.00063 ETH",
        f"view sha256 {view} (decoded again here: the same)",
    ):
        assert needle in listing, (needle, listing)

    # A vote naming another view is refused by policy, and counts for nothing.
    as_alice = await platform.connect_as(approver_identity("alice"))
    try:
        pending = find(await held_requests(as_alice, [TRADER]), request.request_id)
        assert pending is not None and pending.view_sha256 == view
        alice = approver_key(platform, "alice")
        outcome = await send_vote(
            as_alice, signed_vote(pending, "alice", "approve", alice, view_sha256="ab" * 32)
        )
    finally:
        await as_alice.close()
    assert outcome is not None and not outcome.accepted
    assert outcome.code == ErrorCode.APPROVAL_MISMATCH
    # The command refuses, before sending anything, a view other than the one reviewed.
    wrong = vote(platform, "approve", request.request_id, "alice", None, "--view-sha256", "cd" * 32)
    assert wrong.returncode == 1 and "not the one you reviewed" in wrong.stderr
    assert "approved by nobody" in await wait_held(platform, request.request_id)
    assert await client.get_result(request.request_id) is None

    for approver in ("alice", "bob"):
        ok = vote(platform, "approve", request.request_id, approver, None, "--view-sha256", view)
        assert ok.returncode == 0, ok.stderr
    result = await wait_result(client, request.request_id)
    assert result is not None, "no result after the quorum"
    txcheck.check_evm_tx(signed(result), keys[EVM])


def approver_key(platform, approver: str) -> nacl.signing.SigningKey:
    path = platform.run_dir / "approvers" / f"{approver}.key"
    return nacl.signing.SigningKey(bytes.fromhex(path.read_text().strip()))


# -- and nothing was signed for any refused request ---------------------------------------


async def test_no_hsm_node_signed_anything_for_a_refused_request(platform, client, keys):
    assert len(REFUSED) > 30
    # The receipts are read through an ordered consumer: the provisioner's right.
    inspector = await platform.connect_as(PROVISIONER)
    try:
        await _nothing_signed_for_the_refused(client, inspector.jetstream())
    finally:
        await inspector.close()


async def _nothing_signed_for_the_refused(client, js) -> None:
    # A signature made after every refusal: once its receipt is on the record, every
    # receipt of an earlier request is too.
    marker = await client.sign(BLIND, hashlib.sha256(b"marker").digest())
    assert marker.status == "signed"
    wanted = f"{TRADER}.{marker.request_id}"
    for _ in range(100):
        receipts = await all_receipts(js)
        if any(r.request_key == wanted for r in receipts):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the marker's receipt never appeared")
    refused_keys = {f"{TRADER}.{rid}" for rid in REFUSED} | {f"{OTHER}.{rid}" for rid in REFUSED}
    signed_for = [r for r in receipts if r.request_key in refused_keys and r.op == "sign"]
    assert signed_for == [], signed_for
    # Nor did any signer even try: no audit intent, which precedes every HSM attempt.
    for rid in REFUSED:
        for who in (TRADER, OTHER):
            subject = intent_subject(who, rid)
            info = await js.stream_info("LANTAU_AUDIT", subjects_filter=subject)
            assert not info.state.subjects, subject


async def all_receipts(js) -> list:
    info = await js.stream_info(RECEIPTS.name)
    sub = await js.subscribe(RECEIPTS.subjects[0], ordered_consumer=True)
    out = []
    try:
        for _ in range(info.state.messages):
            batch = codec.HSM_RECEIPTS.decode((await sub.next_msg(timeout=5)).data)
            out += batch.receipts
    finally:
        await sub.unsubscribe()
    return out
