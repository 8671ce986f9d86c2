"""Hypothesis fuzzing of the QIDO query parser/matcher and the Accept parser."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance import config
from appliance.dicomweb import qido
from appliance.dicomweb.accept import (
    BadHeader,
    NotAcceptable,
    accepts_gzip,
    choose_instance,
    parse_accept,
)
from appliance.generate import synthetic_study
from appliance.store import Store

from .conftest import loopback_guard

# Patient IDs and names chosen to trip naive wildcard translation (GLOB/LIKE metacharacters).
PATIENTS = [("PAT-A-1001", "DUPONT^JEANNE"), ("pat[1]", "dupond^jean"), ("A*B", "ÉLODIE^ÉLO"),
            ("x?y_%", "O'NEIL^SEAN"), ("AB", "MARTIN^PAUL")]
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("varied")
    s = Store(config.parse(config.example(str(root / "data"))), synchronous="OFF")
    s.open()
    for n, (pid, name) in enumerate(PATIENTS):
        for f in synthetic_study("MR", 1, out_dir=root / f"s{n}", patient_id=pid,
                                 patient_name=name, accession=f"ACC{n}"):
            s.ingest_bytes(f.read_bytes())
    yield s
    s.close()


def reference_match(pattern: str, value: str, case_insensitive: bool) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching, written independently with Python's re."""
    if pattern == "" or pattern.strip("*") == "":
        return True
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE | re.DOTALL if case_insensitive else re.DOTALL
    return re.fullmatch(rx, value, flags) is not None


def patients_found(store: Store, key: str, value: str) -> set[str]:
    q = qido.parse("study", [(key, value)])
    res = qido.search(store.db, q, "http://x/dicom-web")
    return {i["00100020"]["Value"][0] for i in res.items}


pattern_text = st.one_of(
    st.text(alphabet="PAT-AB1x?y*[]%_^'ÉéLOpat10", max_size=12),
    # Pieces of the stored values glued with wildcards hit real matches far more often.
    st.lists(st.sampled_from(["*", "?", "[", "]", "[1]", "pat", "PAT", "-A-", "1001", "A", "B",
                              "x", "y_%", "%", "_", "é", "É", "dup", "DUPON", "^", "'"]),
             max_size=6).map("".join),
)


@FUZZ
@given(pattern=pattern_text)
@example(pattern="pat[1]")
@example(pattern="*[*")
@example(pattern="x?y_%")
def test_patient_id_wildcards_match_like_the_standard(varied: Store, pattern: str) -> None:
    if "\\" in pattern or "," in pattern:
        return
    expected = {pid for pid, _ in PATIENTS if reference_match(pattern, pid, False)}
    assert patients_found(varied, "PatientID", pattern) == expected


@FUZZ
@given(pattern=pattern_text)
@example(pattern="élodie*")
@example(pattern="o'neil^*")
def test_patient_name_matching_is_case_insensitive(varied: Store, pattern: str) -> None:
    expected = {pid for pid, name in PATIENTS if reference_match(pattern, name, True)}
    assert patients_found(varied, "PatientName", pattern) == expected


KEYS = ["StudyInstanceUID", "AccessionNumber", "PatientID", "PatientName", "ModalitiesInStudy",
        "StudyDate", "StudyDescription", "limit", "offset", "includefield", "fuzzymatching",
        "00100020", "0020000D", "Modality", "SeriesNumber", "SOPInstanceUID", "Rows", "junk"]
values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789.,\\*?-", max_size=30),
    st.sampled_from(["", "*", "20240101-", "-20240101", "1.2.3", "all", "00081030,00080060",
                     "CT\\MR", "10", "-1", "1e3"]),
)


@FUZZ
@given(level=st.sampled_from(["study", "series", "instance"]),
       params=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)),
                                 values), max_size=6))
def test_any_query_is_answered_or_refused_with_a_message(varied: Store, level: qido.Level,
                                                         params: list[tuple[str, str]]) -> None:
    try:
        q = qido.parse(level, params)
    except qido.QueryError as e:
        assert str(e)
        return
    res = qido.search(varied.db, q, "http://x/dicom-web", max_results=50)
    assert len(res.items) <= (50 if q.limit is None else min(q.limit, 50))
    for item in res.items:
        assert all(re.fullmatch(r"[0-9A-F]{8}", t) for t in item)


