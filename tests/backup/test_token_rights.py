"""Every copy has the original's rights and no more (issue 16, item 6), read back from real
SoftHSM tokens with tools that are not Lantau's: pkcs11-tool and softhsm2-dump-file.

Two tokens form a key domain through the SO ceremony (libs/hsm/ceremony.py); a
secp256k1 key generated on one is cloned to the other by wrap/unwrap (libs/hsm/token.py),
an Ed25519 key stays where it was made. Then what someone holding the user PIN could try
for more rights is tried, and must fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.softhsm import SoftHsmToken, find_module, init_slots
from tests.backup.p11inspect import (
    PROVENANCE_ACCESS,
    by_class,
    comparable,
    dump_token,
    pkcs11_tool_objects,
)

ROOT = Path(__file__).resolve().parents[2]

SETUP = """
import asyncio, sys
from devkit.softhsm import find_module
from libs.hsm import ceremony
from libs.hsm.token import Pkcs11Token
a, a_pin, a_so, b, b_pin, b_so = sys.argv[1:7]
m = find_module()
read = lambda p: open(p).read().strip()
ceremony.init_domain(m, a, read(a_so), "kek")
transport = ceremony.make_transport_key(m, b, read(b_so))
wrapped = ceremony.export_domain_key(m, a, read(a_so), "kek", transport)
ceremony.import_domain_key(m, b, read(b_so), "kek", wrapped)
ta, tb = Pkcs11Token(m, a, read(a_pin)), Pkcs11Token(m, b, read(b_pin))
async def main():
    k = await ta.generate("orig", "secp256k1")
    await ta.generate("edkey", "ed25519")
    blob = await ta.wrap("orig", "kek")
    copy = await tb.unwrap("orig", "secp256k1", "kek", blob, k.public_key)
    assert copy.public_key == k.public_key
    print(blob.hex())
asyncio.run(main())
"""

# What a holder of token B's user PIN tries; each line prints what happened.
ATTEMPTS = """
import sys, pkcs11
from pkcs11 import Attribute as A, Mechanism as M, ObjectClass as OC, KeyType
from devkit.softhsm import find_module
label, pin, blob = sys.argv[1], open(sys.argv[2]).read().strip(), bytes.fromhex(sys.argv[3])
s = pkcs11.lib(find_module()).get_token(token_label=label).open(rw=True, user_pin=pin)
def attempt(name, fn):
    try:
        fn(); print(name, "DONE")
    except pkcs11.PKCS11Error as e:
        print(name, "refused", type(e).__name__)
priv = s.get_key(object_class=OC.PRIVATE_KEY, label="orig")
kek = s.get_key(object_class=OC.SECRET_KEY, label="kek")
def set_attr(obj, attr, value):
    obj[attr] = value
attempt("clone-derive", lambda: set_attr(priv, A.DERIVE, True))
attempt("clone-decrypt", lambda: set_attr(priv, A.DECRYPT, True))
attempt("clone-copy-with-derive", lambda: priv.copy({A.DERIVE: True}))
attempt("kek-decrypt", lambda: set_attr(kek, A.DECRYPT, True))
attempt("kek-sign", lambda: set_attr(kek, A.SIGN, True))
def steal():
    k = kek.unwrap_key(
        OC.PRIVATE_KEY, KeyType.EC, blob, label="stolen", store=False,
        mechanism=M.AES_KEY_WRAP_PAD,
        template={A.SENSITIVE: False, A.EXTRACTABLE: True, A.ENCRYPT: pkcs11.DEFAULT,
                  A.VERIFY: pkcs11.DEFAULT, A.WRAP: pkcs11.DEFAULT},
    )
    k[A.VALUE]
attempt("unwrap-in-plaintext", steal)
def ecdh_copy():
    kek.unwrap_key(
        OC.PRIVATE_KEY, KeyType.EC, blob, label="oracle", store=False,
        mechanism=M.AES_KEY_WRAP_PAD,
        template={A.SENSITIVE: True, A.WRAP_WITH_TRUSTED: True, A.DERIVE: True,
                  A.COPYABLE: False, A.MODIFIABLE: False, A.ENCRYPT: pkcs11.DEFAULT,
                  A.VERIFY: pkcs11.DEFAULT, A.WRAP: pkcs11.DEFAULT},
    )
