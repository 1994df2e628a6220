"""`lantau approve` with a TOTP second factor, against the real platform: the secret is
drawn and sealed in policy's token, shown once to the person, enrolled by a quorum, and
every vote signed with a key file then needs a fresh code (policy checks it; the
hsm-nodes sign only with the votes policy counted)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pyotp
import pytest

from devkit import demo_policy
from libs.client import CustodyClient
from proto.requests import Transfer
from proto.results import SignResult
from services.cli.credentials_cmd import read_records
from tests.e2e.helpers import lantau

KEY = "desk-a-totp"


def cli(platform, *args: str):
    return lantau(*args, "--config", str(platform.config_path))


def key_file(platform, name: str) -> str:
    return str(platform.run_dir / "approvers" / f"{name}.key")


@pytest.fixture(scope="module")
async def required(platform) -> None:
    path = platform.run_dir / "policy.toml"
    path.write_text(path.read_text().replace("required = false", "required = true"))
    await asyncio.sleep(2.5)


async def enrol_totp(platform, person: str) -> pyotp.TOTP:
    done = await asyncio.to_thread(
        cli,
        platform,
        "credentials",
        "enrol-totp",
        "--approver",
        person,
        "--key-file",
        key_file(platform, person),
        "--label",
        "phone",
    )
    assert done.returncode == 0, done.stderr
    uri = re.search(r"otpauth://\S+", done.stdout)
    credential = re.search(rf"{person}/([0-9a-f]{{32}}) proposed", done.stdout)
    assert uri and credential, done.stdout
    for endorser in [n for n in demo_policy.APPROVERS if n != person][:2]:
        endorsed = await asyncio.to_thread(
            cli,
            platform,
            "credentials",
            "endorse",
            f"{person}/{credential.group(1)}",
            "--approver",
            endorser,
            "--key-file",
            key_file(platform, endorser),
        )
        assert endorsed.returncode == 0, endorsed.stderr
    assert "enrolled" in endorsed.stdout, endorsed.stdout
    return pyotp.parse_uri(uri.group(0))  # type: ignore[return-value]


async def held(platform, client: CustodyClient, tag: str):
    payload = hashlib.sha256(f"totp {tag}".encode()).digest()
    transfer = Transfer(asset="ETH", amount=demo_policy.LARGE + 1, destination="0xfeed")
    request = client.sign_request(KEY, payload, transfer=transfer)
    await client.submit(request)
    for _ in range(100):
        if request.request_id in cli(platform, "approvals", "list").stdout:
            return request
        await asyncio.sleep(0.2)
    raise AssertionError("never held")


def approve(platform, request_id: str, person: str, *code: str):
    extra = ["--totp-code", *code] if code else []
    return cli(
        platform,
        "approve",
        request_id,
        "--approver",
        person,
        "--key-file",
        key_file(platform, person),
        *extra,
    )


async def test_key_file_votes_need_a_fresh_totp_code(platform, client, required, nc):
    created = await client.create_key(KEY, "secp256k1")
    assert created.status == "created", created.error
    request = await held(platform, client, "first")
    # Before any TOTP authenticator is enrolled, a key-file vote is refused by policy.
    early = approve(platform, request.request_id, "alice", "123456")
    assert early.returncode == 1 and "SECOND_FACTOR_REQUIRED" in early.stderr, early.stderr

    alice, bob = await enrol_totp(platform, "alice"), await enrol_totp(platform, "bob")
    # Asked for on a terminal only; a script must pass it.
    silent = approve(platform, request.request_id, "alice")
    assert silent.returncode == 2 and "--totp-code" in silent.stderr, silent.stderr
    wrong = approve(platform, request.request_id, "alice", "000000")
    assert wrong.returncode == 1 and "SECOND_FACTOR_INVALID" in wrong.stderr, wrong.stderr

    code = alice.now()
    first = approve(platform, request.request_id, "alice", code)
    assert first.returncode == 0 and "1 of 2" in first.stdout, first.stderr
    # Alice's code is not Bob's second factor, and is good only once.
    borrowed = approve(platform, request.request_id, "bob", code)
    assert borrowed.returncode == 1 and "SECOND_FACTOR_INVALID" in borrowed.stderr
    other = await held(platform, client, "second")
    again = approve(platform, other.request_id, "alice", code)
    assert again.returncode == 1 and "already used" in again.stderr, again.stderr

    second = approve(platform, request.request_id, "bob", bob.now())
    assert second.returncode == 0 and "quorum met" in second.stdout, second.stderr
    result = await client.send(request, timeout=30)
    assert isinstance(result, SignResult) and result.status == "signed", result

    # The secret exists only sealed: not in the record, not in any service's log.
    records = await read_records(nc)
    totps = [r for r in records if r.statement.kind == "totp"]
    assert len(totps) == 2
    for secret, record in ((alice.byte_secret(), totps[0]), (bob.byte_secret(), totps[1])):
        assert record.statement.sealed_with and len(record.statement.sealed_secret) > 20
        assert secret not in record.statement.sealed_secret
    secrets_ = [alice.secret, bob.secret]
    for log in (platform.run_dir / "logs").glob("*.log"):
        text = log.read_text()
        assert not any(s in text for s in secrets_), log.name


async def test_ceremonies_need_their_officers_second_factor(platform, required):
    path = platform.run_dir / "policy.toml"
    text = path.read_text().replace("enrol_quorum = 2", "enrol_quorum = 2\nceremonies = true")
    path.write_text(text)
    await asyncio.sleep(2.5)
    carol = await enrol_totp(platform, "carol")
    new, member = platform.tokens[1], platform.tokens[0]
    admit = (
        "hsm",
        "admit",
        "hsm-2",
        "--member",
        "hsm-1",
        "--so-pin-file",
        str(new.so_pin_file),
        "--member-so-pin-file",
        str(member.so_pin_file),
    )
    nameless = cli(platform, *admit)
    assert nameless.returncode == 2 and "--officer" in nameless.stderr, nameless.stderr
    wrong = cli(platform, *admit, "--officer", "carol", "--totp-code", "000000")
    assert wrong.returncode == 2 and "SECOND_FACTOR_INVALID" in wrong.stderr, wrong.stderr
    assert "hsm admit hsm-2 --member hsm-1 refused" in wrong.stderr
    done = cli(platform, *admit, "--officer", "carol", "--totp-code", carol.now())
    assert done.returncode == 0 and "admitted" in done.stdout, done.stderr
    # The backup ceremonies ask the same, before anything else (no set is even looked up).
    verify = ("backup", "verify", "--set", "offsite-a")
    nameless = cli(platform, *verify)
    assert nameless.returncode == 2 and "--officer" in nameless.stderr, nameless.stderr
    wrong = cli(platform, *verify, "--officer", "carol", "--totp-code", "000000")
    assert wrong.returncode == 2 and "SECOND_FACTOR_INVALID" in wrong.stderr, wrong.stderr
    assert "backup verify --set offsite-a refused" in wrong.stderr
