"""Fuzz: whatever the bytes, ``verify`` answers a list or WhitelistRefused, and quickly."""

from __future__ import annotations

import copy
import os
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from appliance.trust import WhitelistRefused, verify

from .conftest import domains

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=int(os.environ.get("DRIMBOX_FUZZ_EXAMPLES", "150")), deadline=dt.timedelta(seconds=3),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def good(ans_peer_session) -> bytes:
    return ans_peer_session.signed(domains(3))


def _check(data: bytes, anchors, good: bytes) -> None:
    try:
        wl = verify(data, anchors, revocation="off")
    except WhitelistRefused as e:
        assert str(e)  # always a reason
        return
    signed = verify(good, anchors, revocation="off")  # accepted: then with the signed content
    assert (wl.generated, wl.domains) == (signed.generated, signed.domains)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(peer_anchor, data):
    with pytest.raises(WhitelistRefused):
        verify(data, peer_anchor, revocation="off")


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["flip", "delete", "insert", "dup"]),
                          st.floats(0, 1), st.integers(1, 64), st.binary(min_size=1,
                                                                         max_size=16)),
                min_size=1, max_size=4))
def test_byte_mutations_of_a_good_list(peer_anchor, good, ops):
    data = bytearray(good)
    for op, where, n, blob in ops:
        i = min(int(where * len(data)), len(data) - 1)
        if op == "flip":
            data[i] ^= blob[0] or 1
        elif op == "delete":
            del data[i:i + n]
        elif op == "insert":
            data[i:i] = blob
        else:
            data[i:i] = data[i:i + n]
        if not data:
            data = bytearray(b"x")
    _check(bytes(data), peer_anchor, good)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["remove", "duplicate", "move", "text"]),
                          st.floats(0, 1), st.floats(0, 1), st.text(max_size=20)),
                min_size=1, max_size=3))
def test_tree_mutations_of_a_good_list(peer_anchor, good, ops):
    """Elements removed, copied or moved anywhere (signature wrapping shapes): refused, or (a
    change in unsigned KeyInfo, say) accepted with exactly the signed content."""
    root = etree.fromstring(good)
    for op, a, b, text in ops:
        els = [e for e in root.iter() if isinstance(e.tag, str)]
        el, other = els[int(a * (len(els) - 1))], els[int(b * (len(els) - 1))]
        if el is root:
            continue
        if op == "remove":
            el.getparent().remove(el)
        elif op == "duplicate":
            el.addnext(copy.deepcopy(el))
        elif op == "move":
            if other is el or any(x is el for x in other.iterancestors()):
                continue
            other.append(el)
        else:
            clean = "".join(c for c in text if c.isprintable() and c not in "\ud800\udfff")
            try:
                el.text = clean
            except ValueError:
                continue
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    try:
        wl = verify(data, peer_anchor, revocation="off")
    except WhitelistRefused as e:
        assert str(e)
        return
    signed = verify(good, peer_anchor, revocation="off")
    assert (wl.generated, wl.domains) == (signed.generated, signed.domains)


@FUZZ
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_flipped_bytes_of_the_ans_file(ans_signed, ans_root, where, mask):
    """One byte of the official ANS file changed anywhere: refused or the very same content."""
    data = bytearray(ans_signed)
    data[where % len(data)] ^= mask
    try:
        wl = verify(bytes(data), [ans_root], revocation="off")
    except WhitelistRefused as e:
        assert str(e)
        return
    signed = verify(ans_signed, [ans_root], revocation="off")
    assert (wl.generated, wl.domains) == (signed.generated, signed.domains)
