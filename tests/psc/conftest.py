"""Pro Santé Connect: the strict simulator (``tests.peers.psc``) in its own process, and a real
TLS gateway process started from a box configuration whose keys are on the test PKI's SoftHSM
token, so the box reaches PSC with mTLS exactly as in production."""

from __future__ import annotations

import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from appliance import config as config_mod
from appliance.psc.client import PscClient, new_pkce
from appliance.tlsgateway import contract
from tests.peers.network import with_test_keys
from tests.peers.psc import Psc, start_psc

BOX_CLIENT = "drimbox-test-1"
REDIRECT = "https://db1.test:8443/api-conso/auth/redirect"
LOGGED_OUT = "https://db1.test:8443/logged-out"


def subject_dn(cert_pem: Path) -> str:
    return x509.load_pem_x509_certificate(cert_pem.read_bytes()).subject.rfc4514_string()


@pytest.fixture(scope="module")
def psc(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Psc]:
    from tests.dmp.pki import provider_missing

    reason = provider_missing()
    if reason:
        pytest.skip(reason)
    sim = start_psc(pki, tmp_path_factory.mktemp("psc-sim"))
    # The box: authenticated by its ORG auth certificate (the one on the token).
    sim.register_client(BOX_CLIENT, [REDIRECT], subject_dn(pki.structures[0].auth_cert),
                        post_logout_redirect_uris=[LOGGED_OUT])
    yield sim
    sim.stop()


@dataclass
class PscBox:
    config: config_mod.Config
    config_path: Path
    plan: contract.Plan

    def client(self, **overrides: Any) -> PscClient:
        cfg = self.config.psc
        if overrides:
            import dataclasses
            cfg = dataclasses.replace(cfg, **overrides)
        return PscClient(cfg, aiohttp.UnixConnector(path=str(self.plan.egress_socket),
                                                    force_close=True),
                         lambda url: contract.egress_url("psc", url))


def psc_box_config(d: Path, pki: Any, psc: Psc, *, timeout: float = 3.0) -> Path:
    """A box configuration with its keys on the test PKI's first token and ``[psc]`` on the
    simulator (the DMP section points nowhere: these tests never reach it)."""
    text = with_test_keys(config_mod.example(str(d / "data")), pki,
                          "https://127.0.0.1:9/si-dmp-server/v2/services")
    text += (f'\n[psc]\nenabled = true\ndiscovery_url = "{psc.discovery_url}"\n'
             f'client_id = "{BOX_CLIENT}"\nca_file = "{pki.bundle}"\ntimeout = {timeout}\n'
             'introspection_cache = 30\n')
    path = d / "box.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def box(pki: Any, psc: Psc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PscBox]:
    from tests.gateway.conftest import start_gateway

    d = tmp_path_factory.mktemp("pscbox")
    path = psc_box_config(d, pki, psc)
    gw = start_gateway(path, {**os.environ, "SOFTHSM2_CONF": str(pki.softhsm_conf)})
    cfg = config_mod.load(path)
    try:
        yield PscBox(cfg, path, gw.plan)
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "psc" in request.fixturenames:
        sim = request.getfixturevalue("psc")
        sim.clear_faults()
        sim.settings(code_lifetime=60, access_token_lifetime=120)


@pytest.fixture
async def client(box: PscBox) -> AsyncIterator[PscClient]:
    c = box.client()
    yield c
    await c.close()


def browser(pki: Any, cert: tuple[Path, Path] | None = None) -> aiohttp.ClientSession:
    """An HTTPS client of the simulator (a browser: no client certificate unless ``cert``)."""
    ctx = ssl.create_default_context(cafile=str(pki.bundle))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


@dataclass
class Authorization:
    code: str
    state: str
    nonce: str
    verifier: str


def authorize_url(psc: Psc, **overrides: Any) -> tuple[str, str, str, str]:
    """``(url, state, nonce, verifier)`` of an authorization request as the box makes it."""
    verifier, challenge = new_pkce()
    state, nonce = os.urandom(8).hex(), os.urandom(8).hex()
    params = {"response_type": "code", "client_id": BOX_CLIENT, "redirect_uri": REDIRECT,
              "scope": "openid scope_all", "acr_values": "eidas1", "state": state,
              "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(overrides)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return psc.issuer + "/protocol/openid-connect/auth?" + query, state, nonce, verifier


async def pick_user(pki: Any, url: str, user: str = "radiologue") -> dict[str, str]:
    """A professional's browser: the authorize page, the test user picked; the query of the
    redirect back to the box."""
    async with browser(pki) as s:
        async with s.get(url, allow_redirects=False) as r:
            assert r.status == 200, await r.text()
            page = await r.text()
        assert 'name="user"' in page
        form = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)) | {"user": user}
        async with s.post(url.split("?")[0], data=form, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            location = r.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


async def login(pki: Any, psc: Psc, user: str = "radiologue") -> Authorization:
    url, state, nonce, verifier = authorize_url(psc)
    query = await pick_user(pki, url, user)
    assert query["state"] == state
    return Authorization(query["code"], state, nonce, verifier)
