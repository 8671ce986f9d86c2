"""``contract.plan``: which upstreams a box's gateway may reach (default deny)."""

from __future__ import annotations

from pathlib import Path

from appliance import config as config_mod
from appliance.tlsgateway import contract


def _config(tmp_path: Path, extra: str, dmp: bool = True) -> config_mod.Config:
    text = config_mod.example(str(tmp_path / "data"))
    if not dmp:
        text = text.replace('[dmp]\n', '[dmp]\nenabled = false\n')
    return config_mod.parse(text + extra, base=tmp_path)


PSC = """
[psc]
enabled = true
discovery_url = "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration"
client_id = "drimbox-1"
ca_file = "/etc/drimbox/psc-ca.pem"
timeout = 4.5
"""


def test_psc_upstream_is_the_origin_of_the_discovery_url(tmp_path: Path) -> None:
    plan = contract.plan(_config(tmp_path, PSC))
    assert set(plan.upstreams) == {"dmp", "psc"}
    psc = plan.upstreams["psc"]
    assert psc.origin == "https://auth.bas.psc.esante.gouv.fr:443"
    assert psc.ca_file == Path("/etc/drimbox/psc-ca.pem")
    assert psc.timeout == 4.5
    assert plan.needed
    assert contract.egress_url("psc", "https://auth.bas.psc.esante.gouv.fr/auth/realms/x/"
                               "protocol/openid-connect/token") == \
        "http://tls-gateway/psc/auth/realms/x/protocol/openid-connect/token"


def test_psc_alone_still_needs_the_gateway(tmp_path: Path) -> None:
    plan = contract.plan(_config(tmp_path, PSC, dmp=False))
    assert set(plan.upstreams) == {"psc"} and plan.needed


def test_no_psc_upstream_unless_enabled(tmp_path: Path) -> None:
    assert "psc" not in contract.plan(_config(tmp_path, "")).upstreams
    disabled = PSC.replace("enabled = true", "enabled = false")
    assert "psc" not in contract.plan(_config(tmp_path, disabled)).upstreams
