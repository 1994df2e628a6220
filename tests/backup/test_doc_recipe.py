"""docs/backup-quorum.md promises recovery with standard libraries only: run it on our files."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import pytest
import shamir_mnemonic

from libs.backup import create_backup_set, write_custodian_key, write_share
from tests.backup.helpers import KEYS, SET, custodians
from tests.backup.recipe import recipe


def test_the_documented_recovery_rebuilds_the_credentials(tmp_path: Path) -> None:
    envelopes, created = create_backup_set(SET, custodians(range(5)), 3)
    for i, envelope in enumerate(envelopes):
        write_share(tmp_path / f"share-{i}.json", envelope)
        write_custodian_key(tmp_path / f"key-{i}", KEYS[i][1])
    mnemonic_of, credentials = recipe()["mnemonic_of"], recipe()["credentials"]
    mnemonics = [
        mnemonic_of(str(tmp_path / f"share-{i}.json"), str(tmp_path / f"key-{i}"))
        for i in (4, 0, 2)
    ]
    assert credentials(mnemonics, SET) == {
        "pin": created.pin,
        "so_pin": created.so_pin,
        "kek": created.kek,
        "signing_seed": bytes(created.signing_key()),
    }
    # The seed is the set's pinned Ed25519 key (PyNaCl: the seed is the key's encoding).
    seed = credentials(mnemonics, SET)["signing_seed"]
    assert seed != created.kek
    assert nacl.signing.SigningKey(seed).verify_key.encode().hex() == created.signing_public_key
    # Two shares are not enough, with the recipe either.
    with pytest.raises(shamir_mnemonic.MnemonicError):
        credentials(mnemonics[:2], SET)
