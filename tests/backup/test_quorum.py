"""M-of-N sharing: any quorum rebuilds, anything else is a typed refusal that leaks nothing."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
import shamir_mnemonic as slip39
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.backup import (
    BackupSecrets,
    Custodian,
    DecryptedShare,
    ShareEnvelope,
    combine,
    create_backup_set,
    open_share,
    reshare,
)
from libs.backup.custodian import seal
from libs.backup.envelope import Payload
from proto.errors import ErrorCode, LantauError
from tests.backup.helpers import (
    KEYS,
    NAMES,
    SET,
    custodians,
    open_all,
    private_key_of,
    refused,
    secret_texts,
)
from tests.backup.recipe import recipe

FAST = settings(max_examples=60, deadline=None)


class Sharing(msgspec.Struct):
    master: bytes
    envelopes: list[ShareEnvelope]
    created: BackupSecrets
    opened: list[DecryptedShare]

    def secrets(self) -> list[str]:
        return secret_texts(
            mnemonics=[s.mnemonic for s in self.opened],
            values=[
                self.master,
                self.created.kek,
                self.created.pin,
                self.created.so_pin,
                bytes(self.created.signing_key()),
            ],
        )


def make_sharing(n: int, m: int, master: bytes, backup_set: str = SET) -> Sharing:
    envelopes, created = create_backup_set(
        backup_set, custodians(range(n)), m, rng=lambda k: master[:k]
    )
    return Sharing(master, envelopes, created, open_all(envelopes))


@pytest.fixture
def three_of_five() -> Sharing:
    return make_sharing(5, 3, bytes(range(100, 132)))


# -- quorum ------------------------------------------------------------------


@FAST
@given(data=st.data())
def test_any_quorum_rebuilds_and_one_less_refuses(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 10), label="N")
    m = data.draw(st.integers(1, n), label="M")
    master = data.draw(st.binary(min_size=32, max_size=32), label="master")
    sharing = make_sharing(n, m, master)
    order = data.draw(st.permutations(range(n)), label="order")
    k = data.draw(st.integers(m, n), label="shares given")
    chosen = [sharing.opened[i] for i in order[:k]]

    with combine(chosen, SET, current_fingerprint=sharing.envelopes[0].set_fingerprint) as got:
        assert got.pin == sharing.created.pin
        assert got.kek == sharing.created.kek
        # The recovery recipe of docs/backup-quorum.md: standard libraries, no Lantau code.
        recovered = recipe()["credentials"]([s.mnemonic for s in chosen[:m]], SET)
        assert (recovered["pin"], recovered["so_pin"], recovered["kek"]) == (
            got.pin,
            got.so_pin,
            got.kek,
        )
        assert recovered["signing_seed"] == bytes(got.signing_key())
        assert got.set_fingerprint == sharing.envelopes[0].set_fingerprint
    assert got.wiped

    # The mnemonics are plain SLIP-39: the reference library alone gets the master back.
    assert slip39.combine_mnemonics([s.mnemonic for s in chosen[:m]]) == master

    fewer = [sharing.opened[i] for i in order[: m - 1]]
    e = refused(ErrorCode.QUORUM_NOT_MET, sharing.secrets(), combine, fewer, SET)
    for s in fewer:
        assert s.label in e.message


@FAST
@given(data=st.data())
def test_reshare_keeps_the_secret_and_retires_the_old_shares(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 10), label="N")
    m = data.draw(st.integers(1, n), label="M")
    master = data.draw(st.binary(min_size=32, max_size=32), label="master")
    old = make_sharing(n, m, master)
    presenters = data.draw(st.permutations(old.opened), label="presenters")[:m]
    # The new list may keep some custodians, drop others, add people never in the set.
    new_people = data.draw(
        st.lists(st.integers(0, 15), min_size=1, max_size=10, unique=True), label="new"
    )
    m2 = data.draw(st.integers(1, len(new_people)), label="M'")
    new_envelopes = reshare(
        presenters,
        custodians(new_people),
        m2,
        backup_set=SET,
        current_fingerprint=old.envelopes[0].set_fingerprint,
    )
    new_fp = new_envelopes[0].set_fingerprint
    assert new_fp != old.envelopes[0].set_fingerprint
    new_opened = open_all(new_envelopes)
    assert _identifier(new_opened[0]) != _identifier(old.opened[0])
    assert [e.custodian for e in new_envelopes] == [NAMES[i] for i in new_people]
    chosen = data.draw(st.permutations(new_opened), label="new quorum")[:m2]

    with combine(chosen, SET, current_fingerprint=new_fp) as got:
        assert (got.pin, got.kek) == (old.created.pin, old.created.kek)

    secrets = old.secrets() + secret_texts(mnemonics=[s.mnemonic for s in new_opened])
    stale = data.draw(st.sampled_from(old.opened), label="old share")
    mixed = [stale, *chosen[: max(m2 - 1, 1)]]
    e = refused(ErrorCode.WRONG_BACKUP_SET, secrets, combine, mixed, SET)
    assert stale.label in e.message
    # Given the set's current fingerprint, old shares are refused even all together.
    refused(
        ErrorCode.WRONG_BACKUP_SET,
        secrets,
        combine,
        old.opened[:m],
        SET,
        current_fingerprint=new_fp,
    )


def _identifier(share: DecryptedShare) -> int:
    return int(slip39.Share.from_mnemonic(share.mnemonic).identifier)


def test_reshare_never_reuses_the_old_identifier(
    three_of_five: Sharing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """15 random bits can repeat: the reshare draws again rather than reuse the old one."""
    old = _identifier(three_of_five.opened[0])
    drawn = iter([old, old, (old + 1) % 2**15])
    monkeypatch.setattr(slip39.shamir, "_random_identifier", lambda: next(drawn))
    new = open_all(reshare(three_of_five.opened[:3], custodians(range(5)), 3, backup_set=SET))
    assert _identifier(new[0]) == (old + 1) % 2**15
    with combine(new[2:], SET) as got:
        assert got.kek == three_of_five.created.kek


def test_old_shares_alone_still_work_without_the_current_fingerprint(
    three_of_five: Sharing,
) -> None:
    """The limit docs/backup-quorum.md states: destroying old shares is what retires them."""
    new = reshare(three_of_five.opened[:3], custodians([1, 2, 3, 4]), 3, backup_set=SET)
    assert new[0].set_fingerprint != three_of_five.envelopes[0].set_fingerprint
    with combine(three_of_five.opened[2:5], SET) as got:
        assert got.kek == three_of_five.created.kek


def test_derived_credentials_are_separate_and_shaped_for_a_token(three_of_five: Sharing) -> None:
    secrets = three_of_five.created
    assert len(secrets.pin) == 32 and set(secrets.pin) <= set("0123456789abcdef")
    assert len(secrets.kek) == 32
    assert bytes.fromhex(secrets.pin) != secrets.kek[:16]
    other = make_sharing(5, 3, three_of_five.master, backup_set="hk-offline-2").created
    assert other.pin != secrets.pin and other.kek != secrets.kek
    # The SO PIN and the signing key are derived apart from the rest, and per set.
    assert len(secrets.so_pin) == 32 and secrets.so_pin != secrets.pin
    seed = bytes(secrets.signing_key())
    assert len(seed) == 32 and seed not in (secrets.kek, bytes.fromhex(secrets.pin) * 2)
    assert other.so_pin != secrets.so_pin
    assert other.signing_public_key != secrets.signing_public_key


def test_create_draws_the_master_secret_from_the_given_rng() -> None:
    asked: list[int] = []

    def token_rng(n: int) -> bytes:
        asked.append(n)
        return bytes([7]) * n

    envelopes, _ = create_backup_set(SET, custodians(range(3)), 2, rng=token_rng)
    assert asked == [32]
    mnemonics = [s.mnemonic for s in open_all(envelopes)[:2]]
    assert slip39.combine_mnemonics(mnemonics) == bytes([7]) * 32


# -- opening a share ---------------------------------------------------------


def test_opening_with_another_custodians_key(three_of_five: Sharing) -> None:
    e = refused(
        ErrorCode.WRONG_CUSTODIAN_KEY,
        three_of_five.secrets(),
        open_share,
        three_of_five.envelopes[0],
        KEYS[1][1],
    )
    assert "share #1 (custodian-0)" in e.message


def test_envelope_redirected_to_another_custodians_key(three_of_five: Sharing) -> None:
    """Swapping in Bob's public key lets Bob's key pass the check, not decrypt."""
    env = msgspec.structs.replace(three_of_five.envelopes[0], custodian_key=KEYS[1][0])
    refused(ErrorCode.BAD_SHARE, three_of_five.secrets(), open_share, env, KEYS[1][1])
    refused(ErrorCode.WRONG_CUSTODIAN_KEY, three_of_five.secrets(), open_share, env, KEYS[0][1])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backup_set", "hk-offline-2"),
        ("set_fingerprint", "0" * 32),
        ("custodian", "mallory"),
        ("index", 2),
        ("threshold", 2),
        ("count", 6),
    ],
)
def test_edited_header_is_caught_on_opening(
    three_of_five: Sharing, field: str, value: object
) -> None:
    env = msgspec.structs.replace(three_of_five.envelopes[0], **{field: value})
    e = refused(ErrorCode.BAD_SHARE, three_of_five.secrets(), open_share, env, KEYS[0][1])
    assert field in e.message and "edited" in e.message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: bytes([c[0] ^ 1]) + c[1:],  # the ephemeral public key
        lambda c: c[:40] + bytes([c[40] ^ 0x80]) + c[41:],  # the MAC
        lambda c: c[:-1] + bytes([c[-1] ^ 1]),  # the body
        lambda c: c[:-1],
        lambda c: c + b"\x00",
        lambda c: c[:47],
        lambda c: b"",
    ],
)
def test_altered_ciphertext_is_a_bad_share(
    three_of_five: Sharing, mutate: Callable[[bytes], bytes]
) -> None:
    env = three_of_five.envelopes[2]
    bad = msgspec.structs.replace(env, ciphertext=mutate(env.ciphertext))
    e = refused(ErrorCode.BAD_SHARE, three_of_five.secrets(), open_share, bad, KEYS[2][1])
    assert "share #3 (custodian-2)" in e.message


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_a_bad_share(position: int, bit: int) -> None:
    env = _ENVELOPES[0]
    ct = bytearray(env.ciphertext)
    ct[position % len(ct)] ^= 1 << bit
    bad = msgspec.structs.replace(env, ciphertext=bytes(ct))
    refused(ErrorCode.BAD_SHARE, (), open_share, bad, KEYS[0][1])


_ENVELOPES, _ = create_backup_set(SET, custodians(range(3)), 2)


def _sealed(envelope: ShareEnvelope, mnemonic: str, **changes: object) -> ShareEnvelope:
    """An envelope sealed by someone with only the custodian's public key: a forgery."""
    header = {f: getattr(envelope, f) for f in envelope.__struct_fields__ if f != "ciphertext"}
    header |= changes
    payload = Payload(**header, nonce=b"\x00" * 16, mnemonic=mnemonic, tag=b"\x00" * 16)
    ct = seal(envelope.custodian_key, msgspec.msgpack.encode(payload), envelope.custodian)
    return msgspec.structs.replace(envelope, ciphertext=ct, **changes)