@FUZZ
@given(header=st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(['multipart/related', 'type="application/dicom"', "type=application/dicom",
                              "transfer-syntax=*", "transfer-syntax=1.2.840.10008.1.2.1",
                              "transfer-syntax=1.2.840.10008.1.2.4.80", "q=0.5", "q=0", "q=1.5",
                              "*/*", "application/dicom", ",", ";", '"', "image/jpeg"]),
             max_size=8).map(lambda parts: "; ".join(parts))))
def test_accept_header_never_crashes(header: str) -> None:
    stored = "1.2.840.10008.1.2.4.80"
    try:
        ranges = parse_accept(header)
    except BadHeader:
        return
    assert all(0 < r.q <= 1 for r in ranges)
    assert [r.q for r in ranges] == sorted((r.q for r in ranges), reverse=True)
    try:
        multipart, syntax = choose_instance(header, stored)
    except NotAcceptable as e:
        assert "transcod" in str(e)
        return
    assert syntax == stored          # never claims a syntax it did not store
    assert isinstance(multipart, bool)
    accepts_gzip(header)


def test_q_order_wins_over_header_order() -> None:
    header = ('application/dicom; transfer-syntax=1.2.840.10008.1.2.4.80; q=0.2, '
              'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.9')
    assert choose_instance(header, "1.2.840.10008.1.2.4.80") == (True, "1.2.840.10008.1.2.4.80")
    assert choose_instance("multipart/related; q=0, application/dicom; transfer-syntax=*",
                           "1.2.840.10008.1.2.1") == (False, "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("header, ok", [("gzip", True), ("gzip;q=0", False), ("deflate", False),
                                        ("*", True), ("br, gzip;q=0.5", True), ("", False),
                                        ("identity", False), ("*;q=0, gzip", True)])
def test_accept_encoding(header: str, ok: bool) -> None:
    assert accepts_gzip(header) is ok


@pytest.fixture(scope="module")
def live_url(varied: Store) -> Iterator[str]:
    """The app on a real socket, served from a thread so sync hypothesis tests can call it."""
    import asyncio
    import threading

    from aiohttp import web

    from appliance.dicomweb import AccessLogger, make_app

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        root = web.Application()
        root.add_subapp("/dicom-web", make_app(varied, guard=loopback_guard()))
        runner = web.AppRunner(root, access_log_class=AccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{holder['port']}/dicom-web"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


STUDY_KEYS = ["AccessionNumber", "PatientID", "PatientName", "ModalitiesInStudy", "StudyDate",
              "limit", "offset", "includefield", "fuzzymatching"]
well_formed = st.lists(st.tuples(st.sampled_from(STUDY_KEYS), st.sampled_from(
    ["", "*", "A*", "PAT-?-1001", "MR", "CT,MR", "20000101-", "2", "0", "00081030", "all",
     "false", "dup*", "é*"])), max_size=4, unique_by=lambda kv: kv[0])
raw_query = st.one_of(well_formed, st.lists(
    st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)),
              st.one_of(values, st.text(alphabet="%25%00%ZZ%e9%C3+&=;#", max_size=12))),
    max_size=5))


@FUZZ
@given(params=raw_query, path=st.sampled_from(["/studies", "/studies", "/studies/1.2.3/series",
                                               "/studies/1.2.3/series/4.5/instances"]))
def test_http_query_strings_get_200_400_or_404_never_500(live_url: str, path: str,
                                                         params: list[tuple[str, str]]) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    # Half the pairs properly encoded, half raw: '%' kept as typed so broken escapes reach the
    # server (non-ASCII is still encoded: HTTP request lines are ASCII).
    qs = "&".join(urllib.parse.quote(f"{k}={v}", safe="%=+;*?,\\/:") if n % 2
                  else urllib.parse.urlencode({k: v}) for n, (k, v) in enumerate(params))
    try:
        with urllib.request.urlopen(f"{live_url}{path}?{qs}", timeout=10) as r:
            status = r.status
            assert isinstance(json.loads(r.read()), list)
    except urllib.error.HTTPError as e:
        status = e.code
        assert e.read().strip(), "an error answer carries a message"
    assert status in (200, 400, 404)
