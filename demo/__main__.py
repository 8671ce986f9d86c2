"""Demo network on loopback: a PACS with a study, a DRIMbox linked to it, the URLs to open.

Grows with each capability toward: PACS, source box, consumer box, simulated national services,
viewer. ``--check`` runs every step, verifies it and exits (a test runs it that way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from appliance import config as config_mod
from appliance.generate import synthetic_study

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.conftest import dicom_only  # noqa: E402
from tests.peers.orthanc import Orthanc, available  # noqa: E402  (the real PACS peer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def http_json(url: str, method: str = "GET", body: dict | None = None,
              token: str | None = None, timeout: float = 600) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def box_config(data_dir: Path, name: str, ae: str, pacs: Orthanc) -> tuple[str, dict[str, int]]:
    ports = {"dicom": free_port(), "http": free_port(), "hl7": free_port()}
    text = (dicom_only(config_mod.example(str(data_dir)))
            .replace('name = "drimbox-1"', f'name = "{name}"')
            .replace('ae_title = "DRIMBOX"', f'ae_title = "{ae}"')
            .replace("port = 11112", f"port = {ports['dicom']}")
            .replace("port = 2575", f"port = {ports['hl7']}")
            .replace("port = 8443", f"port = {ports['http']}")
            .replace("https://db1.example.org:8443", f"http://127.0.0.1:{ports['http']}")
            .replace('ae_title = "PACS"', f'ae_title = "{pacs.aet}"')
            .replace("port = 4242", f"port = {pacs.dicom_port}"))
    return text, ports


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the box exited with code {proc.returncode}")
        try:
            status, body = http_json(url, timeout=2)
            if status == 200:
                return body  # type: ignore[return-value]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the box did not become healthy within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    ap.add_argument("--check", action="store_true", help="run every step, verify, exit")
    ap.add_argument("--slices", type=int, default=60, help="slices of the demo CT")
    ap.add_argument("--workdir", type=Path, help="keep state here (default: a temp dir)")
    args = ap.parse_args(argv)

    reason = available()
    if reason:
        print(f"demo: {reason}; run scripts/setup.sh first", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="drimbox-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    pacs: Orthanc | None = None
    try:
        box_port = free_port()
        step("starting the site PACS (Orthanc)")
        pacs = Orthanc(aet="PACS", modalities={"drimbox": ("DRIMBOX", "127.0.0.1", box_port)},
                       workdir=work / "orthanc").start()
        step(f"loading a synthetic CT of {args.slices} slices into the PACS")
        files = synthetic_study("CT", args.slices, out_dir=work / "study",
                                accession="DEMO0001", patient_id="IPP-DEMO-1")
        pacs.upload(files)
        import pydicom

        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID

        step("starting the source DRIMbox")
        text, ports = box_config(work / "box1", "drimbox-source", "DRIMBOX", pacs)
        text = text.replace(f"port = {ports['dicom']}", f"port = {box_port}")
        ports["dicom"] = box_port
        cfg_path = work / "box1.toml"
        cfg_path.write_text(text)
        log = open(work / "box1.log", "w")
        box = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "-c", str(cfg_path)],
                               stderr=log, stdout=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(box)
        base = f"http://127.0.0.1:{ports['http']}"
        health = wait_healthy(f"{base}/healthz", box)
        token = (work / "box1" / "admin-token").read_text().strip()

        step("the box retrieves the study from the PACS")
        t0 = time.time()
        status, result = http_json(f"{base}/api/admin/pacs/retrieve", "POST",
                                   {"study_uid": study_uid}, token=token)
        if status != 200:
            raise SystemExit(f"retrieve failed: HTTP {status}: {result}")
        elapsed = time.time() - t0
        received = result["received"]  # type: ignore[index]
        print(f"    {received} instances in {elapsed:.1f} s")

        qido = f"{base}/dicom-web/studies?StudyInstanceUID={study_uid}"
        status, studies = http_json(qido)
        ok = status == 200 and isinstance(studies, list) and len(studies) == 1
        status, instances = http_json(f"{base}/dicom-web/studies/{study_uid}/series")
        ok = ok and received == len(files)

        print()
        print("Demo network (all on 127.0.0.1):")
        print(f"  PACS (Orthanc)    DICOM {pacs.dicom_port}  web {pacs.url}")
        print(f"  DRIMbox (source)  DICOM {ports['dicom']}  HL7 {ports['hl7']}  HTTP {base}")
        print(f"  health            {base}/healthz  ({', '.join(health['components'])})")
        print(f"  QIDO-RS           {qido}")
        print(f"  series            {base}/dicom-web/studies/{study_uid}/series")
        print(f"  admin token       {work / 'box1' / 'admin-token'}")
        print(f"  logs              {work / 'box1.log'}")
        if not ok:
            print("demo: verification FAILED (see the logs)", file=sys.stderr)
            return 1
        if args.check:
            print("demo check: every step worked")
            return 0
        print("\nPress Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if pacs is not None:
            pacs.stop()
        if args.workdir is None and args.check:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