def _corruptions(mnemonic: str, other_index_mnemonic: str) -> list[str]:
    words = mnemonic.split()
    swapped = [*words[:6], "academic" if words[6] != "academic" else "acid", *words[7:]]
    return [
        " ".join(swapped),  # one word changed: the RS1024 checksum fails
        " ".join(words[:-1]),  # a word lost
        " ".join([*words[:6], "xylophonez", *words[7:]]),  # not in the word list
        "",
        " ".join(reversed(words)),
        other_index_mnemonic,  # a valid share, but not the one the header names
    ]


@pytest.mark.parametrize("case", range(6))
def test_corrupted_mnemonic_is_a_bad_share(three_of_five: Sharing, case: int) -> None:
    env = three_of_five.envelopes[0]
    mnemonic = three_of_five.opened[0].mnemonic
    corrupt = _corruptions(mnemonic, three_of_five.opened[1].mnemonic)[case]
    e = refused(
        ErrorCode.BAD_SHARE,
        three_of_five.secrets() + secret_texts(mnemonics=[corrupt]),
        open_share,
        _sealed(env, corrupt),
        KEYS[0][1],
    )
    assert "share #1 (custodian-0)" in e.message
    # shamir-mnemonic quotes the first words of a bad mnemonic: not even chained here.
    assert e.__context__ is None and e.__cause__ is None


