"""The key domain's sealing key on real SoftHSM2 tokens: made with the domain, carried to
an admitted HSM wrapped under the trusted KEK, and a blob sealed on one HSM opens on the
other (and on no HSM of another domain)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from devkit.softhsm import SoftHsmToken, find_module, init_slots
from libs.hsm import ceremony
from libs.keytypes import sealed
from proto.errors import ErrorCode, LantauError

KEK = "lantau-domain-kek"
LABEL = ceremony.sealing_label(KEK)
AAD = sealed.material_aad("desk-a-hd", "bip32-secp256k1")


def _pin(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SoftHsmToken]]:
    made = init_slots(Path(tmp_path_factory.mktemp("domain")), ["first", "second", "other"])
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(made[0].conf_path)
    lib = pkcs11.lib(find_module())
    try:
        lib.get_token(token_label="first")
    except pkcs11.NoSuchToken:  # another test loaded the module on its own configuration
        lib.reinitialize()
    try:
        yield {t.label: t for t in made}
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="module")
def domain(tokens: dict[str, SoftHsmToken]) -> dict[str, SoftHsmToken]:
    """first: domain-init; second: admitted (KEK by transport key, then the sealing key);
    other: a domain of its own."""
    m = find_module()
    first, second, other = tokens["first"], tokens["second"], tokens["other"]
    assert ceremony.init_domain(m, "first", _pin(first.so_pin_file), KEK)
    assert ceremony.init_sealing_key(m, "first", _pin(first.pin_file), KEK)
    transport = ceremony.make_transport_key(m, "second", _pin(second.so_pin_file))
    wrapped = ceremony.export_domain_key(m, "first", _pin(first.so_pin_file), KEK, transport)
    ceremony.import_domain_key(m, "second", _pin(second.so_pin_file), KEK, wrapped)
    sealing = ceremony.export_sealing_key(m, "first", _pin(first.pin_file), KEK)
    ceremony.import_sealing_key(m, "second", _pin(second.pin_file), KEK, sealing)
    assert ceremony.init_domain(m, "other", _pin(other.so_pin_file), KEK)
    assert ceremony.init_sealing_key(m, "other", _pin(other.pin_file), KEK)
    return tokens


def _session(token: SoftHsmToken) -> Any:
    lib = pkcs11.lib(find_module())
    return lib.get_token(token_label=token.label).open(rw=True, user_pin=_pin(token.pin_file))


def test_init_is_idempotent_and_the_sealing_key_has_the_domain_rights(domain) -> None:
    first = domain["first"]
    assert not ceremony.init_sealing_key(find_module(), "first", _pin(first.pin_file), KEK)
    assert ceremony.has_sealing_key(find_module(), "first", _pin(first.pin_file), KEK)
    with _session(first) as s:
        key = sealed.find_sealing_key(s, LABEL)
        for attribute, want in sealed.DOMAIN_SEALING_TEMPLATE.items():
            assert key[attribute] == want, attribute
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]


def test_a_blob_sealed_on_one_member_opens_on_the_admitted_one(domain) -> None:
    secret = bytes(range(32))
    with _session(domain["first"]) as s:
        blob = sealed.seal(sealed.find_sealing_key(s, LABEL), secret, AAD)
    with _session(domain["second"]) as s:
        with sealed.unsealed(sealed.find_sealing_key(s, LABEL), blob, AAD) as opened:
            assert bytes(opened) == secret
    with _session(domain["other"]) as s, pytest.raises(LantauError) as e:
        sealed.unseal(sealed.find_sealing_key(s, LABEL), blob, AAD)
    assert e.value.code == ErrorCode.SEALED_BLOB_INVALID


def test_the_admitted_sealing_key_leaves_only_under_the_trusted_kek(domain) -> None:
    with _session(domain["second"]) as s:
        key = sealed.find_sealing_key(s, LABEL)
        assert key[Attribute.LOCAL] is False  # unwrapped, not generated here
        for attribute, want in sealed.DOMAIN_SEALING_TEMPLATE.items():
            assert key[attribute] == want, attribute
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
        rogue = s.generate_key(
            KeyType.AES, 256, store=False, template={Attribute.WRAP: True, Attribute.TOKEN: False}
        )
        with pytest.raises((pkcs11.KeyNotWrappable, pkcs11.KeyUnextractable)):
            rogue.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(pkcs11.PKCS11Error):  # one-way in PKCS#11
            key[Attribute.WRAP_WITH_TRUSTED] = False
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.SENSITIVE] = False


def test_a_second_import_and_an_import_without_the_kek_are_refused(domain, tmp_path) -> None:
    m = find_module()
    first, second = domain["first"], domain["second"]
    sealing = ceremony.export_sealing_key(m, "first", _pin(first.pin_file), KEK)
    with pytest.raises(ceremony.CeremonyError, match="already holds"):
        ceremony.import_sealing_key(m, "second", _pin(second.pin_file), KEK, sealing)
    with pytest.raises(ceremony.CeremonyError, match="no domain key"):
        ceremony.import_sealing_key(m, "second", _pin(second.pin_file), "another-kek", sealing)
    with pytest.raises(ceremony.CeremonyError, match="refused the user PIN"):
        ceremony.has_sealing_key(m, "second", "0000", KEK)


def test_a_key_extractable_in_the_clear_is_never_a_sealing_key(domain) -> None:
    with _session(domain["other"]) as s:
        s.generate_key(
            KeyType.AES,
            256,
            label="clear-extractable",
            store=True,
            template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True},
        )
        with pytest.raises(LantauError) as e:
            sealed.find_sealing_key(s, "clear-extractable")
        assert e.value.code == ErrorCode.HSM_ERROR and "trusted" in e.value.message
        s.generate_key(
            KeyType.AES,
            256,
            label="wrapping",
            store=True,
            template={Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.EXTRACTABLE: False},
        )
        with pytest.raises(LantauError, match="wrap or unwrap"):
            sealed.find_sealing_key(s, "wrapping")
        assert s.get_key(object_class=ObjectClass.SECRET_KEY, label=LABEL) is not None