attempt("unwrap-with-derive", ecdh_copy)
rogue = s.generate_key(KeyType.AES, 256, template={A.WRAP: True, A.TOKEN: False})
attempt("wrap-under-untrusted-key", lambda: rogue.wrap_key(priv, mechanism=M.AES_KEY_WRAP_PAD))
"""


def run(script: str, tokens: list[SoftHsmToken], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(tokens[0].conf_path), "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[SoftHsmToken], bytes]:
    tokens = init_slots(tmp_path_factory.mktemp("rights"), ["rights-a", "rights-b"])
    a, b = tokens
    blob = run(
        SETUP,
        tokens,
        a.label, str(a.pin_file), str(a.so_pin_file),
        b.label, str(b.pin_file), str(b.so_pin_file),
    )  # fmt: skip
    return tokens, bytes.fromhex(blob.strip())


def listed(token: SoftHsmToken) -> dict[tuple[str, str], object]:
    objects = pkcs11_tool_objects(
        find_module(), token.conf_path, token.label, token.pin_file.read_text().strip()
    )
    return {(o.object_class, o.label): o for o in objects}


def test_pkcs11_tool_sees_sign_only_private_keys_and_a_wrap_only_domain_key(domain):
    tokens, _ = domain
    for token in tokens:
        objects = listed(token)
        private = {label: o for (cls, label), o in objects.items() if cls == "Private Key Object"}
        assert private, f"no private key on {token.label}"
        for label, o in private.items():
            assert o.usage == {"sign"}, (token.label, label, o.usage)
            assert {"sensitive", "extractable"} <= o.access, (token.label, label, o.access)
            assert "never extractable" not in o.access
        for (cls, label), o in objects.items():
            if cls == "Public Key Object":
                assert o.usage == {"verify"}, (token.label, label, o.usage)
        kek = objects[("Secret Key Object", "kek")]
        assert kek.usage == {"wrap", "unwrap"}, kek.usage
        assert "sensitive" in kek.access


def test_the_clone_has_exactly_the_originals_rights_by_pkcs11_tool(domain):
    (a, b), _ = domain
    original, clone = listed(a), listed(b)
    for cls in ("Private Key Object", "Public Key Object"):
        o, c = original[(cls, "orig")], clone[(cls, "orig")]
        assert o.usage == c.usage
        # Provenance (generated here, always sensitive) is the token's to say, not ours.
        assert o.access - PROVENANCE_ACCESS == c.access - PROVENANCE_ACCESS, (o.access, c.access)
        assert o.id == c.id
    assert ("Private Key Object", "edkey") not in clone  # never wrapped, never cloned


def test_the_store_holds_every_right_as_the_template_says(domain):
    """softhsm2-dump-file reads what pkcs11-tool does not show."""
    tokens, _ = domain
    privates = []
    for token in tokens:
        objects = dump_token(token.token_dir, token.label)
        keys = [o for o in objects if o.get("CKA_CLASS") == "CKO_PRIVATE_KEY"]
        assert keys
        for attrs in keys:
            for name, want in {
                "CKA_SENSITIVE": "TRUE",
                "CKA_EXTRACTABLE": "TRUE",
                "CKA_WRAP_WITH_TRUSTED": "TRUE",
                "CKA_SIGN": "TRUE",
                "CKA_SIGN_RECOVER": "FALSE",
                "CKA_DERIVE": "FALSE",
                "CKA_DECRYPT": "FALSE",
                "CKA_UNWRAP": "FALSE",
                "CKA_MODIFIABLE": "FALSE",
                "CKA_COPYABLE": "FALSE",
            }.items():
                assert attrs[name] == want, (token.label, name, attrs[name])
        privates += [(token.label, comparable(k)) for k in keys if k["CKA_KEY_TYPE"] == "CKK_EC"]
        for attrs in by_class(objects, "CKO_PUBLIC_KEY").values():
            for name in ("CKA_ENCRYPT", "CKA_WRAP", "CKA_DERIVE", "CKA_MODIFIABLE"):
                assert attrs[name] == "FALSE", (token.label, name)
        kek = by_class(objects, "CKO_SECRET_KEY")["kek"]
        for name in ("CKA_ENCRYPT", "CKA_DECRYPT", "CKA_SIGN", "CKA_VERIFY", "CKA_DERIVE"):
            assert kek[name] == "FALSE", (token.label, name)
        assert kek["CKA_TRUSTED"] == kek["CKA_WRAP"] == kek["CKA_UNWRAP"] == "TRUE"
        assert kek["CKA_MODIFIABLE"] == kek["CKA_COPYABLE"] == "FALSE"
        template = {
            k.split("/")[1]: v for k, v in kek.items() if k.startswith("CKA_UNWRAP_TEMPLATE/")
        }
        assert template == {
            "CKA_SENSITIVE": "TRUE",
            "CKA_WRAP_WITH_TRUSTED": "TRUE",
            "CKA_DERIVE": "FALSE",
            "CKA_COPYABLE": "FALSE",
            "CKA_MODIFIABLE": "FALSE",
        }
    # The secp256k1 original (token a) and its clone (token b): attribute by attribute.
    (first_token, first), (second_token, second) = privates
    assert first_token != second_token
    assert first == second, {
        k: (first.get(k), second.get(k)) for k in first | second if first.get(k) != second.get(k)
    }
    (a, b), _ = domain
    kek_a = comparable(by_class(dump_token(a.token_dir, a.label), "CKO_SECRET_KEY")["kek"])
    kek_b = comparable(by_class(dump_token(b.token_dir, b.label), "CKO_SECRET_KEY")["kek"])
    assert kek_a == kek_b


def test_a_pin_holder_gets_no_more_rights(domain):
    (a, b), blob = domain
    out = run(ATTEMPTS, [a, b], b.label, str(b.pin_file), blob.hex())
    outcomes = dict(line.split(" ", 1) for line in out.splitlines())
    assert outcomes == {
        "clone-derive": "refused PKCS11Error",  # CKR_ACTION_PROHIBITED: not modifiable
        "clone-decrypt": "refused PKCS11Error",
        "clone-copy-with-derive": "refused PKCS11Error",
        "kek-decrypt": "refused PKCS11Error",
        "kek-sign": "refused PKCS11Error",
        "unwrap-in-plaintext": "refused TemplateInconsistent",
        "unwrap-with-derive": "refused TemplateInconsistent",
        "wrap-under-untrusted-key": "refused KeyNotWrappable",
    }, out