def test_corrupted_mnemonic_in_an_opened_share_is_refused_by_combine(
    three_of_five: Sharing,
) -> None:
    good = three_of_five.opened
    corrupt = _corruptions(good[1].mnemonic, good[0].mnemonic)[0]
    bad = _with(good[1], mnemonic=corrupt)
    secrets = three_of_five.secrets() + secret_texts(mnemonics=[corrupt])
    e = refused(ErrorCode.BAD_SHARE, secrets, combine, [good[0], bad, good[2]], SET)
    assert "share #2 (custodian-1)" in e.message
    assert e.__context__ is None


def test_sealed_garbage_is_a_bad_share(three_of_five: Sharing) -> None:
    env = three_of_five.envelopes[0]
    for plaintext in (b"", b"\xc1", msgspec.msgpack.encode({"v": 1}), b"x" * 300):
        forged = msgspec.structs.replace(env, ciphertext=seal(env.custodian_key, plaintext, "x"))
        refused(ErrorCode.BAD_SHARE, (), open_share, forged, KEYS[0][1])


def test_malformed_envelopes_built_in_code(three_of_five: Sharing) -> None:
    env = three_of_five.envelopes[0]
    refused(
        ErrorCode.UNSUPPORTED_VERSION, (), open_share, msgspec.structs.replace(env, v=2), KEYS[0][1]
    )
    for changes in ({"index": 0}, {"index": 17}, {"custodian": "a b"}, {"backup_set": ""}):
        bad = msgspec.structs.replace(env, **changes)
        refused(ErrorCode.BAD_SHARE, (), open_share, bad, KEYS[0][1])
    refused(ErrorCode.BAD_SHARE, (), open_share, msgspec.structs.replace(env, index=6), KEYS[0][1])
    refused(ErrorCode.INVALID_FIELD, (), open_share, env, b"short")


