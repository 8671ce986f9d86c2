"""The box's PACS link against a real Orthanc: echo both ways, C-FIND, C-MOVE and C-GET into the
store, retries, clear errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, generate_uid

from appliance import config as C
from appliance.dicom.scp import DicomNode
from appliance.dicom.scu import PacsError, PacsLink, PacsUnavailable, RetrieveSummary
from appliance.generate import synthetic_study
from appliance.store import Store, StoredInstance
from tests.peers.orthanc import Orthanc

from .conftest import BOX_AET, dataset_bytes, run_tool, stored_files

pytestmark = pytest.mark.integration

Box = tuple[Store, DicomNode, PacsLink]


def _study(orthanc: Orthanc, tmp_path: Path, slices: int = 4, series: int = 2,
           **kw: object) -> tuple[str, list[Path]]:
    study_uid = generate_uid()
    files = synthetic_study("MR", slices, out_dir=tmp_path / study_uid[-8:], series=series,
                            study_uid=study_uid, **kw)  # type: ignore[arg-type]
    orthanc.upload(files)
    return study_uid, files


def _by_sop(files: list[Path]) -> dict[str, Path]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}


async def _collect(it: object) -> list[StoredInstance]:
    return [inst async for inst in it]  # type: ignore[attr-defined]


async def test_echo_both_ways(linked_box: Box, orthanc: Orthanc) -> None:
    _, node, link = linked_box
    await link.echo()
    assert link.health().details["last_contact"] == "ok"
    # Orthanc -> box, through the modality Orthanc knows the box as.
    assert await asyncio.to_thread(orthanc.post, "/modalities/box/echo", {}) is not None


async def test_find_study_by_uid_and_accession_then_series_and_instances(
        linked_box: Box, orthanc: Orthanc, tmp_path: Path) -> None:
    _, _, link = linked_box
    accession = "A" + generate_uid()[-10:]
    study_uid, files = _study(orthanc, tmp_path, slices=3, series=2, accession=accession,
                              patient_id="IPP-4242")
    (by_uid,) = await link.find_studies(study_uid=study_uid)
    assert by_uid.study_uid == study_uid and by_uid.accession_number == accession
    assert by_uid.modalities == ("MR",) and by_uid.num_series == 2 and by_uid.num_instances == 6
    assert by_uid.patient_id == "IPP-4242"
    assert "IPP-4242" not in repr(by_uid) and "DEMO" not in repr(by_uid)  # never in a log line
    (by_acc,) = await link.find_studies(accession=accession)
    assert by_acc.study_uid == study_uid

    series = await link.find_series(study_uid)
    assert len(series) == 2 and {s.num_instances for s in series} == {3}
    assert all(s.modality == "MR" for s in series)
    instances = await link.find_instances(study_uid)
    assert {i.sop_uid for i in instances} == set(_by_sop(files))
    assert {i.sop_class_uid for i in instances} == {"1.2.840.10008.5.1.4.1.1.4"}
    one = await link.find_instances(study_uid, series[0].series_uid)
    assert len(one) == 3 and all(i.series_uid == series[0].series_uid for i in one)

    assert await link.find_studies(study_uid=generate_uid()) == []


async def test_query_values_cannot_carry_wildcards(linked_box: Box) -> None:
    _, _, link = linked_box
    for bad in ("*", "1.2.3*", "1.2\\1.3", "", "1.2.a"):
        with pytest.raises(ValueError):
            link.retrieve_study(bad)
        with pytest.raises(ValueError):
            await link.find_studies(study_uid=bad)
    for bad_acc in ("A*", "A?", "A\\B", "X" * 17):
        with pytest.raises(ValueError):
            await link.find_studies(accession=bad_acc)
    with pytest.raises(ValueError):
        await link.find_studies()


async def test_c_move_study_into_the_store(linked_box: Box, orthanc: Orthanc,
                                          tmp_path: Path) -> None:
    store, _, link = linked_box
    study_uid, files = _study(orthanc, tmp_path, slices=5, series=2)
    retrieval = link.retrieve_study(study_uid)
    got = await _collect(retrieval)
    sent = _by_sop(files)
    assert {i.sop_uid for i in got} == set(sent)
    assert retrieval.summary == RetrieveSummary(status=0, completed=10, failed=0, warning=0,
                                                received=10)
    for inst in got:
        assert inst.study_uid == study_uid and inst.path.is_file()
        assert dataset_bytes(inst.path.read_bytes()) == dataset_bytes(sent[inst.sop_uid].read_bytes())
    assert not list(store.tmp_dir.iterdir())


async def test_c_move_series_yields_only_that_series(linked_box: Box, orthanc: Orthanc,
                                                    tmp_path: Path) -> None:
    store, _, link = linked_box
    study_uid, files = _study(orthanc, tmp_path, slices=3, series=2)
    series = await link.find_series(study_uid)
    target = series[1].series_uid
    retrieval = link.retrieve_series(study_uid, target)
    got = await _collect(retrieval)
    assert len(got) == 3 and all(i.series_uid == target for i in got)
    assert retrieval.summary is not None and retrieval.summary.completed == 3
    assert len(stored_files(store)) == 3


@pytest.mark.parametrize("linked_box", [{"retrieve": "c-get"}], indirect=True)
async def test_c_get_study_keeps_transfer_syntax(linked_box: Box, orthanc: Orthanc,
                                                 tmp_path: Path) -> None:
    store, _, link = linked_box
    plain_uid, plain = _study(orthanc, tmp_path, slices=3, series=1)
    try:
        jls_uid, jls = _study(orthanc, tmp_path, slices=2, series=1,
                              transfer_syntax=JPEGLSLossless)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no JPEG-LS encoder: {e}")
    for study_uid, files in ((plain_uid, plain), (jls_uid, jls)):
        retrieval = link.retrieve_study(study_uid)
        got = await _collect(retrieval)
        sent = _by_sop(files)
        assert {i.sop_uid for i in got} == set(sent)
        assert retrieval.summary is not None
        assert retrieval.summary.completed == len(files) and retrieval.summary.failed == 0
        for inst in got:
            original = pydicom.dcmread(sent[inst.sop_uid], stop_before_pixels=True)
            assert inst.transfer_syntax == original.file_meta.TransferSyntaxUID
            assert (dataset_bytes(inst.path.read_bytes())
                    == dataset_bytes(sent[inst.sop_uid].read_bytes()))


async def test_leaving_early_aborts_and_the_link_stays_usable(linked_box: Box, orthanc: Orthanc,
                                                              tmp_path: Path) -> None:
    _, _, link = linked_box
    study_uid, _ = _study(orthanc, tmp_path, slices=20, series=1)
    retrieval = link.retrieve_study(study_uid)
    async for _inst in retrieval:
        break
    await retrieval.aclose()
    assert retrieval.summary is None
    await link.echo()


async def test_unreachable_pacs_raises_after_bounded_retries(
        make_config: Callable[..., C.Config], store: Store) -> None:
    from tests.conftest import free_port

    cfg = make_config(pacs={"port": free_port(), "retries": 2, "retry_backoff": 0.2,
                            "timeout": 2.0})
    link = PacsLink(cfg, store)
    t0 = time.monotonic()
    with pytest.raises(PacsUnavailable, match="failed"):
        await link.echo()
    assert time.monotonic() - t0 >= 0.2 + 0.4  # two retries, backoff doubling
    with pytest.raises(PacsUnavailable):
        await link.find_studies(study_uid=generate_uid())
    with pytest.raises(PacsUnavailable):
        await _collect(link.retrieve_study(generate_uid()))
    assert link.health().details["last_contact"] == "unreachable"
    await link.stop()


async def test_c_move_to_a_box_that_is_not_listening_is_a_pacs_error(
        linked_box: Box, orthanc: Orthanc, tmp_path: Path) -> None:
    store, node, link = linked_box
    study_uid, _ = _study(orthanc, tmp_path, slices=2, series=1)
    await node.stop()  # Orthanc's sub-association to the box now fails
    retrieval = link.retrieve_study(study_uid)
    with pytest.raises(PacsError) as err:
        await _collect(retrieval)
    assert err.value.status != 0 and stored_files(store) == []


async def test_pacs_refuses_an_unknown_box(pacs_config: Callable[..., C.Config],
                                          orthanc: Orthanc, store: Store,
                                          tmp_path: Path) -> None:
    """A C-MOVE destination the PACS does not know: a clear failure, nothing stored."""
    study_uid, _ = _study(orthanc, tmp_path, slices=1, series=1)
    cfg = pacs_config()
    cfg = dataclasses.replace(cfg, dicom=dataclasses.replace(cfg.dicom, ae_title="STRANGERBOX"))
    link = PacsLink(cfg, store)
    with pytest.raises(PacsError):
        await _collect(link.retrieve_study(study_uid))
    await link.stop()


async def test_dcmtk_movescu_through_orthanc_into_the_box(linked_box: Box, orthanc: Orthanc,
                                                          tmp_path: Path) -> None:
    """The box as a plain C-MOVE destination for a third party (DCMTK movescu)."""
    store, _, _ = linked_box
    study_uid, files = _study(orthanc, tmp_path, slices=3, series=1)
    rc, out = await run_tool("movescu", "-S", "-aet", "ADMIN", "-aec", orthanc.aet, "-aem",
                             BOX_AET, "-k", "QueryRetrieveLevel=STUDY", "-k",
                             f"StudyInstanceUID={study_uid}", "127.0.0.1",
                             str(orthanc.dicom_port))
    assert rc == 0, out
    assert len(stored_files(store)) == len(files)
