"""Fixtures for the DICOM node and PACS link: a box store and SCP, DCMTK tools, a private Orthanc."""

from __future__ import annotations

import asyncio
import io
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from appliance import config as C
from appliance.dicom.scp import DicomNode
from appliance.dicom.scu import PacsLink
from appliance.store import Store
from tests.peers import orthanc as orthanc_peer

BOX_AET = "DRIMBOX"
MODALITY_AET = "STORESCU"  # the one modality the test boxes allow besides the PACS

# Debian's DCMTK leaves Nagle on unless told (~45 ms per message).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"DCMTK tool {tool!r} is not installed (Debian package 'dcmtk')")
    return path


async def run_tool(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run a DCMTK tool with TCP_NODELAY; returns (exit code, stdout+stderr)."""
    need(args[0])
    proc = await asyncio.create_subprocess_exec(*args, env=DCMTK_ENV,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return int(proc.returncode or 0), out.decode(errors="replace")


def dataset_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 file without preamble and file meta group (which DIMSE does
    not carry: the receiver rebuilds it), i.e. exactly the bytes that went over the wire."""
    assert data[128:132] == b"DICM"
    # (0002,0000) UL group length, explicit VR LE: tag(4) VR(2) len(2) value(4).
    assert data[132:136] == b"\x02\x00\x00\x00"
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len:]


def store_rq_pdus(sop_class_uid: str, sop_instance_uid: str, data_set: bytes, *,
                  context_id: int = 1, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs a requestor sends for one C-STORE, as pynetdicom encodes them."""
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class_uid, sop_instance_uid
    req.Priority = 2
    req.DataSet = io.BytesIO(data_set)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    out = []
    for primitive in msg.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return out


def stored_files(store: Store) -> list[Path]:
    """Every file under the instances tree, temp area included (must hold no leftovers), but
    not the empty temp files the store makes ahead of need."""
    return sorted(p for p in store.root.rglob("*") if p.is_file()
                  and not (p.parent == store.spare_dir and p.stat().st_size == 0))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., C.Config]:
    """A box config on free ports: ``make_config(dicom={...}, pacs={...}, store={...})``."""

    def make(**sections: dict[str, Any]) -> C.Config:
        cfg = C.parse(C.example(data_dir=str(tmp_path / "box")))
        dicom = dataclasses.replace(cfg.dicom, port=0, ae_title=BOX_AET,
                                    modalities=(C.Modality(ae_title=MODALITY_AET),),
                                    network_timeout=5.0)
        pacs = dataclasses.replace(cfg.pacs, timeout=10.0, retrieve_timeout=60.0, retries=1,
                                   retry_backoff=0.1)
        parts = {"dicom": dicom, "pacs": pacs, "store": cfg.store}
        for name, changes in sections.items():
            parts[name] = dataclasses.replace(parts[name], **changes)
        return dataclasses.replace(cfg, **parts)

    return make


@pytest.fixture
def config(make_config: Callable[..., C.Config]) -> C.Config:
    return make_config()


@pytest.fixture
def store(config: C.Config) -> Iterator[Store]:
    s = Store(config, synchronous="NORMAL")
    s.open()
    yield s
    s.close()


@pytest.fixture
async def node(config: C.Config, store: Store) -> AsyncIterator[DicomNode]:
    n = DicomNode(config, store)
    await n.start()
    yield n
    await n.stop()


@pytest.fixture(scope="session")
def orthanc() -> Iterator[orthanc_peer.Orthanc]:
    """One private Orthanc for the session; tests point its "box" modality at their box."""
    reason = orthanc_peer.available()
    if reason:
        pytest.skip(reason)
    with orthanc_peer.Orthanc(aet="PACS", modalities={"box": (BOX_AET, "127.0.0.1", 1)}) as o:
        yield o


@pytest.fixture
def pacs_config(make_config: Callable[..., C.Config],
                orthanc: orthanc_peer.Orthanc) -> Callable[..., C.Config]:
    """``pacs_config(retrieve="c-get")``: a box config whose PACS is the test Orthanc."""

    def make(**pacs: Any) -> C.Config:
        return make_config(pacs={"ae_title": orthanc.aet, "host": "127.0.0.1",
                                 "port": orthanc.dicom_port, **pacs})

    return make


@pytest.fixture
async def linked_box(pacs_config: Callable[..., C.Config], orthanc: orthanc_peer.Orthanc,
                     request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, DicomNode,
                                                                            PacsLink]]:
    """A box (store + SCP + PACS link) that Orthanc knows as modality "box". Pass PACS settings
    with ``@pytest.mark.parametrize("linked_box", [{"retrieve": "c-get"}], indirect=True)``."""
    cfg = pacs_config(**getattr(request, "param", {}))
    st = Store(cfg, synchronous="NORMAL")
    st.open()
    n = DicomNode(cfg, st)
    await n.start()
    orthanc.set_modality("box", BOX_AET, "127.0.0.1", n.port)
    link = PacsLink(cfg, st)
    await link.start()
    yield st, n, link
    await link.stop()
    await n.stop()
    st.close()