# -- combining: forged, foreign, duplicate -----------------------------------


def _with(share: DecryptedShare, **changes: object) -> DecryptedShare:
    fields = {
        f: getattr(share, f)
        for f in (
            "backup_set",
            "set_fingerprint",
            "custodian",
            "custodian_key",
            "index",
            "threshold",
            "count",
            "nonce",
            "mnemonic",
            "tag",
        )
    }
    return DecryptedShare(**(fields | changes))


def _forge(target: Sharing, index: int, same_identifier: bool) -> DecryptedShare:
    """Share #index of target's header around a mnemonic the forger made.

    Sealed boxes are anonymous: anyone with the custodian's public key can seal a share.
    The header and nonce are visible to any custodian; so is the SLIP-39 identifier (the
    first words of their own mnemonic), which a careful forger copies.
    """
    genuine = target.envelopes[index - 1]
    if same_identifier:
        real = slip39.Share.from_mnemonic(target.opened[0].mnemonic)
        mnemonic = slip39.Share(
            real.identifier,
            real.extendable,
            real.iteration_exponent,
            index - 1,
            genuine.threshold,
            genuine.count,
            0,
            1,
            bytes(range(32)),
        ).mnemonic()
    else:
        impostor = make_sharing(genuine.count, genuine.threshold, bytes(32))
        mnemonic = impostor.opened[index - 1].mnemonic
    header = {f: getattr(genuine, f) for f in genuine.__struct_fields__ if f != "ciphertext"}
    payload = Payload(**header, nonce=target.opened[0].nonce, mnemonic=mnemonic, tag=bytes(16))
    forged = msgspec.structs.replace(
        genuine,
        ciphertext=seal(genuine.custodian_key, msgspec.msgpack.encode(payload), "x"),
    )
    return open_share(forged, private_key_of(genuine.custodian))


