"""Real-reader tests (a CPS card or an HSM on the bench). Not collected by the default run
(testpaths = tests) and marked ``hardware``; run them on the bench with:

    DRIMBOX_HIL_MODULE=/opt/santesocial/CPS/lib/libcps3_pkcs11_lux.so \
    DRIMBOX_HIL_TOKEN="<token label>" DRIMBOX_HIL_PIN_FILE=/path/to/pin \
    DRIMBOX_HIL_KEY="<private key label>" \
    .venv/bin/python -m pytest hil -m hardware

Optional: DRIMBOX_HIL_RSA_PSS=0 for cards without RSA-PSS (CPS3), DRIMBOX_HIL_REPLUG=1 to run the
interactive pull-out / put-back test. Every test skips with the reason when no reader or card is
there. The PIN file must be mode 0600; a wrong PIN is presented at most once (max_pin_attempts=1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class RealToken:
    module: Path
    token_label: str
    pin_file: Path
    key_label: str
    rsa_pss: bool


@pytest.fixture(scope="session")
def real_token() -> RealToken:
    module = os.environ.get("DRIMBOX_HIL_MODULE")
    if not module or not Path(module).is_file():
        pytest.skip("no real token: set DRIMBOX_HIL_MODULE (and _TOKEN, _PIN_FILE, _KEY)")
    from appliance.keys import module as p11module

    lib = p11module.load(module)
    slots = lib.get_slots(token_present=False)
    if not slots:
        pytest.skip(f"no reader seen by {module}")
    if not lib.get_slots(token_present=True):
        pytest.skip(f"no card in the readers seen by {module}")
    missing = [v for v in ("DRIMBOX_HIL_TOKEN", "DRIMBOX_HIL_PIN_FILE", "DRIMBOX_HIL_KEY")
               if not os.environ.get(v)]
    if missing:
        pytest.skip(f"set {', '.join(missing)}")
    return RealToken(Path(module), os.environ["DRIMBOX_HIL_TOKEN"],
                 Path(os.environ["DRIMBOX_HIL_PIN_FILE"]), os.environ["DRIMBOX_HIL_KEY"],
                 os.environ.get("DRIMBOX_HIL_RSA_PSS", "1") != "0")
