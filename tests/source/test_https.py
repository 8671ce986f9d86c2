"""The box's HTTPS server with its key on the token (http.tls = true)."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.source.conftest import source_box_config

pytestmark = pytest.mark.integration


def test_https_with_the_server_key_on_the_token(tmp_path: Path, pki, dmp_simulator,
                                                pacs) -> None:
    box = source_box_config(tmp_path / "box", pki, dmp_simulator, pacs)
    box.config_path.write_text(box.config_path.read_text().replace("tls = false", "tls = true"))
    ctx = ssl.create_default_context(cafile=str(pki.bundle))
    ctx.check_hostname = False  # the test certificate names "localhost"; we dial 127.0.0.1
    box.tls_context = ctx
    box.start()
    try:
        status, body = box.admin("GET", "/reports")
        assert status == 200 and body == {"reports": []}
        # The certificate the box presents is the structure's server certificate.
        with socket.create_connection(("127.0.0.1", box.http)) as raw:
            with ctx.wrap_socket(raw) as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0] \
            .value == pki.structures[0].structure_id
        # ARCHITECTURE.md §2: a full source box listens on DICOM, HL7 and HTTPS, nothing else.
        import psutil

        listening = sorted((c.laddr.ip, c.laddr.port) for c in
                           psutil.Process(box.proc.pid).net_connections(kind="inet")
                           if c.status == psutil.CONN_LISTEN)
        assert listening == sorted([("127.0.0.1", pacs.box_dicom_port), ("127.0.0.1", box.hl7),
                                    ("127.0.0.1", box.http)])
        # Plain HTTP is not served on that port.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{box.http}/healthz", timeout=5).read()
    finally:
        box.stop()