@pytest.mark.parametrize("same_identifier", [False, True])
def test_forged_share_in_the_quorum(three_of_five: Sharing, same_identifier: bool) -> None:
    forged = _forge(three_of_five, 1, same_identifier)
    e = refused(
        ErrorCode.BAD_SHARE,
        three_of_five.secrets(),
        combine,
        [forged, *three_of_five.opened[1:3]],
        SET,
    )
    assert "share #1 (custodian-0)" in e.message


@pytest.mark.parametrize("same_identifier", [False, True])
def test_forged_extra_share_is_named(three_of_five: Sharing, same_identifier: bool) -> None:
    forged = _forge(three_of_five, 4, same_identifier)
    e = refused(
        ErrorCode.BAD_SHARE,
        three_of_five.secrets(),
        combine,
        [*three_of_five.opened[:3], forged],
        SET,
    )
    assert "share #4 (custodian-3)" in e.message
    assert "share #1" not in e.message


@pytest.mark.parametrize("same_identifier", [False, True])
def test_forged_share_of_a_one_of_n_set(same_identifier: bool) -> None:
    """1-of-N has no SLIP-39 digest to catch a forgery: the set fingerprint does."""
    sharing = make_sharing(3, 1, bytes(range(32)))
    forged = _forge(sharing, 2, same_identifier)
    e = refused(ErrorCode.BAD_SHARE, sharing.secrets(), combine, [forged], SET)
    assert "fingerprint" in e.message


def test_relabelled_old_share_mixed_with_new_ones(three_of_five: Sharing) -> None:
    """An insider copies a new share's header onto their pre-reshare share."""
    new = open_all(reshare(three_of_five.opened[:3], custodians(range(5)), 3, backup_set=SET))
    relabelled = _with(
        three_of_five.opened[0],
        **{f: getattr(new[0], f) for f in ("set_fingerprint", "nonce", "tag")},
    )
    secrets = three_of_five.secrets() + secret_texts(mnemonics=[s.mnemonic for s in new])
    refused(ErrorCode.BAD_SHARE, secrets, combine, [relabelled, new[1], new[2]], SET)


def test_shares_of_another_backup_set(three_of_five: Sharing) -> None:
    other = make_sharing(5, 3, bytes(32), backup_set="hk-offline-2")
    secrets = three_of_five.secrets() + other.secrets()
    e = refused(ErrorCode.WRONG_BACKUP_SET, secrets, combine, other.opened[:3], SET)
    assert "hk-offline-2" in e.message
    mixed = [*three_of_five.opened[:2], other.opened[2]]
    e = refused(ErrorCode.WRONG_BACKUP_SET, secrets, combine, mixed, SET)
    assert "share #3 (custodian-2)" in e.message and "share #1" not in e.message


def test_shares_of_another_sharing_under_the_same_set_id(three_of_five: Sharing) -> None:
    again = make_sharing(5, 3, bytes(32))
    mixed = [*three_of_five.opened[:2], again.opened[2]]
    refused(
        ErrorCode.WRONG_BACKUP_SET, three_of_five.secrets() + again.secrets(), combine, mixed, SET
    )


def test_duplicate_shares(three_of_five: Sharing) -> None:
    a, b, c = three_of_five.opened[:3]
    secrets = three_of_five.secrets()
    e = refused(ErrorCode.DUPLICATE_SHARE, secrets, combine, [a, a, b], SET)
    assert "share #1 (custodian-0)" in e.message
    # The same share opened twice is two objects, one share.
    again = open_share(three_of_five.envelopes[1], KEYS[1][1])
    refused(ErrorCode.DUPLICATE_SHARE, secrets, combine, [a, b, again], SET)
    # Twice the same share is no quorum of two either: the refusal says why.
    refused(ErrorCode.DUPLICATE_SHARE, secrets, combine, [c, c], SET)
    # One person presenting two shares counts once.
    refused(
        ErrorCode.DUPLICATE_SHARE, secrets, combine, [a, b, _with(c, custodian=a.custodian)], SET
    )
    refused(ErrorCode.DUPLICATE_SHARE, secrets, combine, [a, b, _with(c, index=1)], SET)


