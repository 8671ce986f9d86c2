"""The source role against real peers: Orthanc (PACS), the strict DMP simulator (a separate
process over mTLS), and a real ``drimbox run`` whose keys are on SoftHSM. The ``pacs`` and
``dmp_simulator`` fixtures are in tests/conftest.py (the TLS gateway tests use them too)."""

from __future__ import annotations

from tests.peers.network import (  # noqa: F401  (re-exported for the test modules)
    Simulator,
    SourceBox,
    sop_uids,
    source_box_config,
    start_simulator,
    study_for,
)
