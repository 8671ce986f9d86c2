"""The box's link to the site PACS: C-ECHO, C-FIND, C-MOVE and C-GET as an async API.

pynetdicom is blocking, so each exchange runs on a small private thread pool. Retrieved
instances reach the store through the box's own SCP (C-MOVE) or through this association (C-GET);
either way the store's "stored" events tell :meth:`PacsLink.retrieve_study` what arrived, so the
caller gets each instance as soon as it is safely on disk.

Every query value is checked before it goes out: a UID must be a UID and an accession number may
not carry DICOM wildcards, so a caller can never turn "fetch this study" into "fetch everything".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydicom import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from appliance.component import Health
from appliance.config import Config
from appliance.store import Store, StoredInstance, valid_uid

from . import requestor
from .ingest import STORAGE_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES, ingest_result

log = logging.getLogger("appliance.dicom.pacs")


def ingest_status(store: Store, event: evt.Event) -> int | Dataset:
    """A C-STORE received on the link's own association (C-GET) into the store; its status."""
    status, comment = ingest_result(lambda: store.ingest_bytes(event.encoded_dataset()))
    if status == 0x0000:
        return status
    ds = Dataset()
    ds.Status, ds.ErrorComment = status, comment[:64]
    return ds


#: pynetdicom's DUL thread sleeps this long whenever it finds nothing to do (its default is 1 ms).
#: A C-GET's instances arrive on the link's own association, latency-bound: each waits several
#: such naps between PDUs and around the response. 0.2 ms measured ~1.3-1.8x faster on a
#: 300-slice CT (when the box's SCP was pynetdicom too) for about 5 % of a core more.
DUL_POLL_SECONDS = 0.0002


def tune_association(event: evt.Event) -> None:
    """On each new connection: TCP_NODELAY (Nagle plus delayed ACK stalls every DIMSE exchange
    by ~40 ms) and a shorter DUL poll interval."""
    dul = event.assoc.dul
    if hasattr(dul, "_run_loop_delay"):  # private in pynetdicom 3.0; harmless if it goes away
        dul._run_loop_delay = DUL_POLL_SECONDS
    sock = dul.socket
    if sock is not None and sock.socket is not None:
        try:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer already left; the association will notice
            pass



T = TypeVar("T")

_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers from 1 to 255


class PacsUnavailable(ConnectionError):
    """The PACS could not be reached, refused the association or stopped answering."""


class PacsError(RuntimeError):
    """The PACS answered with a failure status."""

    def __init__(self, status: int, comment: str = "", summary: RetrieveSummary | None = None):
        self.status = status
        self.comment = comment
        self.summary = summary
        super().__init__(f"PACS status 0x{status:04X}" + (f": {comment}" if comment else ""))


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    modalities: tuple[str, ...]
    num_series: int | None
    num_instances: int | None
    # Patient-level facts are needed by later roles (KOS, DMP) but must never reach a log line.
    patient_id: str = field(repr=False, default="")
    issuer_of_patient_id: str = field(repr=False, default="")
    patient_name: str = field(repr=False, default="")
    patient_birth_date: str = field(repr=False, default="")
    patient_sex: str = field(repr=False, default="")


@dataclass(frozen=True)
class SeriesMatch:
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    num_instances: int | None


@dataclass(frozen=True)
class InstanceMatch:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None


@dataclass(frozen=True)
class RetrieveSummary:
    """The PACS's final C-MOVE/C-GET counts, plus what the box actually stored."""

    status: int
    completed: int
    failed: int
    warning: int
    received: int
    failed_sop_uids: tuple[str, ...] = ()


def check_uid(value: str, what: str) -> str:
    """A query UID: digits and dots only (no wildcard, no list), at most 64 characters."""
    if not isinstance(value, str) or not valid_uid(value):
        raise ValueError(f"{what}: not a valid DICOM UID")
    return value