def test_no_shares() -> None:
    refused(ErrorCode.QUORUM_NOT_MET, (), combine, [], SET)


def test_wiped_share_is_refused(three_of_five: Sharing) -> None:
    a, b, c = three_of_five.opened[:3]
    with open_share(three_of_five.envelopes[2], KEYS[2][1]) as c2:
        pass
    assert c2.wiped
    refused(ErrorCode.INVALID_FIELD, (), combine, [a, b, c2], SET)
    with combine([a, b, c], SET):
        pass


# -- creation refusals -------------------------------------------------------


@pytest.mark.parametrize(
    ("people", "threshold"),
    [
        (custodians(range(3)), 0),
        (custodians(range(3)), 4),
        (custodians(range(3)), True),
        ([], 1),
        (custodians(range(3)) + custodians(range(14)), 2),  # 17
        (custodians([0, 1]) + custodians([1]), 2),  # a name twice
        ([*custodians([0, 1]), Custodian(name="twin", public_key=KEYS[0][0])], 2),
        ([Custodian(name="x", public_key="AB" * 32)], 1),  # not lowercase
        ([Custodian(name="x", public_key="ab" * 31)], 1),
        ([Custodian(name="two words", public_key=KEYS[0][0])], 1),
        ([Custodian(name="zero", public_key="00" * 32)], 1),  # a low-order point
    ],
)
def test_bad_sharing_parameters(people: list[Custodian], threshold: int) -> None:
    refused(ErrorCode.INVALID_FIELD, (), create_backup_set, SET, people, threshold)


@pytest.mark.parametrize("backup_set", ["", "a/b", "x" * 65, "hk offline"])
def test_bad_backup_set_id(backup_set: str) -> None:
    refused(ErrorCode.INVALID_FIELD, (), create_backup_set, backup_set, custodians([0]), 1)


def test_rng_giving_the_wrong_size() -> None:
    refused(ErrorCode.INTERNAL, (), create_backup_set, SET, custodians([0]), 1, rng=lambda n: b"x")


# -- nothing secret shows ----------------------------------------------------


def test_reprs_hold_no_secrets(three_of_five: Sharing) -> None:
    secrets = three_of_five.secrets()
    shown = [repr(three_of_five.created), str(three_of_five.created)]
    shown += [repr(s) + str(s) for s in three_of_five.opened]
    for text in shown:
        for s in secrets:
            assert s not in text
    assert "custodian-0" in repr(three_of_five.opened[0])
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(three_of_five.created)


def test_wipe_zeroes_and_refuses_later_reads(three_of_five: Sharing) -> None:
    with combine(three_of_five.opened[:3], SET) as secrets:
        buffers = [secrets._kek, secrets._pin, secrets._so_pin, secrets._signing_seed]
        assert all(any(b) for b in buffers)
    assert secrets.wiped and not any(buffers)
    for name in ("pin", "so_pin", "kek", "signing_public_key"):
        refused(ErrorCode.INTERNAL, (), getattr, secrets, name)
    refused(ErrorCode.INTERNAL, (), secrets.signing_key)
    share = three_of_five.opened[4]
    share.wipe()
    refused(ErrorCode.INTERNAL, (), getattr, share, "mnemonic")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400))
def test_any_mnemonic_text_gives_only_typed_refusals(text: str) -> None:
    """Whatever an opened share holds, combine answers with a LantauError."""
    a, b = _OPENED[:2]
    with pytest.raises(LantauError) as info:
        combine([a, _with(b, mnemonic=text)], SET)
    assert info.value.code == ErrorCode.BAD_SHARE


_OPENED = open_all(_ENVELOPES)
