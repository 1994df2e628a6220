"""Key-domain ceremonies, run by an administrator directly on a token with its SO PIN.

A key domain is a set of HSMs sharing one AES-256 domain key-encryption key (KEK):
wrap/unwrap only, CKA_TRUSTED (only a Security Officer can set that), extractable
only under another trusted key. Private keys are CKA_WRAP_WITH_TRUSTED, so the KEK
is the only thing that can ever take them out of an HSM, and only wrapped.

Admitting an HSM moves the KEK without it existing in plaintext outside an HSM:
1. the new HSM's SO makes an ephemeral RSA-3072 transport key pair;
2. a member's SO imports the transport public key as trusted and wraps the KEK (RSA-OAEP);
3. the new HSM's SO unwraps it as a trusted KEK and destroys the transport pair.
These functions never go over the bus: SO PINs stay with the administrator.

The domain also has a sealing key (AES-256, encrypt/decrypt only, sensitive,
extractable only wrapped under the trusted KEK): key types the tokens have no mechanism
for are kept as material sealed under it (docs/keytypes.md), and a sealed blob must open
on every HSM of the domain. It is created with the domain and carried to each admitted
HSM wrapped under the KEK, once the KEK is there. It is a private object, made in a
user session (the node's user PIN), so the token keeps its value encrypted at rest.
"""

from __future__ import annotations

import ctypes
from typing import Any

import msgspec
import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.attributes import AttributeMapper

from libs.keytypes.sealed import DOMAIN_SEALING_TEMPLATE, find_sealing_key
from proto.errors import ErrorCode, LantauError

TRANSPORT_LABEL = "lantau-transport"
SEALING_SUFFIX = "-sealing"
# SoftHSM wraps with RSA-OAEP only over SHA-1 (its MGF1 too); OAEP-SHA1 remains sound
# for key transport (no collision resistance needed) and the key lives minutes.
_OAEP = (Mechanism.SHA_1, MGF.SHA1, None)
_UNUSED = {
    Attribute.SIGN: pkcs11.DEFAULT,
    Attribute.VERIFY: pkcs11.DEFAULT,
    Attribute.DERIVE: pkcs11.DEFAULT,
}
# Whatever the domain KEK unwraps must be created sensitive, extractable only under a
# trusted key again, unable to derive, and unchangeable. Without it, anyone holding a
# member's user PIN could unwrap a wrapped key with a template of their own
# (CKA_SENSITIVE false) and read it in plaintext (measured on SoftHSM 2.6.1, which
# enforces this template: every attribute must appear, equal, in the caller's).
# Type-agnostic on purpose: no CKA_SIGN or CKA_DECRYPT, so other key types can come.
KEK_UNWRAP_TEMPLATE = {
    Attribute.SENSITIVE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.DERIVE: False,
    Attribute.COPYABLE: False,
    Attribute.MODIFIABLE: False,
}
# The domain KEK on every HSM of the domain, created or imported: a public object so
# worker sessions see it; SENSITIVE keeps its value inside; TRUSTED (SO only) makes it
# the one key WRAP_WITH_TRUSTED private keys can leave under; wrap/unwrap only, and not
# modifiable: with CKA_MODIFIABLE true a PIN holder could turn CKA_DECRYPT on and
# decrypt wrapped keys with AES-ECB (measured on SoftHSM 2.6.1).
KEK_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.TRUSTED: True,
    Attribute.WRAP: True,
    Attribute.UNWRAP: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
    Attribute.COPYABLE: False,
    Attribute.UNWRAP_TEMPLATE: KEK_UNWRAP_TEMPLATE,
    # Last: SoftHSM applies attributes in order and refuses any after this one.
    Attribute.MODIFIABLE: False,
}
# Attributes a PKCS#11 read through python-pkcs11 cannot return (arrays); checked with
# softhsm2-dump-file in tests/backup/test_token_rights.py instead.
_UNREADABLE = {Attribute.UNWRAP_TEMPLATE}


class _CkAttribute(ctypes.Structure):
    # CK_ATTRIBUTE: type, pValue, ulValueLen (pkcs11t.h).
    _fields_ = [
        ("type", ctypes.c_ulong),
        ("pValue", ctypes.c_void_p),
        ("ulValueLen", ctypes.c_ulong),
    ]


