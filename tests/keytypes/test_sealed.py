"""Sealing on a real SoftHSM2 token: round trip, tamper, swapped blobs, a key that cannot
leave the token, and secrets that never reach an error message."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism

from devkit.softhsm import find_module, init_token
from libs.keytypes import sealed
from proto.errors import ErrorCode, LantauError

LABEL = "lantau-sealing"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    token = init_token(Path(tmp_path_factory.mktemp("sealed")), "sealed")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    lib = pkcs11.lib(find_module())
    try:
        tok = lib.get_token(token_label="sealed")
    except pkcs11.NoSuchToken:
        # SoftHSM reads its configuration at C_Initialize: if another test in this
        # process loaded the module first, start it again on our configuration.
        lib.reinitialize()
        tok = lib.get_token(token_label="sealed")
    s = tok.open(rw=True, user_pin=token.pin_file.read_text().strip())
    try:
        yield s
    finally:
        s.close()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="module")
def key(session: Any) -> Any:
    return sealed.ensure_sealing_key(session, LABEL)


SECRET = bytes(range(7, 71))  # 64 bytes, recognisable in any text
AAD = sealed.material_aad("desk-a-hd-1", "hd-secp256k1")


def _all_text(exc: BaseException) -> str:
    """Everything a log line could show of an exception: message, repr, chained traceback."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def _assert_secret_absent(exc: BaseException) -> None:
    text = _all_text(exc)
    for form in (SECRET.hex(), SECRET.hex().upper(), repr(SECRET), str(list(SECRET))):
        assert form not in text
    assert SECRET[:16].hex() not in text


def test_round_trip_gives_back_the_material(key: Any) -> None:
    blob = sealed.seal(key, bytearray(SECRET), AAD)
    assert SECRET not in blob and len(blob) == 1 + 12 + len(SECRET) + 16
    assert sealed.unseal(key, blob, AAD) == bytearray(SECRET)


def test_two_seals_of_the_same_material_differ(key: Any) -> None:
    a, b = sealed.seal(key, SECRET, AAD), sealed.seal(key, SECRET, AAD)
    assert a[1:13] != b[1:13]  # fresh IV from the token each time
    assert a != b


def test_ensure_finds_the_existing_key(session: Any, key: Any) -> None:
    blob = sealed.seal(key, SECRET, AAD)
    again = sealed.ensure_sealing_key(session, LABEL)
    assert sealed.unseal(again, blob, AAD) == bytearray(SECRET)
    assert len(list(session.get_objects({Attribute.LABEL: LABEL}))) == 1


@pytest.mark.parametrize("position", [0, 1, 12, 13, 40, -1])
def test_any_altered_byte_is_refused(key: Any, position: int) -> None:
    blob = bytearray(sealed.seal(key, SECRET, AAD))
    blob[position] ^= 0x01
    with pytest.raises(LantauError) as e:
        sealed.unseal(key, bytes(blob), AAD)
    assert e.value.code == ErrorCode.SEALED_BLOB_INVALID
    _assert_secret_absent(e.value)


@pytest.mark.parametrize("cut", [1, 16, 60])
def test_truncated_or_extended_blobs_are_refused(key: Any, cut: int) -> None:
    blob = sealed.seal(key, SECRET, AAD)
    for bad in (blob[:-cut], blob + b"\x00" * cut, b"", b"\x01"):
        with pytest.raises(LantauError) as e:
            sealed.unseal(key, bad, AAD)
        assert e.value.code == ErrorCode.SEALED_BLOB_INVALID


@pytest.mark.parametrize(
    ("key_id", "key_type"),
    [
        ("desk-a-hd-2", "hd-secp256k1"),  # another key's blob swapped in
        ("desk-a-hd-1", "hd-ed25519"),  # same id, another type
        ("desk-a-hd-", "1hd-secp256k1"),  # same bytes run together, split elsewhere
    ],
)
def test_a_blob_opens_only_for_its_own_key_id_and_type(
    key: Any, key_id: str, key_type: str
) -> None:
    blob = sealed.seal(key, SECRET, AAD)
    with pytest.raises(LantauError) as e:
        sealed.unseal(key, blob, sealed.material_aad(key_id, key_type))
    assert e.value.code == ErrorCode.SEALED_BLOB_INVALID
    _assert_secret_absent(e.value)


def test_another_token_key_cannot_open_the_blob(session: Any, key: Any) -> None:
    other = sealed.ensure_sealing_key(session, "lantau-sealing-other")
    blob = sealed.seal(key, SECRET, AAD)
    with pytest.raises(LantauError) as e:
        sealed.unseal(other, blob, AAD)
    assert e.value.code == ErrorCode.SEALED_BLOB_INVALID
    _assert_secret_absent(e.value)


def test_the_sealing_key_cannot_leave_the_token(session: Any, key: Any) -> None:
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.NEVER_EXTRACTABLE] is True
    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.LOCAL] is True  # generated on the token
    assert key[Attribute.WRAP] is False and key[Attribute.UNWRAP] is False
    with pytest.raises(pkcs11.AttributeSensitive):
        key[Attribute.VALUE]
    kek = session.generate_key(
        KeyType.AES, 256, store=False, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True}
    )
    with pytest.raises(pkcs11.KeyUnextractable):
        kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    with pytest.raises(pkcs11.PKCS11Error):  # CKA_MODIFIABLE false: no attribute changes
        key[Attribute.EXTRACTABLE] = True
    assert key[Attribute.EXTRACTABLE] is False


def test_an_extractable_key_with_the_label_is_not_used(session: Any) -> None:
    session.generate_key(
        KeyType.AES,
        256,
        label="weak",
        store=True,
        template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True},
    )
    with pytest.raises(LantauError) as e:
        sealed.ensure_sealing_key(session, "weak")
    assert e.value.code == ErrorCode.HSM_ERROR and "extractable" in e.value.message


def test_a_missing_key_is_unknown(session: Any) -> None:
    with pytest.raises(LantauError) as e:
        sealed.find_sealing_key(session, "no-such-key")
    assert e.value.code == ErrorCode.UNKNOWN_KEY


def test_unsealed_zeroes_the_material_on_exit_and_on_error(key: Any) -> None:
    blob = sealed.seal(key, SECRET, AAD)
    with sealed.unsealed(key, blob, AAD) as secret:
        assert secret == bytearray(SECRET)
        held = secret
    assert held == bytearray(len(SECRET))
    with pytest.raises(RuntimeError), sealed.unsealed(key, blob, AAD) as secret:
        held = secret
        raise RuntimeError("operation failed")
    assert held == bytearray(len(SECRET))


def test_fresh_secret_comes_from_the_token_and_is_zeroed(session: Any) -> None:
    with sealed.fresh_secret(session, 32) as secret:
        assert len(secret) == 32
        first = bytes(secret)
        held = secret
    assert held == bytearray(32)
    assert sealed.random_bytes(session, 32) != first
    for n in (0, -1, 4097):
        with pytest.raises(LantauError) as e:
            sealed.random_bytes(session, n)
        assert e.value.code == ErrorCode.INVALID_FIELD


def test_empty_material_and_empty_binding_are_refused(key: Any) -> None:
    with pytest.raises(LantauError) as e:
        sealed.seal(key, b"", AAD)
    assert e.value.code == ErrorCode.INVALID_FIELD
    for key_id, key_type in (("", "hd-ed25519"), ("k", "")):
        with pytest.raises(LantauError) as e:
            sealed.material_aad(key_id, key_type)
        assert e.value.code == ErrorCode.INVALID_FIELD
