"""Fixtures of the whitelist tests: the ANS files, their extracted root, the test ANS peer."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from appliance.trust.whitelist import DS, Domain
from tests.peers.ans import AnsPeer

LISTS = Path("referencement-drimbox/liste-blanche-test")
SIGNED = LISTS / "liste-blanche-signee/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml"
UNSIGNED = LISTS / "liste-blanche-non-signee/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml"


def _ans_file(conformance_dir: Path, rel: str | Path, what: str) -> bytes:
    p = conformance_dir / rel
    if not p.is_file():
        pytest.skip(f"ANS {what} whitelist not found at {p}")
    return p.read_bytes()


@pytest.fixture(scope="session")
def ans_signed(conformance_dir: Path) -> bytes:
    return _ans_file(conformance_dir, SIGNED, "signed")


@pytest.fixture(scope="session")
def ans_unsigned(conformance_dir: Path) -> bytes:
    return _ans_file(conformance_dir, UNSIGNED, "unsigned")


@pytest.fixture(scope="session")
def ans_signed_path(conformance_dir: Path, ans_signed: bytes) -> Path:
    return conformance_dir / SIGNED


@pytest.fixture(scope="session")
def ans_unsigned_path(conformance_dir: Path, ans_unsigned: bytes) -> Path:
    return conformance_dir / UNSIGNED


@pytest.fixture(scope="session")
def ans_root(ans_signed: bytes) -> x509.Certificate:
    """The self-signed IGC-Santé test root, the last certificate of the signed file's KeyInfo."""
    root = etree.fromstring(ans_signed)
    last = list(root.iter(f"{{{DS}}}X509Certificate"))[-1]
    cert = x509.load_der_x509_certificate(base64.b64decode(last.text))
    assert cert.subject == cert.issuer
    return cert


@pytest.fixture
def ans_root_pem(ans_root: x509.Certificate, tmp_path: Path) -> Path:
    p = tmp_path / "igc-sante-test-root.pem"
    p.write_bytes(ans_root.public_bytes(Encoding.PEM))
    return p


@pytest.fixture(scope="session")
def ans_peer_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnsPeer]:
    peer = AnsPeer.start(tmp_path_factory.mktemp("ans-peer"))
    yield peer
    peer.stop()


@pytest.fixture
def ans_peer(ans_peer_session: AnsPeer) -> Iterator[AnsPeer]:
    """The test ANS with no fault and nothing served; shared by the tests (one PKI)."""
    ans_peer_session.fault = ans_peer_session.crl_fault = None
    ans_peer_session.served = b""
    yield ans_peer_session
    ans_peer_session.fault = ans_peer_session.crl_fault = None


@pytest.fixture(scope="session")
def peer_anchor(ans_peer_session: AnsPeer) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(ans_peer_session.anchor.read_bytes())


def domains(n: int = 3, start: int = 1) -> list[Domain]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [Domain(str(i), f"db{i}.test.example", f"vi{i}.test.example", f"Site {i}",
                   f"CN=db{i}.test.example,OU=49970036790900{i % 10},O=SITE {i},C=FR",
                   "support@example.invalid", now) for i in range(start, start + n)]