class TemplateAttributes(AttributeMapper):
    """python-pkcs11's attribute mapper, able to send CKA_UNWRAP_TEMPLATE (an array of
    CK_ATTRIBUTE, which it has no handler for). The nested values live as long as the
    mapper, hence the session: the module copies them when it creates the object."""

    def __init__(self) -> None:
        super().__init__()
        self._keep: list[Any] = []
        self.register_handler(Attribute.UNWRAP_TEMPLATE, self._pack_template, bytes)

    def _pack_template(self, template: dict[Attribute, Any]) -> bytes:
        array = (_CkAttribute * len(template))()
        for i, (attribute, value) in enumerate(template.items()):
            raw = self.pack_attribute(attribute, value)
            buffer = ctypes.create_string_buffer(raw, len(raw))
            self._keep.append(buffer)
            array[i].type = attribute
            array[i].pValue = ctypes.addressof(buffer)
            array[i].ulValueLen = len(raw)
        self._keep.append(array)
        return ctypes.string_at(ctypes.addressof(array), ctypes.sizeof(array))


class TransportKey(msgspec.Struct, frozen=True):
    """The public half of a new HSM's transport key, handed to a domain member."""

    modulus: bytes
    public_exponent: bytes


class CeremonyError(LantauError):
    """A key-domain ceremony step that cannot be done; nothing was changed by it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CEREMONY_FAILED, message)


def sealing_label(kek_label: str) -> str:
    """The label of the domain sealing key that goes with the domain KEK ``kek_label``."""
    return kek_label + SEALING_SUFFIX


def _so_session(module: str, token_label: str, so_pin: str) -> Any:
    try:
        token = pkcs11.lib(module).get_token(token_label=token_label)
        return token.open(rw=True, so_pin=so_pin, attribute_mapper=TemplateAttributes())
    except pkcs11.NoSuchToken:
        raise CeremonyError(f"no token labelled {token_label!r}") from None
    except pkcs11.PinIncorrect:
        raise CeremonyError(f"token {token_label!r} refused the SO PIN") from None


def _find(session: Any, object_class: ObjectClass, label: str) -> Any | None:
    try:
        return session.get_key(object_class=object_class, label=label)
    except pkcs11.NoSuchKey:
        return None


def has_domain_key(module: str, token_label: str, so_pin: str, kek_label: str) -> bool:
    with _so_session(module, token_label, so_pin) as s:
        return _find(s, ObjectClass.SECRET_KEY, kek_label) is not None


def init_domain(module: str, token_label: str, so_pin: str, kek_label: str) -> bool:
    """Create the domain KEK on the first HSM of a domain; False if it already has one."""
    with _so_session(module, token_label, so_pin) as s:
        if _find(s, ObjectClass.SECRET_KEY, kek_label) is not None:
            return False
        s.generate_key(
            KeyType.AES,
            256,
            label=kek_label,
            store=True,
            template=KEK_TEMPLATE,
        )
        return True


def make_transport_key(module: str, token_label: str, so_pin: str) -> TransportKey:
    """Step 1 on the new HSM: an ephemeral key pair that only unwraps."""
    with _so_session(module, token_label, so_pin) as s:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            old = _find(s, cls, TRANSPORT_LABEL)
            if old is not None:
                old.destroy()
        pub, _ = s.generate_keypair(
            KeyType.RSA,
            3072,
            label=TRANSPORT_LABEL,
            store=True,
            public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.UNWRAP: True,
            },
        )
        return TransportKey(
            modulus=bytes(pub[Attribute.MODULUS]),
            public_exponent=bytes(pub[Attribute.PUBLIC_EXPONENT]),
        )


def export_domain_key(
    module: str, token_label: str, so_pin: str, kek_label: str, transport: TransportKey
) -> bytes:
    """Step 2 on a member: the KEK wrapped under the new HSM's transport key."""
    with _so_session(module, token_label, so_pin) as s:
        kek = _find(s, ObjectClass.SECRET_KEY, kek_label)
        if kek is None:
            raise CeremonyError(f"token {token_label!r} is not a member of domain {kek_label!r}")
        wrapping = s.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.TOKEN: False,  # a session object: gone when the ceremony ends
                Attribute.MODULUS: transport.modulus,
                Attribute.PUBLIC_EXPONENT: transport.public_exponent,
                Attribute.WRAP: True,
                Attribute.TRUSTED: True,
                Attribute.LABEL: TRANSPORT_LABEL,
            }
        )
        return bytes(
            wrapping.wrap_key(kek, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP)
        )


