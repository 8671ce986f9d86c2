"""Lists signed by the test ANS: signer identity, validity, revocation by CRL, content rules."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.trust import WhitelistRefused, verify
from appliance.trust.crl import CrlSource
from tests.peers.ans import domain_for_certificate, signed_list

from .conftest import domains

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _verify(data, anchor, **kw):
    kw.setdefault("revocation", "require")
    kw.setdefault("crls", CrlSource(None, timeout=5))
    return verify(data, anchor, **kw)


def _refused(data, anchor, **kw) -> str:
    with pytest.raises(WhitelistRefused) as e:
        _verify(data, anchor, **kw)
    return str(e.value)


def test_good_list_verifies_with_revocation_required(ans_peer, peer_anchor):
    data = ans_peer.publish(domains(3), generated=NOW)
    wl = _verify(data, peer_anchor)
    assert wl.generated == NOW
    assert [d.identifier for d in wl.domains] == ["1", "2", "3"]
    assert wl.db_hosts == {"db1.test.example", "db2.test.example", "db3.test.example"}
    assert wl.revocation == "checked (2 CRLs, not revoked)"
    assert ans_peer.hits["crl"] >= 2


def test_other_ou_expired_and_revoked_signers_refused(ans_peer, peer_anchor):
    ds = domains(2)
    assert _refused(ans_peer.signed(ds, signer="other-ou"), peer_anchor) == (
        "signer OU '499700367909006' is not the configured '318751275100020'")
    expired = ans_peer.pki.signers["expired"].cert.not_valid_after_utc
    assert (f"signer certificate expired on {expired:%Y-%m-%d %H:%M}Z"
            in _refused(ans_peer.signed(ds, signer="expired"), peer_anchor))
    reason = _refused(ans_peer.signed(ds, signer="revoked"), peer_anchor)
    assert reason.startswith(f"CRL {ans_peer.base}/crl/inter.crl lists the signer certificate "
                             "as revoked")
    # Even when revocation is only best-effort, a revoked signer found in a CRL is refused.
    assert "as revoked" in _refused(ans_peer.signed(ds, signer="revoked"), peer_anchor,
                                    revocation="best-effort")


def test_crl_unreachable(ans_peer, peer_anchor):
    data = ans_peer.signed(domains(2))
    ans_peer.crl_fault = "503"
    reason = _refused(data, peer_anchor)
    assert reason.startswith(f"CRL {ans_peer.base}/crl/inter.crl unreachable: HTTP 503")
    wl = _verify(data, peer_anchor, revocation="best-effort")
    assert wl.revocation.startswith("not checked (CRL ")
    assert "unreachable: HTTP 503" in wl.revocation
    assert _verify(data, peer_anchor, revocation="off").revocation == (
        "not checked (revocation off)")


@pytest.mark.parametrize("fault, reason", [
    ("redirect-ftp", "redirect to a ftp: URL refused"),
    ("huge", "larger than 10485760 bytes"),
    ("garbage", "not a CRL"),
])
def test_crl_fetch_limits(ans_peer, peer_anchor, fault, reason):
    ans_peer.crl_fault = fault
    assert reason in _refused(ans_peer.signed(domains(1)), peer_anchor)


def test_crls_are_cached_until_next_update(ans_peer, peer_anchor, tmp_path):
    data = ans_peer.signed(domains(1))
    _verify(data, peer_anchor, crls=CrlSource(tmp_path / "crl", timeout=5))
    assert len(list((tmp_path / "crl").glob("*.crl"))) == 2
    ans_peer.crl_fault = "503"
    # A new source (a restarted box) uses the CRLs cached on disk.
    wl = _verify(data, peer_anchor, crls=CrlSource(tmp_path / "crl", timeout=5))
    assert wl.revocation.startswith("checked")


def test_local_crl_files(ans_peer, peer_anchor, tmp_path):
    ans_peer.crl_fault = "503"
    (tmp_path / "inter.crl").write_bytes(ans_peer.pki.crl("inter"))
    (tmp_path / "root.crl").write_bytes(ans_peer.pki.crl("root"))
    crls = CrlSource(None, local=[tmp_path / "inter.crl", tmp_path / "root.crl"])
    assert _verify(ans_peer.signed(domains(1)), peer_anchor, crls=crls).revocation.startswith(
        "checked")
    reason = _refused(ans_peer.signed(domains(1), signer="revoked"), peer_anchor, crls=crls)
    assert f"CRL {tmp_path / 'inter.crl'} lists the signer certificate as revoked" in reason


def test_older_list_refused_same_list_accepted(ans_peer, peer_anchor):
    current = _verify(ans_peer.signed(domains(2), generated=NOW), peer_anchor)
    older = ans_peer.signed(domains(2), generated=NOW - dt.timedelta(hours=1))
    assert _refused(older, peer_anchor, current=current) == (
        f"list generated {NOW - dt.timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ} is older than the "
        f"current list ({NOW:%Y-%m-%dT%H:%M:%SZ})")
    same = _verify(ans_peer.signed(domains(2), generated=NOW), peer_anchor, current=current)
    assert same.generated == current.generated
    future = ans_peer.signed(domains(2), generated=NOW + dt.timedelta(hours=1))
    assert "in the future" in _refused(future, peer_anchor)


def test_sha1_signature_refused(ans_peer, peer_anchor):
    assert _refused(ans_peer.signed(domains(1), method="rsa-sha1"), peer_anchor) == (
        "signature method rsa-sha1 is too weak (rsa-sha256 required)")


@pytest.mark.parametrize("change, reason", [
    (lambda ds: [], "the list holds no domain"),
    (lambda ds: ds + [replace(ds[0], db="dbx.example")], "duplicate Identifiant '1'"),
    (lambda ds: [replace(ds[0], operator_dn="")], "domain '1' has no DNCertificatOperateur"),
    (lambda ds: [replace(ds[0], db="")], "domain '1' has no db host"),
    (lambda ds: [replace(ds[0], operator_dn="not a DN")], "is not a distinguished name"),
])
def test_content_rules(ans_peer, peer_anchor, change, reason):
    data = ans_peer.signed(change(domains(2)))
    assert reason in _refused(data, peer_anchor, revocation="off")


def test_domain_for_certificate_round_trip(ans_peer, peer_anchor, tmp_path):
    pem = tmp_path / "signer.pem"
    cert = ans_peer.pki.signers["good"].cert
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    d = domain_for_certificate(pem, "42", "db42.test.example", "vi42.test.example")
    assert d.operator_dn.startswith("CN=Liste Blanche DRIM-M,OU=")  # CN first, like the ANS
    wl = _verify(ans_peer.signed([d]), peer_anchor)
    assert wl.domain_for_subject(cert.subject) == d
    assert wl.domain_for_subject(ans_peer.pki.inter.subject) is None


@pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 not installed (Debian "
                    "package xmlsec1)")
def test_xmlsec1_command_line_verifies_the_test_signer(ans_peer, tmp_path):
    """The test signer's output is checked by an independent verifier (xmlsec1 + its X.509
    chain check), and an altered copy fails there too."""
    good = tmp_path / "list.xml"
    good.write_bytes(signed_list(domains(2), ans_peer.pki.signers["good"]))
    inter = tmp_path / "inter.pem"
    inter.write_bytes(ans_peer.pki.inter.public_bytes(Encoding.PEM))
    cmd = ["xmlsec1", "--verify", "--trusted-pem", str(ans_peer.anchor), "--untrusted-pem",
           str(inter), "--id-attr:Id", "http://uri.etsi.org/01903/v1.3.2#:SignedProperties"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "SignedInfo References (ok/all): 2/2" in ok.stdout + ok.stderr
    bad = tmp_path / "altered.xml"
    bad.write_bytes(good.read_bytes().replace(b"db2.test.example", b"db2.evil.example"))
    ko = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=60)
    assert ko.returncode != 0


def test_anchors_from_keyinfo_are_not_trusted(ans_peer):
    """The self-signed root carried in KeyInfo is not an anchor: only configured ones are."""
    other = x509.load_pem_x509_certificates(ans_peer.anchor.read_bytes())
    from tests.peers.ans import make_pki

    stranger = make_pki("http://127.0.0.1:9")
    data = signed_list(domains(1), stranger.signers["good"])
    assert "not trusted" in _refused(data, other, revocation="off")
