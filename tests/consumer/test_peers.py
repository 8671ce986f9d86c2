"""RetrieveURL checks: what the consumer box agrees to fetch from a KOS written by another box."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.consumer import RetrieveUrlError, UrlPolicy, check_retrieve_url
from appliance.dicom.uids import is_valid_uid

pytestmark = pytest.mark.unit

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
GOOD = f"https://db1.test.mesimagesmedicales.fr/dicom-web/studies/{STUDY}/series/{SERIES}"


def test_accepts_the_box_and_demo_layouts():
    t = check_retrieve_url(GOOD)
    assert (t.host, t.port, t.prefix, t.study_uid, t.series_uid) == (
        "db1.test.mesimagesmedicales.fr", 443, "/dicom-web", STUDY, SERIES)
    demo = check_retrieve_url(f"https://DB2.example.org:8443/api/source/studies/{STUDY}/series/"
                              f"{SERIES}")
    assert (demo.host, demo.port, demo.prefix) == ("db2.example.org", 8443, "/api/source")


@pytest.mark.parametrize("url, words", [
    (GOOD.replace("https", "http", 1), "not https"),
    (GOOD.replace("https://", "ftp://", 1), "not https"),
    (GOOD.replace("db1.test", "user:pw@db1.test", 1), "credentials"),
    (GOOD + "?x=1", "query"),
    (GOOD + "#top", "query or a fragment"),
    (GOOD + "?", "query"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "10.0.0.7"), "IP address"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "[::1]"), "IP address"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "127.1"), "numeric IP"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "2130706433"), "numeric IP"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "0x7f.0.0.1"), "numeric IP"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "db_1.example.org"), "DNS name"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "-db.example.org"), "DNS name"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "db1.example.org:99999"), "parse"),
    (GOOD.replace("db1.test.mesimagesmedicales.fr", "db1.example.org:0"), "port 0"),
    ("https:///dicom-web/studies/1.2/series/1.3", "no host"),
    (GOOD.replace("/dicom-web/", "/wado/"), "path"),
    (GOOD + "/instances/1.2.3", "path"),
    (GOOD + "/", "path"),
    (GOOD.replace("/series/", "/series/../series/"), "path"),
    (GOOD.replace(SERIES, "1.2.%33"), "'%'"),
    (GOOD.replace(SERIES, "1.02.3"), "series UID"),
    (GOOD.replace(STUDY, "1." + "2" * 70), "study UID"),
    (GOOD.replace(STUDY, "x"), "study UID"),
    (GOOD + " ", "spaces"),
    (GOOD.replace("db1", "dé1"), "spaces, control"),
    ("", "empty"),
    ("https://" + "a" * 3000, "longer than"),
])
def test_refuses(url, words):
    with pytest.raises(RetrieveUrlError) as e:
        check_retrieve_url(url)
    assert words in str(e.value)


def test_ip_literal_only_when_allowed():
    url = GOOD.replace("db1.test.mesimagesmedicales.fr", "127.0.0.1:9443")
    assert check_retrieve_url(url, UrlPolicy(allow_ip_literals=True)).port == 9443
    v6 = GOOD.replace("db1.test.mesimagesmedicales.fr", "[::1]")
    assert check_retrieve_url(v6, UrlPolicy(allow_ip_literals=True)).host == "::1"


def test_whitelist_hook_and_prefixes():
    listed = {"db1.test.mesimagesmedicales.fr"}
    policy = UrlPolicy(host_allowed=listed.__contains__)
    assert check_retrieve_url(GOOD, policy).host in listed
    with pytest.raises(RetrieveUrlError, match="whitelist"):
        check_retrieve_url(GOOD.replace("db1.", "db9."), policy)
    demo = GOOD.replace("/dicom-web/", "/api/source/")
    assert check_retrieve_url(demo).prefix == "/api/source"
    with pytest.raises(RetrieveUrlError, match="path"):
        check_retrieve_url(demo, UrlPolicy(prefixes=("/dicom-web",)))
    proxied = GOOD.replace("/dicom-web/", "/drimbox/dicom-web/")
    assert check_retrieve_url(proxied, UrlPolicy(prefixes=("/drimbox/dicom-web",))).prefix == \
        "/drimbox/dicom-web"


def test_error_messages_do_not_repeat_the_url():
    secret = GOOD.replace("db1.test", "user:s3cret@db1.test") + "?token=abc"
    with pytest.raises(RetrieveUrlError) as e:
        check_retrieve_url(secret)
    assert "s3cret" not in str(e.value) and "abc" not in str(e.value)


_url_chars = st.sampled_from(list("abcdefgh0123456789.:/@?#%[]-_ ~\\\x00é") + [
    "https://", "/dicom-web/studies/", "/series/", "/api/source/studies/", STUDY, SERIES,
    "127.0.0.1", "db1.example.org", "[::1]"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_url_chars, max_size=12).map("".join)))
def test_fuzz_any_text_is_accepted_safely_or_refused(url):
    accepted_safely_or_refused(url)


def accepted_safely_or_refused(url: str) -> None:
    try:
        t = check_retrieve_url(url)
    except RetrieveUrlError:
        return
    parts = urlsplit(url)
    assert parts.scheme == "https" and not parts.query and not parts.fragment
    assert "@" not in parts.netloc
    with pytest.raises(ValueError):
        ipaddress.ip_address(t.host)
    assert is_valid_uid(t.study_uid) and is_valid_uid(t.series_uid)
    assert parts.path == f"{t.prefix}/studies/{t.study_uid}/series/{t.series_uid}"


_near_valid = st.builds(
    lambda scheme, auth, host, port, prefix, study, series, tail: (
        f"{scheme}://{auth}{host}{port}{prefix}/studies/{study}/series/{series}{tail}"),
    st.sampled_from(["https", "http", "HTTPS"]), st.sampled_from(["", "u@", "u:p@"]),
    st.sampled_from(["db1.example.org", "127.0.0.1", "[::1]", "127.1", "a..b", "x" * 70 + ".org"]),
    st.sampled_from(["", ":443", ":0", ":65536", ":x"]),
    st.sampled_from(["/dicom-web", "/api/source", "/dicom-web-rs", "", "/dicom-web/.."]),
    st.one_of(st.just(STUDY), st.text(max_size=70)), st.one_of(st.just(SERIES), st.text(max_size=70)),
    st.sampled_from(["", "/", "?a", "#f", "/instances/1.2"]))


@settings(max_examples=400, deadline=None)
@given(_near_valid)
def test_fuzz_near_valid_urls(url):
    accepted_safely_or_refused(url)


def test_near_valid_strategy_reaches_acceptance():
    """The fuzz above would prove little if nothing it makes were ever accepted."""
    url = f"https://db1.example.org:443/api/source/studies/{STUDY}/series/{SERIES}"
    assert check_retrieve_url(url).prefix == "/api/source"
