"""UIDs of the box's own objects: valid, unique, under 2.25 or the organisation root."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.dicom.uids import UidRootError, check_root, is_valid_uid, new_uid, stable_uid


def test_default_uids_are_2_25_and_unique():
    uids = [new_uid() for _ in range(20_000)]
    assert len(set(uids)) == len(uids)
    assert all(u.startswith("2.25.") and is_valid_uid(u) for u in uids)


def test_organisation_root_uids_fill_64_characters_and_stay_valid():
    uids = [new_uid("1.2.250.1.999.42") for _ in range(5_000)]
    assert len(set(uids)) == len(uids)
    assert all(u.startswith("1.2.250.1.999.42.") and is_valid_uid(u) for u in uids)


@pytest.mark.parametrize("root", ["", "1..2", "1.2.", "1.02", "a.b", "1.2." + "9" * 40])
def test_unusable_roots_are_refused(root):
    with pytest.raises(UidRootError):
        new_uid(root)


def test_longest_root_still_leaves_random_digits():
    root = check_root("1." + "2" * 38)
    assert len(root) == 40
    assert len({new_uid(root) for _ in range(1000)}) == 1000


def test_stable_uid_is_deterministic_per_name():
    assert stable_uid("https://db1.example.org") == stable_uid("https://db1.example.org")
    assert stable_uid("https://db1.example.org") != stable_uid("https://db2.example.org")
    assert is_valid_uid(stable_uid("x"))


@given(st.text(alphabet="0123456789.", max_size=70))
def test_is_valid_uid_matches_ps3_5_rules(text):
    parts = text.split(".")
    expected = (0 < len(text) <= 64
                and all(p and (p == "0" or not p.startswith("0")) for p in parts))
    assert is_valid_uid(text) == expected