def check_accession(value: str) -> str:
    # SH, and a single value matched exactly: wildcards and the list separator are refused.
    if not value or len(value) > 16 or any(c in value for c in "*?\\") or not value.isprintable():
        raise ValueError("accession number: 1 to 16 printable characters, no '*', '?' or '\\'")
    return value


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    if v is None or v == "":
        return ""
    if isinstance(v, (list, tuple, MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:  # pydicom converts IS on access: "x" raises ValueError, "INF" OverflowError
        v = ds.get(keyword)
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    v = ds.get(keyword)
    if v is None or v == "":
        return ()
    if isinstance(v, str):
        return tuple(x for x in v.split("\\") if x)
    try:
        return tuple(str(x) for x in v if str(x))
    except TypeError:
        return (str(v),)


def study_match(d: Dataset) -> StudyMatch:
    """A STUDY-level C-FIND response as typed values (tolerant: a bad number becomes None)."""
    return StudyMatch(
        study_uid=_text(d, "StudyInstanceUID"), accession_number=_text(d, "AccessionNumber"),
        study_date=_text(d, "StudyDate"), study_time=_text(d, "StudyTime"),
        study_description=_text(d, "StudyDescription"),
        modalities=_multi(d, "ModalitiesInStudy"),
        num_series=_int(d, "NumberOfStudyRelatedSeries"),
        num_instances=_int(d, "NumberOfStudyRelatedInstances"),
        patient_id=_text(d, "PatientID"), issuer_of_patient_id=_text(d, "IssuerOfPatientID"),
        patient_name=_text(d, "PatientName"), patient_birth_date=_text(d, "PatientBirthDate"),
        patient_sex=_text(d, "PatientSex"))


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _is_pending(status: int) -> bool:
    return status in (0xFF00, 0xFF01)


def _is_success_or_warning(status: int) -> bool:
    return status == 0x0000 or (status & 0xF000) == 0xB000 or status == 0x0107


class _Abortable:
    """Lets the loop abort the association a worker thread is using (early close, timeout)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assoc: Association | _CancelTask | None = None
        self.cancelled = False

    def set(self, assoc: Association | _CancelTask | None) -> None:
        with self._lock:
            self._assoc = assoc
            if assoc is not None and self.cancelled:
                assoc.abort()

    def abort(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._assoc is not None:
                self._assoc.abort()
                if isinstance(self._assoc, Association):
                    # A local abort does not wake a thread blocked on the next DIMSE response
                    # (it would sit out the DIMSE timeout); (None, None) is what pynetdicom
                    # queues when the peer aborts, so the worker sees "no response" at once.
                    self._assoc.dimse.msg_queue.put((None, None))


class _CancelTask:
    """What :class:`_Abortable` aborts for a C-MOVE: its task, in the worker thread's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        self._loop, self._task = loop, task

    def abort(self) -> None:
        if self._task is not None:
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # that loop is already closed: the move is over
                pass


class Retrieval(AsyncIterator[StoredInstance]):
    """``async for inst in link.retrieve_study(uid)``; afterwards ``.summary`` holds the counts.

    Raises :class:`PacsError` at the end when the PACS reports a failure (the summary is then on
    the exception), :class:`PacsUnavailable` when it cannot be reached after the retries.
    Leaving the loop early aborts the retrieve.
    """

    def __init__(self, link: PacsLink, study_uid: str, series_uid: str | None) -> None:
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.summary: RetrieveSummary | None = None
        self._gen = link._retrieve(self)

    def __aiter__(self) -> Retrieval:
        return self

    async def __anext__(self) -> StoredInstance:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()


class PacsLink:
    """The SCU side of the box (a :class:`~appliance.component.Component` named ``pacs``)."""

    name = "pacs"

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        self._pool: ThreadPoolExecutor | None = None
        self._last: tuple[str, float] | None = None  # ("ok" | "unreachable" | "error", time)

    # -- Component ------------------------------------------------------------------------
    async def start(self) -> None:
        # The PACS being down must not stop the box from starting: nothing is contacted here.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pacs-scu")

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)

    def health(self) -> Health:
        details: dict[str, Any] = {"ae_title": self._config.pacs.ae_title,
                                   "host": self._config.pacs.host, "port": self._config.pacs.port}
        if self._last is not None:
            details["last_contact"] = self._last[0]
            details["last_contact_age_s"] = round(time.monotonic() - self._last[1], 1)
        # The link itself is always usable; an unreachable PACS is reported, not fatal.
        return Health(ready=self._pool is not None, status="ok" if self._pool else "stopped",
                      details=details)

    # -- public API -----------------------------------------------------------------------
    async def echo(self) -> None:
        """C-ECHO the PACS; raises :class:`PacsUnavailable` or :class:`PacsError`."""

        def work(abort: _Abortable) -> None:
            with self._association([build_context(Verification)], abort) as assoc:
                rsp = assoc.send_c_echo()
                self._check_final(rsp, "C-ECHO")

        await self._run(work, self._config.pacs.timeout)

    async def find_studies(self, *, study_uid: str | None = None, accession: str | None = None,
                           patient_id: str | None = None) -> list[StudyMatch]:
        """C-FIND at STUDY level by Study Instance UID, accession number and/or patient ID."""
        if study_uid is None and accession is None and patient_id is None:
            raise ValueError("find_studies needs study_uid, accession or patient_id")
        keys = {
            "StudyInstanceUID": "" if study_uid is None else check_uid(study_uid, "study_uid"),
            "AccessionNumber": "" if accession is None else check_accession(accession),
            "PatientID": "" if patient_id is None else self._check_patient_id(patient_id),
            "IssuerOfPatientID": "", "PatientName": "", "PatientBirthDate": "", "PatientSex": "",
            "StudyDate": "", "StudyTime": "", "StudyDescription": "", "ModalitiesInStudy": "",
            "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
        }
        found = await self._find(_identifier("STUDY", keys))
        return [study_match(d) for d in found if _text(d, "StudyInstanceUID")]

    async def find_series(self, study_uid: str) -> list[SeriesMatch]:
        """C-FIND at SERIES level within one study."""
        keys = {"StudyInstanceUID": check_uid(study_uid, "study_uid"), "SeriesInstanceUID": "",
                "Modality": "", "SeriesNumber": "", "SeriesDescription": "",
                "NumberOfSeriesRelatedInstances": ""}
        found = await self._find(_identifier("SERIES", keys))
        return [self._series(d, study_uid) for d in found if _text(d, "SeriesInstanceUID")]

    async def find_instances(self, study_uid: str,
                             series_uid: str | None = None) -> list[InstanceMatch]:
        """C-FIND at IMAGE level; without ``series_uid``, every series of the study in turn
        (Study Root hierarchical queries need one series UID per IMAGE-level request)."""
        check_uid(study_uid, "study_uid")
        if series_uid is not None:
            check_uid(series_uid, "series_uid")
        series = [series_uid] if series_uid is not None else [s.series_uid for s in
                                                  await self.find_series(study_uid)]
        out: list[InstanceMatch] = []
        for se in series:
            keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": se,
                    "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}
            for d in await self._find(_identifier("IMAGE", keys)):
                if _text(d, "SOPInstanceUID"):
                    out.append(InstanceMatch(study_uid=study_uid, series_uid=se,
                                             sop_uid=_text(d, "SOPInstanceUID"),
                                             sop_class_uid=_text(d, "SOPClassUID"),
                                             instance_number=_int(d, "InstanceNumber")))
        return out

    def retrieve_study(self, study_uid: str) -> Retrieval:
        """Fetch a whole study into the store (``pacs.retrieve``: C-MOVE to the box or C-GET).

        With C-MOVE the PACS sends to the box's own AE, so the :class:`DicomNode` of this
        process must be running on the same store (and the PACS must know the box's AE)."""
        return Retrieval(self, check_uid(study_uid, "study_uid"), None)

    def retrieve_series(self, study_uid: str, series_uid: str) -> Retrieval:
        """Fetch one series into the store."""
        return Retrieval(self, check_uid(study_uid, "study_uid"),
                         check_uid(series_uid, "series_uid"))

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _check_patient_id(value: str) -> str:
        if not value or len(value) > 64 or any(c in value for c in "*?\\") or not value.isprintable():
            raise ValueError("patient ID: 1 to 64 printable characters, no '*', '?' or '\\'")
        return value

    @staticmethod
    def _series(d: Dataset, study_uid: str) -> SeriesMatch:
        return SeriesMatch(study_uid=study_uid, series_uid=_text(d, "SeriesInstanceUID"),
                           modality=_text(d, "Modality"), series_number=_int(d, "SeriesNumber"),
                           series_description=_text(d, "SeriesDescription"),
                           num_instances=_int(d, "NumberOfSeriesRelatedInstances"))

    def _ae(self, timeout: float) -> AE:
        ae = AE(ae_title=self._config.dicom.ae_title)
        ae.maximum_pdu_size = self._config.dicom.max_pdu
        ae.connection_timeout = self._config.pacs.timeout
        ae.acse_timeout = self._config.pacs.timeout
        ae.network_timeout = timeout
        ae.dimse_timeout = timeout
        return ae

    def _association(self, contexts: list[PresentationContext], abort: _Abortable,
                     timeout: float | None = None, roles: list[Any] | None = None,
                     handlers: list[Any] | None = None) -> _Associated:
        pacs = self._config.pacs
        ae = self._ae(timeout or pacs.timeout)
        ae.requested_contexts = contexts
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, ext_neg=roles or None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, tune_association)]
                             + (handlers or []))
        if not assoc.is_established:
            why = ("rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted
                   else "no answer")
            raise PacsUnavailable(f"association with {pacs.ae_title}@{pacs.host}:{pacs.port} "
                                  f"failed: {why}")
        abort.set(assoc)
        return _Associated(assoc, abort)

    @staticmethod
    def _check_final(rsp: Dataset | None, what: str) -> Dataset:
        if rsp is None or "Status" not in rsp:
            raise PacsUnavailable(f"{what}: no response (timeout or association aborted)")
        if not _is_success_or_warning(int(rsp.Status)):
            raise PacsError(int(rsp.Status), _text(rsp, "ErrorComment"))
        return rsp

    async def _run(self, work: Callable[[_Abortable], T], timeout: float) -> T:
        """Run ``work`` in the pool with bounded retries on :class:`PacsUnavailable`."""
        pacs = self._config.pacs
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            abort = _Abortable()
            try:
                result = await asyncio.wait_for(
                    loop.run_in_executor(self._executor(), work, abort), timeout + pacs.timeout)
                self._last = ("ok", time.monotonic())
                return result
            except TimeoutError:
                abort.abort()
                err: PacsUnavailable = PacsUnavailable("PACS did not answer in time")
            except asyncio.CancelledError:
                abort.abort()
                raise
            except PacsUnavailable as e:
                err = e
            except PacsError:
                self._last = ("error", time.monotonic())
                raise
            self._last = ("unreachable", time.monotonic())
            if attempt >= pacs.retries:
                raise err
            delay = pacs.retry_backoff * (2 ** attempt)
            attempt += 1
            log.warning("PACS unavailable, retrying", extra={"attempt": attempt,
                                                              "delay_s": delay, "error": str(err)})
            await asyncio.sleep(delay)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # usable without start() too (CLI one-shots, tests)
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pacs-scu")
        return self._pool

    async def _find(self, identifier: Dataset) -> list[Dataset]:
        def work(abort: _Abortable) -> list[Dataset]:
            out: list[Dataset] = []
            with self._association([build_context(StudyRootQueryRetrieveInformationModelFind)],
                                   abort) as assoc:
                final: Dataset | None = None
                for status, ident in assoc.send_c_find(
                        identifier, StudyRootQueryRetrieveInformationModelFind):
                    if status is None or "Status" not in status:
                        break
                    if _is_pending(int(status.Status)):
                        if ident is not None:
                            out.append(ident)
                        continue
                    final = status
                self._check_final(final, "C-FIND")
            return out

        return await self._run(work, self._config.pacs.timeout)

    async def _retrieve(self, r: Retrieval) -> AsyncGenerator[StoredInstance, None]:
        """The body of :class:`Retrieval`: start the worker, yield stored events until it ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_stored(inst: StoredInstance) -> None:  # ingesting thread
            if inst.study_uid == r.study_uid and (r.series_uid is None
                                                   or inst.series_uid == r.series_uid):
                loop.call_soon_threadsafe(queue.put_nowait, inst)

        identifier = _identifier("SERIES" if r.series_uid else "STUDY",
                                 {"StudyInstanceUID": r.study_uid,
                                  **({"SeriesInstanceUID": r.series_uid} if r.series_uid else {})})
        use_get = self._config.pacs.retrieve == "c-get"
        sop_classes: list[str] = []
        if use_get:  # C-GET must propose the storage classes up front: learn them from the PACS
            sop_classes = sorted({i.sop_class_uid for i in
                                  await self.find_instances(r.study_uid, r.series_uid)
                                  if i.sop_class_uid})

        def work(abort: _Abortable) -> RetrieveSummary:
            if use_get:
                return self._get(identifier, sop_classes, abort)
            return self._move(identifier, abort)

        # Ordering makes this exact: the store calls on_stored before the C-STORE response goes
        # out, the PACS sends its final response after the last C-STORE response, and the worker's
        # completion reaches the loop after it; so when the task is done the queue holds it all.
        # One queue carries both, in that order: a wait per instance costs one future, not a
        # task and a wait set (this runs for every instance, beside the SCP receiving the next).
        seen: set[str] = set()
        done = object()
        self._store.add_listener(on_stored)
        task = asyncio.ensure_future(self._run(work, self._config.pacs.retrieve_timeout))
        task.add_done_callback(lambda _task: queue.put_nowait(done))
        try:
            while (item := await queue.get()) is not done:
                if item.sop_uid not in seen:  # a retried C-MOVE may resend what we already have
                    seen.add(item.sop_uid)
                    yield item
            try:
                final = task.result()
            except PacsError as e:  # say what did arrive before the failure
                if e.summary is not None:
                    e.summary = dataclasses.replace(e.summary, received=len(seen))
                    r.summary = e.summary
                raise
            r.summary = RetrieveSummary(final.status, final.completed, final.failed,
                                        final.warning, len(seen), final.failed_sop_uids)
            log.info("retrieve finished", extra={"completed": final.completed,
                                                 "failed": final.failed, "received": len(seen)})
        finally:
            self._store.remove_listener(on_stored)
            if not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, PacsUnavailable, PacsError):
                    pass

    def _summary(self, final: Dataset | None, ident: Dataset | None, what: str) -> RetrieveSummary:
        if final is None or "Status" not in final:
            raise PacsUnavailable(f"{what}: no final response (timeout or association aborted)")
        status = int(final.Status)
        failed_uids = _multi(ident, "FailedSOPInstanceUIDList") if ident is not None else ()
        summary = RetrieveSummary(
            status=status,
            completed=_int(final, "NumberOfCompletedSuboperations") or 0,
            failed=_int(final, "NumberOfFailedSuboperations") or 0,
            warning=_int(final, "NumberOfWarningSuboperations") or 0,
            received=0, failed_sop_uids=failed_uids)
        if not _is_success_or_warning(status):
            raise PacsError(status, _text(final, "ErrorComment"), summary)
        return summary

    def _move(self, identifier: Dataset, abort: _Abortable) -> RetrieveSummary:
        """C-MOVE on the box's own upper layer (appliance/dicom/requestor.py), in this worker
        thread's own event loop; ``abort`` cancels it from the link's loop."""
        pacs, own_ae = self._config.pacs, self._config.dicom.ae_title

        async def move() -> tuple[Dataset | None, Dataset | None]:
            abort.set(_CancelTask(asyncio.get_running_loop(), asyncio.current_task()))
            try:
                return await requestor.c_move(
                    host=pacs.host, port=pacs.port, calling_ae=own_ae, called_ae=pacs.ae_title,
                    destination=own_ae, sop_class=StudyRootQueryRetrieveInformationModelMove,
                    identifier=identifier, max_pdu=self._config.dicom.max_pdu,
                    connect_timeout=pacs.timeout, response_timeout=pacs.retrieve_timeout)
            finally:
                abort.set(None)

        try:
            final, ident = asyncio.run(move())
        except asyncio.CancelledError:
            raise PacsUnavailable("retrieve cancelled") from None
        except requestor.MoveUnavailable as e:
            raise PacsUnavailable(f"association with {pacs.ae_title}@{pacs.host}:{pacs.port} "
                                  f"failed: {e}") from None
        if abort.cancelled:
            raise PacsUnavailable("retrieve cancelled")
        return self._summary(final, ident, "C-MOVE")

    def _get(self, identifier: Dataset, sop_classes: list[str],
             abort: _Abortable) -> RetrieveSummary:
        timeout = self._config.pacs.retrieve_timeout
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        contexts += get_storage_contexts(sop_classes, _MAX_CONTEXTS - 1)
        roles = [build_role(uid, scp_role=True) for uid in
                 dict.fromkeys(str(cx.abstract_syntax) for cx in contexts[1:])]
        handlers = [(evt.EVT_C_STORE, lambda event: ingest_status(self._store, event))]
        with self._association(contexts, abort, timeout=timeout, roles=roles,
                               handlers=handlers) as assoc:
            final, ident = self._last_response(assoc.send_c_get(
                identifier, StudyRootQueryRetrieveInformationModelGet))
        return self._summary(final, ident, "C-GET")

    @staticmethod
    def _last_response(responses: Iterable[tuple[Dataset, Dataset | None]]
                       ) -> tuple[Dataset | None, Dataset | None]:
        final: Dataset | None = None
        ident: Dataset | None = None
        for status, identifier in responses:
            if status is None or "Status" not in status:
                return None, None
            if not _is_pending(int(status.Status)):
                final, ident = status, identifier
        return final, ident


def get_storage_contexts(sop_classes: Iterable[str], limit: int) -> list[PresentationContext]:
    """Storage contexts for a C-GET: one per (class, transfer syntax) when that fits, so the PACS
    can send each file in its own syntax; else one per class offering every syntax (the PACS
    then picks one and may transcode). Unknown classes fall back to the common ones."""
    classes = list(dict.fromkeys(sop_classes)) or list(STORAGE_SOP_CLASSES[:limit])
    classes = classes[:limit]
    if len(classes) * len(STORAGE_TRANSFER_SYNTAXES) <= limit:
        return [build_context(c, [ts]) for c in classes for ts in STORAGE_TRANSFER_SYNTAXES]
    return [build_context(c, list(STORAGE_TRANSFER_SYNTAXES)) for c in classes]


class _Associated:
    """``with`` block that releases the association (or aborts it when something went wrong)."""

    def __init__(self, assoc: Association, abort: _Abortable) -> None:
        self.assoc = assoc
        self._abort = abort

    def __enter__(self) -> Association:
        return self.assoc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._abort.set(None)
        if self.assoc.is_established:
            if exc_type is None:
                self.assoc.release()
            else:
                self.assoc.abort()
        if exc_type is None and self._abort.cancelled:
            raise PacsUnavailable("retrieve cancelled")
