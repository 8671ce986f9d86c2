"""The official ANS test lists: the signed one verifies, the unsigned and forged ones are refused."""

from __future__ import annotations

import base64
import copy
import datetime as dt

import pytest
from cryptography import x509
from lxml import etree

from appliance.trust import WhitelistRefused, verify
from appliance.trust.crl import CrlSource
from appliance.trust.whitelist import DS, NS

pytestmark = pytest.mark.unit


def _verify(data: bytes, root: x509.Certificate, **kw):
    kw.setdefault("revocation", "best-effort")  # no internet here: the IGC-Santé CRLs are away
    kw.setdefault("crls", CrlSource(None, timeout=3))
    return verify(data, [root], **kw)


def _refused(data: bytes, root: x509.Certificate, **kw) -> str:
    with pytest.raises(WhitelistRefused) as e:
        _verify(data, root, **kw)
    return str(e.value)


def _tree(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def _bytes(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=False)


def test_signed_ans_list_verifies(ans_signed, ans_root):
    wl = _verify(ans_signed, ans_root)
    assert wl.generated == dt.datetime(2026, 6, 19, 18, 6, 52, tzinfo=dt.UTC)
    assert len(wl.domains) == 17
    assert "CN=Liste Blanche DRIM-M" in wl.signer_subject
    assert "OU=318751275100020" in wl.signer_subject
    assert "db3.test.mesimagesmedicales.fr" in wl.db_hosts
    assert "vi175.test.mesimagesmedicales.fr" in wl.vi_hosts
    assert len(wl.db_hosts) == 17
    assert all(h == h.lower() and h for h in wl.db_hosts | wl.vi_hosts)
    # No internet: revocation could not be checked, and the list says so.
    assert wl.revocation.startswith("not checked")
    assert "igc-sante.esante.gouv.fr/CRL/ACI-EL-ORG-TEST.crl" in wl.revocation


def test_domain_for_subject_matches_certificate_order(ans_signed, ans_root):
    wl = _verify(ans_signed, ans_root)
    # A certificate's subject is written C first; the list writes CN first.
    name = x509.Name([
        x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(x509.NameOID.STATE_OR_PROVINCE_NAME, "Côte-d'Or  (21)"),
        x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "ministere de test3198"),
        x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "300000001831981"),
        x509.NameAttribute(x509.NameOID.COMMON_NAME, "DB175.test.mesimagesmedicales.fr"),
    ])
    d = wl.domain_for_subject(name)
    assert d is not None and d.identifier == "175"
    assert d.db == "db175.test.mesimagesmedicales.fr"
    assert d.denomination == "E-MEDIA"
    assert d.updated == dt.datetime(2025, 7, 22, 11, 27, 12, tzinfo=dt.UTC)
    other = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                          "db175.test.mesimagesmedicales.fr")])
    assert wl.domain_for_subject(other) is None


def test_unsigned_ans_list_is_refused(ans_unsigned, ans_root):
    assert "not signed" in _refused(ans_unsigned, ans_root)


def test_wrong_anchor_or_signer_identity_refused(ans_signed, ans_root, peer_anchor):
    assert "not trusted" in _refused(ans_signed, peer_anchor[0])
    assert _refused(ans_signed, ans_root, signer_ou="999") == (
        "signer OU '318751275100020' is not the configured '999'")
    assert "signer CN 'Liste Blanche DRIM-M' is not the configured 'Other'" in _refused(
        ans_signed, ans_root, signer_cn="Other")
    late = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert "signer certificate expired on 2029-09-14" in _refused(ans_signed, ans_root, at=late)


def _domaines(root: etree._Element) -> list[etree._Element]:
    return root.findall(f"{{{NS}}}ListeDomaines/{{{NS}}}Domaine")


def test_changed_operator_dn_refused(ans_signed, ans_root):
    root = _tree(ans_signed)
    dn = _domaines(root)[0].find(f"{{{NS}}}DNCertificatOperateur")
    dn.text = dn.text.replace("CN=db3.", "CN=evil.")
    assert "signature does not verify" in _refused(_bytes(root), ans_root)


def test_removed_domain_refused(ans_signed, ans_root):
    root = _tree(ans_signed)
    d = _domaines(root)[2]
    d.getparent().remove(d)
    assert "signature does not verify" in _refused(_bytes(root), ans_root)


def test_added_domain_refused(ans_signed, ans_root):
    root = _tree(ans_signed)
    extra = copy.deepcopy(_domaines(root)[0])
    extra.find(f"{{{NS}}}Identifiant").text = "999"
    extra.find(f"{{{NS}}}db").text = "db999.evil.example"
    root.find(f"{{{NS}}}ListeDomaines").append(extra)
    assert "signature does not verify" in _refused(_bytes(root), ans_root)


def test_flipped_signature_value_byte_refused(ans_signed, ans_root):
    root = _tree(ans_signed)
    sv = root.find(f"{{{DS}}}Signature/{{{DS}}}SignatureValue")
    raw = bytearray(base64.b64decode(sv.text))
    raw[len(raw) // 2] ^= 0x01
    sv.text = base64.b64encode(bytes(raw)).decode()
    assert "signature does not verify" in _refused(_bytes(root), ans_root)


def test_signature_moved_into_the_content_refused(ans_signed, ans_root):
    root = _tree(ans_signed)
    sig = root.find(f"{{{DS}}}Signature")
    _domaines(root)[0].append(sig)
    assert "not a direct child" in _refused(_bytes(root), ans_root)


def test_signature_wrapping_refused(ans_signed, ans_root):
    """Classic wrapping: forged content where the box reads, the signed original tucked away
    where a careless verifier would still find the signed digest."""
    original = _tree(ans_signed)
    forged = copy.deepcopy(original)
    sig = forged.find(f"{{{DS}}}Signature")
    _domaines(forged)[0].find(f"{{{NS}}}db").text = "db.evil.example"
    obj = etree.SubElement(sig, f"{{{DS}}}Object")
    hidden = copy.deepcopy(original)
    hidden.remove(hidden.find(f"{{{DS}}}Signature"))
    obj.append(hidden)
    reason = _refused(_bytes(forged), ans_root)
    assert "signature does not verify" in reason or "wrapping" in reason
    # A second, copied signature inside the content is refused outright.
    dup = _tree(ans_signed)
    dup.find(f"{{{NS}}}ListeDomaines").append(copy.deepcopy(dup.find(f"{{{DS}}}Signature")))
    assert "2 ds:Signature" in _refused(_bytes(dup), ans_root)
    # The signed document moved under another root element.
    outer = etree.Element(f"{{{NS}}}ListeBlancheDRIM-M", versionFormat="1.0.0")
    outer.append(_tree(ans_signed))
    assert "not a direct child" in _refused(_bytes(outer), ans_root)


def test_comment_truncating_a_value_refused(ans_signed, ans_root):
    """URI="" excludes comments from the digest; a comment could cut a host name short."""
    data = ans_signed.replace(b"<db>db3.test.mesimagesmedicales.fr</db>",
                              b"<db>db3.test<!-- -->.mesimagesmedicales.fr</db>", 1)
    assert data != ans_signed
    assert "comments" in _refused(data, ans_root)


def test_doctype_refused(ans_signed, ans_root):
    data = ans_signed.replace(b"?>", b"?><!DOCTYPE x [<!ENTITY a 'b'>]>", 1)
    assert "DOCTYPE" in _refused(data, ans_root)
