"""``drimbox whitelist verify|show`` as an operator runs it (a subprocess)."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
import textwrap

import pytest
from lxml import etree

from appliance.trust.whitelist import DS
from tests.conftest import REPO

from .conftest import domains

pytestmark = pytest.mark.integration


def _drimbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_verify_ans_signed_file(ans_signed_path, ans_root_pem):
    r = _drimbox("whitelist", "verify", str(ans_signed_path), "--anchor", str(ans_root_pem),
                 "--timeout", "3")
    assert r.returncode == 0, r.stderr
    assert "generated: 2026-06-19T18:06:52Z" in r.stdout
    assert "domains: 17" in r.stdout
    assert "signer: CN=Liste Blanche DRIM-M,OU=318751275100020" in r.stdout
    # No internet: best-effort revocation, and the summary says what could not be checked.
    assert "revocation: not checked (CRL http://igc-sante.esante.gouv.fr/CRL/" in r.stdout


def test_verify_ans_signed_file_requiring_revocation_fails_offline(ans_signed_path,
                                                                   ans_root_pem):
    r = _drimbox("whitelist", "verify", str(ans_signed_path), "--anchor", str(ans_root_pem),
                 "--require-revocation", "--timeout", "3")
    assert r.returncode == 2
    assert "unreachable" in r.stderr and r.stdout == ""


def test_verify_unsigned_file_refused(ans_unsigned_path, ans_root_pem):
    r = _drimbox("whitelist", "verify", str(ans_unsigned_path), "--anchor", str(ans_root_pem))
    assert r.returncode == 2
    assert "refused: not signed" in r.stderr
    assert r.stdout == ""


def test_verify_forged_file_refused(ans_signed, ans_root_pem, tmp_path):
    root = etree.fromstring(ans_signed)
    sv = root.find(f"{{{DS}}}Signature/{{{DS}}}SignatureValue")
    raw = bytearray(base64.b64decode(sv.text))
    raw[10] ^= 0xFF
    sv.text = base64.b64encode(bytes(raw)).decode()
    forged = tmp_path / "forged.xml"
    forged.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    r = _drimbox("whitelist", "verify", str(forged), "--anchor", str(ans_root_pem))
    assert r.returncode == 2
    assert "signature does not verify" in r.stderr


def test_verify_with_current_and_local_crl(ans_peer, tmp_path):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cur = tmp_path / "current.xml"
    cur.write_bytes(ans_peer.signed(domains(2), generated=now))
    old = tmp_path / "old.xml"
    old.write_bytes(ans_peer.signed(domains(2), generated=now - dt.timedelta(days=1)))
    r = _drimbox("whitelist", "verify", str(old), "--anchor", str(ans_peer.anchor),
                 "--current", str(cur))
    assert r.returncode == 2 and "is older than the current list" in r.stderr
    ans_peer.crl_fault = "503"
    crls = []
    for name in ("inter", "root"):
        p = tmp_path / f"{name}.crl"
        p.write_bytes(ans_peer.pki.crl(name))
        crls += ["--crl", str(p)]
    r = _drimbox("whitelist", "verify", str(cur), "--anchor", str(ans_peer.anchor),
                 "--require-revocation", *crls)
    assert r.returncode == 0, r.stderr
    assert "revocation: checked (2 CRLs, not revoked)" in r.stdout


def test_show_stored_list(ans_peer, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "trust").mkdir(parents=True)
    (data_dir / "trust" / "whitelist.xml").write_bytes(ans_peer.signed(domains(2)))
    example = _drimbox("config", "example").stdout
    assert "[trust]" not in example
    cfg = tmp_path / "box.toml"
    cfg.write_text(example.replace('data_dir = "/var/lib/drimbox"', f'data_dir = "{data_dir}"')
                   + textwrap.dedent(f"""
                   [trust]
                   whitelist_url = "{ans_peer.url}"
                   whitelist_anchors = ["{ans_peer.anchor}"]
                   """))
    r = _drimbox("whitelist", "show", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "domains: 2" in r.stdout and "db2.test.example" in r.stdout
    (data_dir / "trust" / "whitelist.xml").unlink()
    r = _drimbox("whitelist", "show", "-c", str(cfg))
    assert r.returncode == 1 and "no whitelist stored" in r.stderr
