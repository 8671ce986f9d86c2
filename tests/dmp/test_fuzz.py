"""Fuzzing every parser of the DMP connector and of the simulator: whatever the bytes, the only
outcome is a parsed value or the module's own clear error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from appliance import xmlsafe
from appliance.dmp import DmpError, soap, transactions
from appliance.dmp.codes import NS
from tests.peers.dmp import checks

FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
content_types = st.sampled_from([
    "application/soap+xml", "text/xml", "multipart/related", 'multipart/related; boundary="b"',
    'multipart/related; boundary="b"; start="<0.1>"; type="application/xop+xml"', "", "x/y",
    "multipart/related; boundary=", 'multipart/related; boundary="b"; start="<nope>"'])


def _multipart(parts: list[tuple[str, str, bytes]], close: bool) -> bytes:
    out = b""
    for cid, ctype, data in parts:
        out += (f"--b\r\nContent-Type: {ctype}\r\nContent-ID: <{cid}>\r\n\r\n").encode() + data \
            + b"\r\n"
    return out + (b"--b--\r\n" if close else b"")


@FUZZ
@given(ct=content_types, body=st.binary(max_size=2000))
def test_decode_random_bytes(ct, body):
    try:
        soap.decode(ct, body, limit=100_000)
    except DmpError:
        pass


@FUZZ
@given(parts=st.lists(st.tuples(st.sampled_from(["0.1", "0.2", "", "x"]),
                                st.sampled_from(["application/xop+xml", "application/dicom",
                                                 "text/plain"]),
                                st.binary(max_size=300)), max_size=4), close=st.booleans())
def test_decode_random_multipart(parts, close):
    try:
        soap.decode('multipart/related; boundary="b"; start="<0.1>"; type="application/xop+xml"',
                    _multipart(parts, close), limit=100_000)
    except DmpError:
        pass


@FUZZ
@given(st.binary(max_size=3000))
def test_hardened_parser(data):
    try:
        xmlsafe.parse(data, limit=2000)
    except xmlsafe.UnsafeXmlError:
        pass


tags = st.sampled_from([
    f"{{{NS['soap']}}}Envelope", f"{{{NS['soap']}}}Body", f"{{{NS['soap']}}}Fault",
    f"{{{NS['soap']}}}Code", f"{{{NS['soap']}}}Value", f"{{{NS['rs']}}}RegistryResponse",
    f"{{{NS['rs']}}}RegistryError", f"{{{NS['query']}}}AdhocQueryResponse",
    f"{{{NS['rim']}}}RegistryObjectList", f"{{{NS['rim']}}}ExtrinsicObject",
    f"{{{NS['rim']}}}ObjectRef", f"{{{NS['rim']}}}Slot", f"{{{NS['rim']}}}ValueList",
    f"{{{NS['rim']}}}Value", f"{{{NS['rim']}}}Classification",
    f"{{{NS['rim']}}}ExternalIdentifier", f"{{{NS['xds']}}}RetrieveDocumentSetResponse",
    f"{{{NS['xds']}}}DocumentResponse", f"{{{NS['xds']}}}DocumentUniqueId",
    f"{{{NS['xds']}}}Document", f"{{{NS['xop']}}}Include", f"{{{NS['hl7']}}}PRPA_IN201306UV02",
    f"{{{NS['hl7']}}}administrativeObservation", f"{{{NS['hl7']}}}queryResponseCode", "other"])
attrs = st.dictionaries(st.sampled_from(["status", "id", "errorCode", "codeContext", "href",
                                         "code", "name", "value", "severity", "mimeType",
                                         "classificationScheme", "identificationScheme"]),
                        st.sampled_from(["", "x", FAILURE, SUCCESS, "cid:0.2", "OK",
                                         "2.25.1", "soap:Receiver", "12"]), max_size=3)


@st.composite
def trees(draw, depth=0):
    el = etree.Element(draw(tags), draw(attrs))
    el.text = draw(st.sampled_from([None, "", "2.25.1", "QUJD", "soap:Sender"]))
    if depth < 4:
        for child in draw(st.lists(trees(depth=depth + 1), max_size=3)):
            el.append(child)
    return el


@FUZZ
@given(body=trees(), atts=st.dictionaries(st.sampled_from(["0.2", "x"]), st.binary(max_size=8)))
def test_answer_parsers_on_random_trees(body, atts):
    env = etree.Element(f"{{{NS['soap']}}}Envelope")
    etree.SubElement(env, f"{{{NS['soap']}}}Body").append(body)
    msg = soap.SoapMessage(env, atts)
    for parse in (transactions.registry_response, transactions.query_response,
                  transactions.access_response, lambda m: transactions.retrieve_response(m, "2.25.1")):
        try:
            parse(msg)
        except DmpError:
            pass


@FUZZ
@given(env=trees())
def test_simulator_checks_on_random_trees(env):
    for check in (lambda e: checks.check_vihf(e, [], verify=False),
                  lambda e: checks.check_submission_set(e),
                  lambda e: checks.check_document_entry(e, "x", b""),
                  lambda e: checks.check_addressing(e, "a")):
        try:
            check(env)
        except (checks.Refusal, checks.SecurityFault):
            pass


@FUZZ
@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=5))
def test_stored_query_values_round_trip(values):
    assert checks.stored_query_values(transactions.quoted_list(values)) == values


@FUZZ
@given(st.text(max_size=60))
def test_stored_query_values_random_text(text):
    try:
        checks.stored_query_values(text)
    except checks.Refusal:
        pass


@FUZZ
@given(st.binary(max_size=2000))
def test_xades_check_on_random_bytes(data):
    try:
        checks.check_xades(data, "2.25.1", {"2.25.2": b"x"}, "2.25.3", [], 10_000)
    except (checks.Refusal, checks.SecurityFault):
        pass


@FUZZ
@given(ct=content_types, parts=st.lists(st.tuples(
    st.sampled_from(["0.1", "0.2", ""]), st.sampled_from(["application/xop+xml", "text/plain"]),
    st.binary(max_size=300)), max_size=3), close=st.booleans(), raw=st.binary(max_size=500))
def test_simulator_request_decoder(sim_certs, ct, parts, close, raw):
    from tests.peers.dmp import DmpSimulator
    sim = DmpSimulator(cert=sim_certs.cert, key=sim_certs.key, client_ca=sim_certs.client_ca,
                       limit=100_000)
    for body in (_multipart(parts, close), raw):
        for header in (ct, 'multipart/related; boundary="b"; start="<0.1>"; '
                           'type="application/xop+xml"; start-info="application/soap+xml"'):
            try:
                sim._decode(header, body)
            except checks.Refusal:
                pass
