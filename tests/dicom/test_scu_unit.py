"""PACS link input checks and C-FIND response parsing, fuzzed (no network)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from appliance.dicom.scu import check_accession, check_uid, get_storage_contexts, study_match

pytestmark = pytest.mark.unit

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@given(st.text(max_size=80))
def test_only_plain_uids_pass(value: str) -> None:
    try:
        assert check_uid(value, "uid") == value
    except ValueError:
        return
    assert _UID.fullmatch(value) and len(value) <= 64  # never a wildcard or a list


@given(st.text(max_size=20))
def test_accepted_accession_numbers_match_exactly(value: str) -> None:
    try:
        check_accession(value)
    except ValueError:
        return
    assert not set(value) & set("*?\\") and 1 <= len(value) <= 16


_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=24)


@settings(max_examples=200)
@given(uid=_values, acc=_values, mods=_values, nseries=_values, ninst=_values, pid=_values)
def test_study_responses_parse_whatever_the_pacs_sends(uid: str, acc: str, mods: str,
                                                       nseries: str, ninst: str,
                                                       pid: str) -> None:
    """Round-trip through the wire encoding, as a C-FIND response arrives, then parse."""
    # Written as LO so any text goes on the wire; read back, each gets its dictionary VR
    # (UI, SH, CS, IS) and is converted on access, exactly as a PACS response is.
    d = Dataset()
    d.QueryRetrieveLevel = "STUDY"
    for keyword, value in (("StudyInstanceUID", uid), ("AccessionNumber", acc),
                           ("ModalitiesInStudy", mods), ("NumberOfStudyRelatedSeries", nseries),
                           ("NumberOfStudyRelatedInstances", ninst), ("PatientID", pid)):
        d.add_new(keyword, "LO", value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    try:
        write_dataset(fp, d)
    except (ValueError, OverflowError):
        return  # pydicom refuses to encode it: it cannot come off the wire either
    wire = read_dataset(DicomBytesIO(fp.getvalue()), is_implicit_VR=True, is_little_endian=True)
    m = study_match(wire)
    assert isinstance(m.study_uid, str) and isinstance(m.accession_number, str)
    assert all(isinstance(x, str) and x for x in m.modalities)
    assert m.num_series is None or isinstance(m.num_series, int)
    assert m.num_instances is None or isinstance(m.num_instances, int)
    assert "patient_id" not in repr(m)  # patient facts stay out of any log line


def test_c_get_contexts_fit_the_128_limit() -> None:
    one = get_storage_contexts(["1.2.840.10008.5.1.4.1.1.2"], 127)
    assert len(one) == 16 and {c.transfer_syntax[0] for c in one} >= {"1.2.840.10008.1.2.4.80"}
    many = get_storage_contexts([f"1.2.3.{i}" for i in range(20)], 127)
    assert len(many) == 20 and all(len(c.transfer_syntax) == 16 for c in many)
    assert len(get_storage_contexts([], 127)) == 127
