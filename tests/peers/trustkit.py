"""The parts a peer read needs, for in-process tests and benchmarks of the access guard: a
whitelist signed by the test ANS (and verified), the Pro Santé Connect simulator with this box's
client registered (mTLS with a software test key), and a KOS stored as the publisher stores it.

The end-to-end test (tests/trust/test_peer_access.py) runs the same through a real box, its TLS
gateway and token keys; these are for measuring and for cases that need control of timing.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from appliance import config
from appliance.keys.certs import load_pem_certificates
from appliance.psc.client import PscClient
from appliance.trust import Whitelist, verify
from tests.dmp.pki import name, pem, write_key
from tests.peers.ans.server import AnsPeer
from tests.peers.ans.signer import domain_for_certificate
from tests.peers.psc.launcher import Psc, start_psc

BOX_CLIENT, PEER_CLIENT = "trustkit-box", "trustkit-peer"
PEER_DOMAIN = "77"


@dataclass
class Parts:
    whitelist: Whitelist
    psc: Psc
    psc_config: Any        # the box's [psc] section
    client_context: ssl.SSLContext
    peer_cert_header: str  # the peer's certificate as the TLS gateway passes it

    def checker(self) -> PscClient:
        """The box's PSC client, straight over mTLS (no gateway in-process)."""
        return PscClient(self.psc_config, aiohttp.TCPConnector(ssl=self.client_context),
                         lambda url: url)

    def token(self, **kw: Any) -> str:
        return str(self.psc.issue_token("radiologue", PEER_CLIENT, **kw)["access_token"])


def start(pki: Any, workdir: Path) -> Parts:
    """Peer = the test PKI's second structure. Stop with ``parts.psc.stop()``."""
    with AnsPeer.start(workdir / "ans") as ans:
        data = ans.signed([domain_for_certificate(pki.structures[1].auth_cert, PEER_DOMAIN,
                                                  "db2.test")])
        whitelist = verify(data, load_pem_certificates([ans.anchor]), revocation="off")
    psc = start_psc(pki, workdir / "psc")
    key = rsa.generate_private_key(65537, 2048)
    cert = pki.issue(key.public_key(), name(BOX_CLIENT, "499700367909006"), "tls-client")
    (workdir / "client.pem").write_bytes(pem(cert, x509.load_pem_x509_certificate(
        pki.org_ca.read_bytes())))
    write_key(workdir / "client.key", key)
    psc.register_client(BOX_CLIENT, ["https://db1.test/cb"], cert.subject.rfc4514_string())
    psc.register_client(PEER_CLIENT, ["https://db2.test/cb"], "CN=peer", audiences=[BOX_CLIENT])
    ctx = ssl.create_default_context(cafile=str(pki.bundle))
    ctx.load_cert_chain(workdir / "client.pem", workdir / "client.key")
    peer = x509.load_pem_x509_certificate(pki.structures[1].auth_cert.read_bytes())
    return Parts(whitelist, psc, config.PscConfig(enabled=True, discovery_url=psc.discovery_url,
                                                  client_id=BOX_CLIENT, ca_file=pki.bundle),
                 ctx, base64.b64encode(peer.public_bytes(Encoding.DER)).decode())


def store_publication(db: Any, study_uid: str, kos: bytes, kos_uid: str,
                      state: str = "published") -> None:
    """A KOS version as the publisher records it (a job and its publication row)."""
    with db.transaction() as c:
        job = c.execute("INSERT INTO jobs(kind, study_uid, state, payload, next_at, created_at,"
                        " updated_at) VALUES ('report', ?, 'done', '{}', 0, 0, 0)",
                        (study_uid,)).lastrowid
        c.execute("INSERT INTO publications(kos_sop_uid, study_uid, job_id, version, kos,"
                  " entry_uuid, state, created_at) VALUES (?,?,?,1,?,'urn:uuid:x',?,0)",
                  (kos_uid, study_uid, job, kos, state))


IGC_ORG_CRL = "igc-org"   # the name the ANS peer serves the test IGC-Santé ORG CA's CRL under


def auth_chain(pki: Any, structure: int, out: Path, *, crl_url: str | None,
               not_before: Any = None, not_after: Any = None) -> tuple[Path, x509.Certificate]:
    """A new certificate for structure ``structure``'s token auth key (the key never leaves the
    token: only its public half is certified), with a CRL distribution point as IGC-Santé
    certificates have; written with its issuing CA to ``out``."""
    from cryptography.hazmat.primitives.serialization import Encoding as Enc

    current = x509.load_pem_x509_certificate(pki.structures[structure].auth_cert.read_bytes())
    cert = pki.issue(current.public_key(), current.subject, "tls-client", crl_url=crl_url,
                     not_before=not_before, not_after=not_after)
    out.write_bytes(cert.public_bytes(Enc.PEM) + pki.org_ca.read_bytes())
    return out, cert


def box_config(ans: Any, psc: Any, client_id: str, ca_file: Path) -> str:
    """The ``[trust]`` and ``[psc]`` sections of a box that trusts this test ANS and PSC."""
    return f"""
[trust]
whitelist_url = "{ans.url}"
whitelist_anchors = ["{ans.anchor}"]
revocation = "require"

[psc]
enabled = true
discovery_url = "{psc.discovery_url}"
client_id = "{client_id}"
ca_file = "{ca_file}"
"""
