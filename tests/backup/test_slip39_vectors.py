"""The installed shamir-mnemonic against published SLIP-39 test vectors.

Shares issued today must still open in ten years: if an upgrade of the library ever
read the standard differently, this fails before a ceremony does. Vectors from
trezor/python-shamir-mnemonic vectors.json (the SLIP-39 reference set; passphrase
"TREZOR"), a selection covering what libs/backup relies on: single shares, basic
M-of-N, groups of one member (our shape), checksums, digests and identifiers.
"""

from __future__ import annotations

import pytest
import shamir_mnemonic as slip39

PASSPHRASE = b"TREZOR"

VALID = [
    (
        "1. Valid mnemonic without sharing (128 bits)",
        [
            "duckling enlarge academic academic agency result length solution fridge kidney "
            "coal piece deal husband erode duke ajar critical decision keyboard"
        ],
        "bb54aac4b89dc868ba37d9cc21b2cece",
    ),
    (
        "4. Basic sharing 2-of-3 (128 bits)",
        [
            "shadow pistol academic always adequate wildlife fancy gross oasis cylinder "
            "mustang wrist rescue view short owner flip making coding armed",
            "shadow pistol academic acid actress prayer class unknown daughter sweater "
            "depict flip twice unkind craft early superior advocate guest smoking",
        ],
        "b43ceb7e57a0ea8766221624d01b0864",
    ),
    (
        "19. Threshold number of groups and members in each group (128 bits, case 3)",
        [
            "eraser senior beard romp adorn nuclear spill corner cradle style ancient family "
            "general leader ambition exchange unusual garlic promise voice",
            "eraser senior acrobat romp bishop medical gesture pumps secret alive ultimate "
            "quarter priest subject class dictate spew material endless market",
        ],
        "7c3397a292a5941682d7a4ae2d898d11",
    ),
    (
        "20. Valid mnemonic without sharing (256 bits)",
        [
            "theory painting academic academic armed sweater year military elder discuss "
            "acne wildlife boring employer fused large satoshi bundle carbon diagnose anatomy "
            "hamster leaves tracks paces beyond phantom capital marvel lips brave detect luck"
        ],
        "989baf9dcaad5b10ca33dfd8cc75e42477025dce88ae83e75a230086a0e00e92",
    ),
    (
        "23. Basic sharing 2-of-3 (256 bits)",
        [
            "humidity disease academic always aluminum jewelry energy woman receiver strategy "
            "amuse duckling lying evidence network walnut tactics forget hairy rebound impulse "
            "brother survive clothes stadium mailman rival ocean reward venture always armed "
            "unwrap",
            "humidity disease academic agency actress jacket gross physics cylinder solution "
            "fake mortgage benefit public busy prepare sharp friar change work slow purchase "
            "ruler again tricycle involve viral wireless mixture anatomy desert cargo upgrade",
        ],
        "c938b319067687e990e05e0da0ecce1278f75ff58d9853f19dcaeed5de104aae",
    ),
]

INVALID = [
    (
        "2. Mnemonic with invalid checksum (128 bits)",
        [
            "duckling enlarge academic academic agency result length solution fridge kidney "
            "coal piece deal husband erode duke ajar critical decision kidney"
        ],
    ),
    (
        "5. Basic sharing 2-of-3 (128 bits), one share only",
        [
            "shadow pistol academic always adequate wildlife fancy gross oasis cylinder "
            "mustang wrist rescue view short owner flip making coding armed"
        ],
    ),
    (
        "6. Mnemonics with different identifiers (128 bits)",
        [
            "adequate smoking academic acid debut wine petition glen cluster slow rhyme slow "
            "simple epidemic rumor junk tracks treat olympic tolerate",
            "adequate stay academic agency agency formal party ting frequent learn upstairs "
            "remember smear leaf damage anatomy ladle market hush corner",
        ],
    ),
    (
        "13. Mnemonics giving an invalid digest (128 bits)",
        [
            "guilt walnut academic acid deliver remove equip listen vampire tactics nylon "
            "rhythm failure husband fatigue alive blind enemy teaspoon rebound",
            "guilt walnut academic agency brave hamster hobo declare herd taste alpha slim "
            "criminal mild arcade formal romp branch pink ambition",
        ],
    ),
    (
        "14. Insufficient number of groups (128 bits, case 1)",
        [
            "eraser senior beard romp adorn nuclear spill corner cradle style ancient family "
            "general leader ambition exchange unusual garlic promise voice"
        ],
    ),
    (
        "21. Mnemonic with invalid checksum (256 bits)",
        [
            "theory painting academic academic armed sweater year military elder discuss "
            "acne wildlife boring employer fused large satoshi bundle carbon diagnose anatomy "
            "hamster leaves tracks paces beyond phantom capital marvel lips brave detect lunar"
        ],
    ),
]


@pytest.mark.parametrize(("name", "mnemonics", "master"), VALID, ids=[v[0] for v in VALID])
def test_valid_vectors(name: str, mnemonics: list[str], master: str) -> None:
    assert slip39.combine_mnemonics(mnemonics, PASSPHRASE).hex() == master


@pytest.mark.parametrize(("name", "mnemonics"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_vectors(name: str, mnemonics: list[str]) -> None:
    with pytest.raises(slip39.MnemonicError):
        slip39.combine_mnemonics(mnemonics, PASSPHRASE)
