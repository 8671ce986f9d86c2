"""A private Orthanc (Debian package) on loopback, the site PACS of the tests and benchmarks.

Own temporary storage, free DICOM and HTTP ports, the DICOMweb plugin, files stored uncompressed,
every DIMSE service allowed, and one declared modality per box AE so C-MOVE can reach the box.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# Debian's DCMTK-based Orthanc leaves Nagle on unless told otherwise (~45 ms per DIMSE message).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> str | None:
    """None when Orthanc can run here, else the reason it cannot (for pytest.skip)."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (Debian package 'orthanc')"
    if not DICOMWEB_PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is missing ({DICOMWEB_PLUGIN}; package orthanc-dicomweb)"
    return None


class Orthanc:
    """``with Orthanc(modalities={"box": ("DRIMBOX", "127.0.0.1", 11112)}) as pacs: ...``"""

    def __init__(self, aet: str = "PACS", modalities: dict[str, tuple[str, str, int]] | None = None,
                 workdir: Path | None = None, max_pdu: int = 131072) -> None:
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.max_pdu = max_pdu
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.dicom_port = 0
        self.http_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "Name": "test-pacs",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 30,
            "MaximumPduLength": self.max_pdu,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowFindWorklist": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {name: self._modality(*m) for name, m in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "SaveJobs": False,
            "StableAge": 1,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "StorageAccessOnFind": "Always",
            "OverwriteInstances": True,
        }

    @staticmethod
    def _modality(aet: str, host: str, port: int) -> dict[str, Any]:
        return {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                "AllowGet": True, "AllowMove": True, "AllowStore": True}

    def start(self, timeout: float = 30.0) -> Orthanc:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        (self.dir / "storage").mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port can be taken by someone else before Orthanc binds
            self.dicom_port, self.http_port = _free_port(), _free_port()
            cfg = self.dir / "orthanc.json"
            cfg.write_text(json.dumps(self._config(), indent=2))
            log = open(self.dir / "orthanc.log", "ab")
            self._proc = subprocess.Popen([ORTHANC, "--logdir=" + str(self.dir), str(cfg)],
                                          stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
            log.close()
            if self._wait_ready(timeout):
                return self
            self._kill()
        raise RuntimeError(f"Orthanc did not start; see {self.dir}/orthanc.log:\n"
                           + self.log_tail())

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / "orthanc.log").read_text(errors="replace")
                             .splitlines()[-lines:])
        except OSError:
            return ""

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- REST helpers ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body else {})
        with urllib.request.urlopen(req, timeout=60) as rsp:
            data = rsp.read()
        ctype = rsp.headers.get("Content-Type", "")
        return json.loads(data) if data and "json" in ctype else data

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self._request("POST", path, json.dumps(payload).encode())

    def upload(self, files: list[Path] | list[bytes]) -> list[str]:
        """Store Part 10 files through the REST API; returns Orthanc's instance ids."""
        ids = []
        for f in files:
            data = f if isinstance(f, bytes) else Path(f).read_bytes()
            ids.append(self._request("POST", "/instances", data, "application/dicom")["ID"])
        return ids

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Main tags of each instance of one study (empty when the study is absent)."""
        found = self.post("/tools/lookup", study_uid) if study_uid else []
        for item in found:
            if item.get("Type") == "Study":
                return list(self.get(f"/studies/{item['ID']}/instances"))
        return []

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

    def set_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or move) a modality at run time, e.g. a box that bound port 0."""
        self.modalities[name] = (aet, host, port)
        body = json.dumps(self._modality(aet, host, port)).encode()
        self._request("PUT", f"/modalities/{name}", body)

    def delete_all(self) -> None:
        for pid in self.get("/patients"):
            self._request("DELETE", f"/patients/{pid}")