def import_domain_key(
    module: str, token_label: str, so_pin: str, kek_label: str, wrapped: bytes
) -> None:
    """Step 3 on the new HSM: unwrap the KEK as trusted, then destroy the transport pair."""
    with _so_session(module, token_label, so_pin) as s:
        if _find(s, ObjectClass.SECRET_KEY, kek_label) is not None:
            raise CeremonyError(f"token {token_label!r} already holds a domain key {kek_label!r}")
        private = _find(s, ObjectClass.PRIVATE_KEY, TRANSPORT_LABEL)
        if private is None:
            raise CeremonyError(f"token {token_label!r} has no transport key: run step 1 first")
        private.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            wrapped,
            label=kek_label,
            store=True,
            mechanism=Mechanism.RSA_PKCS_OAEP,
            mechanism_param=_OAEP,
            template={**_UNUSED, **KEK_TEMPLATE},
        )
        imported = _find(s, ObjectClass.SECRET_KEY, kek_label)
        if imported is None:
            raise CeremonyError(f"token {token_label!r} did not keep the imported domain key")
        mismatched = [
            a.name
            for a, want in KEK_TEMPLATE.items()
            if a not in _UNREADABLE and imported[a] != want
        ]
        if mismatched:
            # Never leave a domain key with other rights than the domain's.
            imported.destroy()
            raise CeremonyError(f"the imported domain key differs in {', '.join(mismatched)}")
        private.destroy()
        public = _find(s, ObjectClass.PUBLIC_KEY, TRANSPORT_LABEL)
        if public is not None:
            public.destroy()


# -- backup tokens (lantau backup init, verify) ---------------------------------


def draw_random(module: str, token_label: str, so_pin: str, length: int) -> bytes:
    """Bytes from the token's own random generator (a backup set's master secret)."""
    with _so_session(module, token_label, so_pin) as s:
        return bytes(s.generate_random(length * 8))


def set_credentials(
    module: str, token_label: str, initial_so_pin: str, so_pin: str, user_pin: str
) -> None:
    """Give a freshly initialised token its user PIN and a new SO PIN, through PKCS#11
    (C_InitPIN, C_SetPIN as the SO): neither ever appears on a command line."""
    with _so_session(module, token_label, initial_so_pin) as s:
        s.init_pin(user_pin)
        s.set_pin(initial_so_pin, so_pin)


def empty_token(module: str, token_label: str, user_pin: str, so_pin: str) -> int:
    """Destroy every object of a scratch token (keys with the user PIN, then the domain
    key with the SO PIN); returns how many objects were destroyed."""
    token = _token(module, token_label)
    destroyed = 0
    for pin in ({"user_pin": user_pin}, {"so_pin": so_pin}):
        try:
            session = token.open(rw=True, **pin)
        except pkcs11.PinIncorrect:
            raise CeremonyError(f"token {token_label!r} refused the PIN") from None
        with session:
            for obj in list(session.get_objects()):
                obj.destroy()
                destroyed += 1
    return destroyed


def _token(module: str, token_label: str) -> Any:
    try:
        return pkcs11.lib(module).get_token(token_label=token_label)
    except pkcs11.NoSuchToken:
        raise CeremonyError(f"no token labelled {token_label!r}") from None


# -- the domain sealing key ----------------------------------------------------------


# The sealing key arrives with the same rights it was made with, unchangeable (the KEK's
# own unwrap template insists on that; SoftHSM takes CKA_MODIFIABLE only as the last
# attribute); find_sealing_key checks the rest (no WRAP, no UNWRAP) at every use.
# RFC 5649 key wrap of a 32-byte key: the key plus one 8-byte block.
_WRAPPED_AES256_LEN = 40
_SEALING_UNWRAP_TEMPLATE = DOMAIN_SEALING_TEMPLATE


