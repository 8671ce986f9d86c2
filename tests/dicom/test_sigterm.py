"""SIGTERM to a real ``drimbox run`` while storescu is sending: a quick, clean exit, whole files only."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from appliance import config as C
from appliance.generate import synthetic_study
from appliance.store import Store
from tests.e2e.conftest import start_box, stop_box

from .conftest import DCMTK_ENV, MODALITY_AET, dataset_bytes, need

pytestmark = pytest.mark.integration


def test_sigterm_during_a_transfer_exits_cleanly(tmp_path: Path) -> None:
    need("storescu")
    files = synthetic_study("CT", 80, out_dir=tmp_path / "src")
    box = start_box(tmp_path / "box", modalities=f'\nmodalities = [{{ ae_title = "{MODALITY_AET}" }}]')
    instances = box.data_dir / "instances"
    sender = subprocess.Popen(["storescu", "-aet", MODALITY_AET, "-aec", box.ae_title, "-pdu",
                               "16384", "127.0.0.1", str(box.dicom), *map(str, files)],
                              env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(instances.glob("*/*/*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(instances.glob("*/*/*.dcm")), box.logs()
        t0 = time.monotonic()
        box.proc.send_signal(signal.SIGTERM)
        rc = box.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 10
        assert rc == 0, box.logs()
        assert sender.wait(timeout=30) != 0  # the sender saw the association end
    finally:
        if sender.poll() is None:
            sender.kill()
        stop_box(box)

    on_disk = sorted(instances.glob("*/*/*.dcm"))
    assert 1 <= len(on_disk) < len(files)
    assert not list((instances / ".tmp").glob("*"))  # no half-written file left behind
    sent = {dataset_bytes(f.read_bytes()) for f in files}
    assert all(dataset_bytes(p.read_bytes()) in sent for p in on_disk)  # whole instances only
    store = Store(C.load(box.config_path))
    store.open()
    try:
        row = store.db.query_one("SELECT COUNT(*) AS n FROM instances")
        assert row is not None and row["n"] == len(on_disk)  # every file indexed, no orphan
    finally:
        store.close()
