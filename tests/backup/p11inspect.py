"""Read tokens with tools independent of python-pkcs11 (and of Lantau): OpenSC's
``pkcs11-tool`` through the PKCS#11 API, and SoftHSM's own ``softhsm2-dump-file``
straight from the object store, which shows the attributes pkcs11-tool does not print
(CKA_WRAP_WITH_TRUSTED, CKA_MODIFIABLE, CKA_COPYABLE, CKA_SIGN_RECOVER, the KEK's
CKA_UNWRAP_TEMPLATE)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Attributes PKCS#11 sets from an object's history, never from a template: a clone is
# not "local" (generated on this token) nor "always sensitive" (it was once outside).
PROVENANCE = {
    "CKA_LOCAL",
    "CKA_ALWAYS_SENSITIVE",
    "CKA_NEVER_EXTRACTABLE",
    "CKA_KEY_GEN_MECHANISM",
}
PROVENANCE_ACCESS = {"local", "always sensitive", "never extractable"}
# SoftHSM stores a key's value, and every byte string of a private object (its label,
# id, curve...), encrypted under the token's own storage key: they differ between
# tokens for the same key. pkcs11-tool reads those through the API instead.
PER_TOKEN = {"CKA_VALUE"}
# SoftHSM computes these when it generates a secret key but not when it unwraps one
# (softhsm/SoftHSMv2 issue #570): a domain KEK received from a member lacks them.
NOT_ON_UNWRAPPED = {"CKA_CHECK_VALUE", "CKA_VALUE_LEN"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "opensc" if name == "pkcs11-tool" else "softhsm2"
        pytest.fail(f"{name} not found: apt-get install {package} (make system-deps does)")
    return path


@dataclass
class ToolObject:
    """One object as pkcs11-tool -O lists it."""

    kind: str  # "Private Key Object; EC", "Secret Key Object; AES length 32", ...
    label: str = ""
    id: str = ""
    usage: frozenset[str] = frozenset()
    access: frozenset[str] = frozenset()
    lines: list[str] = field(default_factory=list)

    @property
    def object_class(self) -> str:
        return self.kind.split(";")[0]


def pkcs11_tool_objects(
    module: str, conf: Path | str | None, label: str, pin: str
) -> list[ToolObject]:
    """Every object of a token, logged in as the user, as pkcs11-tool prints it.

    pkcs11-tool's --token-label takes the first token whose label *starts* with it
    (OpenSC 0.23): no token label may be a prefix of another's in one configuration."""
    env = {**os.environ, "LANTAU_P11_PIN": pin}
    if conf:
        env["SOFTHSM2_CONF"] = str(conf)
    proc = subprocess.run(
        [tool("pkcs11-tool"), "--module", module, "--token-label", label, "--login",
         "--pin", "env:LANTAU_P11_PIN", "--list-objects"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    objects: list[ToolObject] = []
    for line in proc.stdout.splitlines():
        if line and not line.startswith(" "):
            objects.append(ToolObject(kind=line.strip()))
            continue
        if not objects or ":" not in line:
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        current = objects[-1]
        current.lines.append(line)
        if key == "label":
            current.label = value
        elif key == "ID":
            current.id = value
        elif key == "Usage":
            current.usage = _flags(value)
        elif key == "Access":
            current.access = _flags(value)
    return objects


def _flags(text: str) -> frozenset[str]:
    return frozenset() if text == "none" else frozenset(f.strip() for f in text.split(","))


_ATTRIBUTE = re.compile(r"^(\s*)(CKA_\w+)$")


def dump_object(path: Path) -> dict[str, str]:
    """Every attribute of one SoftHSM object file, by name: TRUE/FALSE, a constant name
    (CKO_..., CKK_...), or the hex of a byte string; nested template attributes as
    ``CKA_UNWRAP_TEMPLATE/CKA_...``."""
    proc = subprocess.run(
        [tool("softhsm2-dump-file"), str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    # SoftHSM 2.6.1's dump tool exits 1 after a complete dump: judge by what it printed.
    assert proc.stdout.startswith("Dump of object file") and "CKA_" in proc.stdout, proc.stderr
    attrs: dict[str, str] = {}
    name = kind = parent = None
    data = bytearray()
    for line in proc.stdout.splitlines()[1:]:
        hexpart, text = line[:24], line[24:]
        m = _ATTRIBUTE.match(text)
        if m:
            if name and kind and "byte string" in kind:
                attrs[name] = data.hex()
            nested = bool(m.group(1))
            if not nested:
                parent = None
            name = f"{parent}/{m.group(2)}" if nested and parent else m.group(2)
            kind, data = None, bytearray()
            continue
        if name is None:
            continue
        if kind is None:
            kind = text.strip()
            if kind == "attribute map attribute":
                attrs[name], parent = "map", name
            continue
        value = text.strip()
        if "byte string" in kind:
            if not value.startswith("(length"):
                data += bytes.fromhex(hexpart)
        elif name not in attrs:
            attrs[name] = value
    if name and kind and "byte string" in kind:
        attrs[name] = data.hex()
    return attrs


def dump_token(token_dir: Path, label: str) -> list[dict[str, str]]:
    """Every object of the token labelled ``label`` under a SoftHSM ``tokens/`` directory
    (several tokens of one configuration share it, one subdirectory each)."""
    for home in sorted(p for p in token_dir.iterdir() if (p / "token.object").exists()):
        found = bytes.fromhex(dump_object(home / "token.object")["CKA_OS_TOKENLABEL"])
        if found.decode().rstrip() == label:
            return [
                dump_object(p) for p in sorted(home.glob("*.object")) if p.name != "token.object"
            ]
    raise AssertionError(f"no token {label!r} under {token_dir}")


def by_class(objects: list[dict[str, str]], cls: str) -> dict[str, dict[str, str]]:
    """Objects of one class keyed by label (CKA_LABEL decoded)."""
    return {
        bytes.fromhex(o.get("CKA_LABEL", "")).decode(): o
        for o in objects
        if o.get("CKA_CLASS") == cls
    }


def comparable(attrs: dict[str, str]) -> dict[str, str]:
    """What must be equal between an original and its copy on another token: every
    attribute but provenance, and but the byte strings SoftHSM encrypts per token."""
    encrypted = attrs.get("CKA_PRIVATE") == "TRUE"
    return {
        k: v
        for k, v in attrs.items()
        if k not in PROVENANCE | PER_TOKEN | NOT_ON_UNWRAPPED and not (encrypted and _is_bytes(v))
    }


def _is_bytes(value: str) -> bool:
    return value == "" or bool(re.fullmatch(r"[0-9a-f]+", value))