def _user_session(module: str, token_label: str, pin: str) -> Any:
    try:
        token = pkcs11.lib(module).get_token(token_label=token_label)
        return token.open(rw=True, user_pin=pin)
    except pkcs11.NoSuchToken:
        raise CeremonyError(f"no token labelled {token_label!r}") from None
    except pkcs11.PinIncorrect:
        raise CeremonyError(f"token {token_label!r} refused the user PIN") from None


def has_sealing_key(module: str, token_label: str, pin: str, kek_label: str) -> bool:
    with _user_session(module, token_label, pin) as s:
        return _find(s, ObjectClass.SECRET_KEY, sealing_label(kek_label)) is not None


def init_sealing_key(module: str, token_label: str, pin: str, kek_label: str) -> bool:
    """Create the domain sealing key on the domain's first HSM; False if it has one."""
    label = sealing_label(kek_label)
    with _user_session(module, token_label, pin) as s:
        if _find(s, ObjectClass.SECRET_KEY, label) is not None:
            return False
        if _find(s, ObjectClass.SECRET_KEY, kek_label) is None:
            raise CeremonyError(f"token {token_label!r} has no domain key {kek_label!r} yet")
        s.generate_key(
            KeyType.AES,
            256,
            label=label,
            id=label.encode(),
            store=True,
            template=DOMAIN_SEALING_TEMPLATE,
        )
        find_sealing_key(s, label)  # refuses a key with other rights than the template's
        return True


def export_sealing_key(module: str, token_label: str, pin: str, kek_label: str) -> bytes:
    """On a member: the sealing key wrapped under the domain KEK (AES key wrap, padded)."""
    label = sealing_label(kek_label)
    with _user_session(module, token_label, pin) as s:
        kek = _find(s, ObjectClass.SECRET_KEY, kek_label)
        if kek is None:
            raise CeremonyError(f"token {token_label!r} is not a member of domain {kek_label!r}")
        sealing = _find(s, ObjectClass.SECRET_KEY, label)
        if sealing is None:
            raise CeremonyError(
                f"token {token_label!r} has no sealing key {label!r}: run domain-init on it"
            )
        return bytes(kek.wrap_key(sealing, mechanism=Mechanism.AES_KEY_WRAP_PAD))


def import_sealing_key(
    module: str, token_label: str, pin: str, kek_label: str, wrapped: bytes
) -> None:
    """On the new HSM, after its KEK arrived: unwrap the sealing key with the domain's rights."""
    label = sealing_label(kek_label)
    with _user_session(module, token_label, pin) as s:
        if _find(s, ObjectClass.SECRET_KEY, label) is not None:
            raise CeremonyError(f"token {token_label!r} already holds a sealing key {label!r}")
        kek = _find(s, ObjectClass.SECRET_KEY, kek_label)
        if kek is None:
            raise CeremonyError(f"token {token_label!r} has no domain key {kek_label!r}: admit it")
        if len(wrapped) != _WRAPPED_AES256_LEN:
            raise CeremonyError(
                f"the wrapped sealing key is {len(wrapped)} bytes, not an AES-256 key "
                f"({_WRAPPED_AES256_LEN})"
            )
        try:
            kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                label=label,
                id=label.encode(),
                store=True,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                template=_SEALING_UNWRAP_TEMPLATE,
            )
        except pkcs11.PKCS11Error as e:
            raise CeremonyError(
                f"token {token_label!r} could not unwrap the sealing key: {type(e).__name__}"
            ) from None
        imported = _find(s, ObjectClass.SECRET_KEY, label)
        if imported is None:
            raise CeremonyError(f"token {token_label!r} did not keep the sealing key")
        mismatched = [a.name for a, want in _SEALING_UNWRAP_TEMPLATE.items() if imported[a] != want]
        if mismatched:
            imported.destroy()
            raise CeremonyError(f"the imported sealing key differs in {', '.join(mismatched)}")
