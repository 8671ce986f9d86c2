"""The listing reads the ANS DRIM-M samples as the real DMP and peers would send them: the KOS
DocumentEntry of the XDS validator sample, and the RetrieveURLs of the WADO-RS validator requests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from appliance.consumer import RetrieveUrlError, check_retrieve_url
from appliance.consumer.exams import _exam, _is_kos, _is_report
from appliance.dmp.transactions import document_entry

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"


def sample_entries(conformance_dir: Path) -> dict[str, etree._Element]:
    tree = etree.parse(str(conformance_dir / "echantillons-validateurs" / "validateur-xds"
                           / "XDS.xml"), etree.XMLParser(resolve_entities=False, no_network=True))
    return {eo.get("id"): eo for eo in tree.iter(f"{{{RIM}}}ExtrinsicObject")}


def test_ans_kos_entry_lists_as_an_exam(conformance_dir):
    entries = sample_entries(conformance_dir)
    kos = document_entry(entries["DocumentKOS"])
    assert _is_kos(kos) and not _is_report(kos)
    exam = _exam(kos)
    assert exam.kos_uid == "1.3.2.751468943.3.1234.16461.231103161723.1.1.1"
    assert exam.accession == "7252295367250016"
    assert exam.study_uid == "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.116"
    assert exam.modalities == ("MR",)
    # The sample's region 63337009 is coded under 1.2.250.1.213.2.5 (CCAM's OID, PROTOCOLS.md
    # §2.4), not the JDV .695: it is not taken for a region.
    assert exam.regions == ()
    assert exam.institution is not None
    assert (exam.institution.name, exam.institution.id) == ("BCOM", "499700367909006")
    assert exam.confidentiality == ("N",)
    assert exam.service_start == datetime(2021, 1, 4, 9, 22, tzinfo=UTC)
    assert exam.service_stop == datetime(2021, 1, 4, 16, 5, tzinfo=UTC)
    assert exam.created == datetime(2023, 11, 3, 16, 17, 23, tzinfo=UTC)


def test_ans_signature_entry_is_neither_exam_nor_report(conformance_dir):
    sig = document_entry(sample_entries(conformance_dir)["Signature01"])
    assert not _is_kos(sig) and not _is_report(sig)


def request_url(path: Path) -> str:
    method, url, _ = path.read_text(encoding="utf-8").splitlines()[0].split(" ")
    assert method == "GET"
    return url


def test_ans_wado_rs_series_url_is_accepted(conformance_dir):
    d = conformance_dir / "echantillons-validateurs" / "validateur-wado-rs"
    t = check_retrieve_url(request_url(d / "requete-wado-rs-serie" / "Requete-WADO-RS---Serie.txt"))
    assert (t.host, t.port, t.prefix) == ("interop.referencement.esante.gouv.fr", 443,
                                          "/dicom-web-rs")
    assert t.study_uid == "1.2.840.113745.101000.108000.38425.5599.7073835"
    # A KOS RetrieveURL names a series: an instance URL is not one.
    with pytest.raises(RetrieveUrlError, match="path"):
        check_retrieve_url(request_url(d / "requete-wado-rs-instance"
                                       / "Requete-WADO-RS---Instance.txt"))
