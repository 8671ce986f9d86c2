"""The listing's own small parsers (DTM times, study-date filters, author XON) never raise on what
the DMP or a contextual call sends, other than the documented ValueError."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.consumer.exams import _date_range, _dtm, _institution
from appliance.dmp.transactions import DocumentEntry

pytestmark = pytest.mark.unit


def test_dtm_precisions():
    assert _dtm("20240102030405") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _dtm("20240102") == datetime(2024, 1, 2, tzinfo=UTC)
    assert _dtm("2024") == datetime(2024, 1, 1, tzinfo=UTC)
    assert _dtm("") is None and _dtm("20241302") is None and _dtm("2024010") is None


def test_study_date_forms():
    assert _date_range("20240102") == (date(2024, 1, 2), date(2024, 1, 2))
    assert _date_range("20240102-20240131") == (date(2024, 1, 2), date(2024, 1, 31))
    assert _date_range(date(2024, 1, 2)) == (date(2024, 1, 2), date(2024, 1, 2))
    assert _date_range(None) is None
    for bad in ("2024-01-02", "20240132", "20240131-20240101", "", "20240102-"):
        with pytest.raises(ValueError):
            _date_range(bad)


def entry(*xon: str) -> DocumentEntry:
    return DocumentEntry("urn:uuid:x", "1.2", "", "application/dicom", "", author_institutions=xon)


def test_institution_from_xon():
    i = _institution(entry("CABINET^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^499700367909006"))
    assert i is not None and (i.name, i.id) == ("CABINET", "499700367909006")
    assert _institution(entry()) is None and _institution(entry("^^^")) is None
    assert _institution(entry("ONLY A NAME")).id == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_dtm(text):
    t = _dtm(text)
    assert t is None or t.tzinfo is UTC


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.from_regex(r"\d{8}(-\d{8})?", fullmatch=True)))
def test_fuzz_study_date(text):
    try:
        lo, hi = _date_range(text)
    except ValueError:
        return
    assert lo <= hi


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("AB^&1.é "), max_size=30), max_size=3))
def test_fuzz_institution(values):
    i = _institution(entry(*values))
    assert i is None or i.name
