"""Every fault the simulator injects (through its HTTP control endpoint) is classified right, and
hostile answers give clear errors, never a crash; the next request works."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from appliance.dmp import (
    DmpClient,
    DmpPermanentError,
    DmpResponseError,
    DmpRetryableError,
    TokenSigner,
)
from tests.dmp.conftest import PATIENT, client_context


async def control(pki, simulator, fault: dict) -> None:
    ctx = client_context(pki)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"https://127.0.0.1:{simulator.port}/_control/faults", json=fault,
                          ssl=ctx) as r:
            assert r.status == 200, await r.text()


@pytest.mark.parametrize("fault, kind, words", [
    ({"kind": "status", "status": 503}, DmpRetryableError, "HTTP 503"),
    ({"kind": "status", "status": 502}, DmpRetryableError, "HTTP 502"),
    ({"kind": "reset"}, DmpRetryableError, "connection failed"),
    ({"kind": "registry_error", "code": "XDSRegistryBusy", "text": "occupé"}, DmpRetryableError,
     "XDSRegistryBusy"),
    ({"kind": "soap_fault", "code": "dmp:ERREUR_TECHNIQUE", "text": "indisponible",
      "receiver": True}, DmpRetryableError, "ERREUR_TECHNIQUE"),
    ({"kind": "status", "status": 404}, DmpPermanentError, "HTTP 404"),
    ({"kind": "bomb"}, DmpResponseError, "DOCTYPE"),
    ({"kind": "wrong_namespace"}, DmpResponseError, "not a SOAP 1.2 Envelope"),
    ({"kind": "truncated_mtom"}, DmpResponseError, "truncated MTOM"),
    ({"kind": "garbage"}, DmpResponseError, "malformed XML"),
    ({"kind": "oversized", "bytes": 2 * 1024 * 1024}, DmpResponseError, "exceeds the limit"),
])
async def test_fault_is_classified(dmp_config, signer, pki, simulator, make_submission, fault,
                                   kind, words):
    cfg = replace(dmp_config, max_response_bytes=1024 * 1024)
    async with DmpClient(cfg, signer, client_context(pki)) as c:
        await control(pki, simulator, {**fault, "service": "repository"})
        with pytest.raises(kind) as e:
            await c.publish(make_submission())
        assert words in str(e.value)
        if kind is not DmpRetryableError:
            assert not isinstance(e.value, DmpRetryableError)
        assert simulator.entries == {}          # nothing stored half
        s = make_submission()
        await c.publish(s)                      # and the next request goes through
        assert s.kos_uid in simulator.by_unique


async def test_registry_error_code_and_text_reach_the_caller(client, pki, simulator,
                                                            make_submission):
    await control(pki, simulator, {"kind": "registry_error", "code": "XDSRepositoryMetadataError",
                                   "text": "Le format du document est inconnu"})
    with pytest.raises(DmpPermanentError) as e:
        await client.publish(make_submission())
    assert e.value.code == "XDSRepositoryMetadataError"
    assert e.value.text == "Le format du document est inconnu"
    assert e.value.errors[0].code == "XDSRepositoryMetadataError"


async def test_sender_soap_fault_is_permanent(client, pki, simulator, consumer):
    await control(pki, simulator, {"kind": "soap_fault", "code": "wsse:InvalidSecurity",
                                   "text": "VIHF invalide"})
    with pytest.raises(DmpPermanentError) as e:
        await client.find_documents(PATIENT, consumer)
    assert e.value.code == "InvalidSecurity" and e.value.text == "VIHF invalide"


async def test_timeout_is_retryable(dmp_config, signer, pki, simulator, consumer):
    cfg = replace(dmp_config, timeout=0.3)
    async with DmpClient(cfg, signer, client_context(pki)) as c:
        await control(pki, simulator, {"kind": "latency", "seconds": 1.5})
        with pytest.raises(DmpRetryableError, match="timeout"):
            await c.find_documents(PATIENT, consumer)


async def test_connection_refused_is_retryable(dmp_config, signer, pki, simulator, consumer):
    await simulator.stop()
    async with DmpClient(dmp_config, signer, client_context(pki)) as c:
        with pytest.raises(DmpRetryableError, match="connection failed"):
            await c.find_documents(PATIENT, consumer)


async def test_client_without_certificate_is_refused(dmp_config, signer, pki, simulator,
                                                     consumer):
    # With TLS 1.3 the server's refusal arrives after the handshake, as a reset: the client cannot
    # tell it from a network glitch, so it is retryable (and the outbox's attempts are bounded).
    async with DmpClient(dmp_config, signer, client_context(pki, with_cert=False)) as c:
        with pytest.raises(DmpRetryableError):
            await c.find_documents(PATIENT, consumer)
    assert simulator.stats == {}   # the request never reached a service


async def test_untrusted_server_is_refused(dmp_config, signer, tmp_path, consumer):
    import ssl

    from cryptography.hazmat.primitives.asymmetric import rsa

    from appliance.keys.testpki import _ca
    from tests.dmp.pki import name, pem
    key = rsa.generate_private_key(65537, 2048)
    other = tmp_path / "other-ca.pem"
    other.write_bytes(pem(_ca(name("OTHER CA"), key, None, key, 0)))
    async with DmpClient(dmp_config, signer, ssl.create_default_context(cafile=str(other))) as c:
        with pytest.raises(DmpPermanentError) as e:
            await c.find_documents(PATIENT, consumer)
    assert e.value.code == "TlsError"


def test_signer_algorithm_must_be_known(token):
    with pytest.raises(ValueError):
        TokenSigner(token, "sign", "rsa-md5")
