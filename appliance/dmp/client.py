"""``DmpClient``: the box's only way to the DMP (publish, replace, query, retrieve, delete, archive,
access check), over mTLS with the organisation's authentication key.

Messages are built and signed in one worker thread (token operations block and must not run
concurrently on one session), sent with aiohttp, and every failure is classified as
:class:`DmpRetryableError` or :class:`DmpPermanentError` (see :mod:`appliance.dmp.errors`).
Nothing here logs a patient identifier, a name or a message body.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self, TypeVar, cast

import aiohttp
from lxml import etree

from . import codes as C
from . import metadata, soap, transactions, vihf, xades
from .codes import Code
from appliance.tlsgateway.contract import GATEWAY_ERROR_HEADER

from .errors import DmpPermanentError, DmpResponseError, DmpRetryableError, RegistryError
from .metadata import KosSubmission, PatientId, ReferenceId
from .signer import Signer
from .transactions import AccessStatus, DocumentEntry
from .vihf import Actor, AuthMode, Software

log = logging.getLogger("appliance.dmp")
T = TypeVar("T")

MEDECIN = Code("10", C.PROFESSION_SYSTEM, "Medecin")


@dataclass(frozen=True)
class PublishResult:
    """What the DMP accepted: the uniqueIds to keep (entryUUIDs are the registry's own)."""

    submission_set_uid: str
    kos_uid: str
    signature_uid: str
    signature_document: bytes = field(repr=False)
    warnings: tuple[RegistryError, ...] = ()


@dataclass(frozen=True)
class QueryResult:
    entries: list[DocumentEntry]       # LeafClass answers
    refs: list[str]                    # ObjectRef answers (entryUUIDs)


def publication_actor(s: KosSubmission, profession: Code = MEDECIN,
                      specialty: Code | None = None) -> Actor:
    """The VIHF actor of a source publication: the report's legal authenticator, in the
    organisation that publishes, mode INDIRECTE."""
    la = s.legal_authenticator
    return Actor(identifier=la.id, name=f"{la.given} {la.family}".strip(), profession=profession,
                 specialty=specialty, structure_id=s.institution.id, sector=s.facility_type.code,
                 mode=AuthMode.INDIRECTE)


def _get(config: Any, name: str, default: T) -> T:
    """A ``[dmp]`` key, or its default for a config object that predates the key."""
    return cast(T, getattr(config, name, default))


def _dmp_settings(config: Any) -> dict[str, Any]:
    """The ``[dmp]`` keys this module reads (appliance.config.DmpConfig)."""
    return {
        "url": str(config.url).rstrip("/"),
        "timeout": float(_get(config, "timeout", 30.0)),
        "source_id": _get(config, "source_id", "1.2.250.1.999.1.1.8121"),
        "digest": _get(config, "digest_algorithm", "sha256"),
        "max_response_bytes": int(_get(config, "max_response_bytes", 64 * 1024 * 1024)),
        "software": Software(id=_get(config, "lps_id", "OPEN-DRIMBOX"),
                             name=_get(config, "lps_name", "Open DRIMbox"),
                             version=_get(config, "lps_version", "0.1.0"),
                             homologation=_get(config, "lps_homologation", "HOMOLOGATION-TEST")),
    }


class DmpClient:
    """Async client of the DMP web services at ``config.url`` (``…/repository``, ``…/registry``,
    ``…/patients``); ``signer`` is the ORG signature key (VIHF, XAdES).

    Transport, one of two:
    - ``ssl_context``: direct mTLS, the context carrying the client certificate (ORG auth key on
      the token) and the anchors that verify the DMP. Only for a process that may load
      pkcs11-provider (tests, benchmarks): the daemon never does.
    - ``connector`` and ``endpoint``: plain HTTP through the TLS gateway (an
      ``aiohttp.UnixConnector`` to its egress socket, and the egress URL of ``config.url``); the
      gateway does the mTLS. Messages still name ``config.url`` (WS-Addressing ``To``).
    """

    def __init__(self, config: Any, signer: Signer, ssl_context: ssl.SSLContext | None = None,
                 *, connector: aiohttp.BaseConnector | None = None,
                 endpoint: str | None = None) -> None:
        s = _dmp_settings(config)
        self._dmp_config = config
        self._url: str = s["url"]
        self._endpoint = (endpoint or self._url).rstrip("/")
        self._connector = connector
        self._timeout = aiohttp.ClientTimeout(total=s["timeout"])
        self._source_id: str = s["source_id"]
        self._digest: str = s["digest"]
        self._limit: int = s["max_response_bytes"]
        self.software: Software = s["software"]
        self._signer = signer
        if ssl_context is None and connector is None:
            ca = getattr(config, "ca_file", None)
            ssl_context = ssl.create_default_context(cafile=str(ca) if ca else None)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-sign")
        self.signing_seconds = 0.0   # time spent building and signing messages (benchmark)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._executor.shutdown(wait=False)

    # ----- transactions -----

    async def check_access(self, patient: PatientId, actor: Actor) -> AccessStatus:
        """TD0.2: may ``actor`` read this patient's record (exists, authorised, no opposition)."""
        to = self._url + "/patients"

        def build() -> etree._Element:
            body = transactions.access_check(patient.ins, patient.oid, self._source_id,
                                             self.software.name)
            return soap.envelope(C.ACTION_TD02, to, body, self._vihf(actor, patient))

        msg = await self._call("patients", C.ACTION_TD02, await self._build(build))
        return transactions.access_response(msg)

    async def publish(self, submission: KosSubmission, actor: Actor | None = None
                      ) -> PublishResult:
        """ITI-41: publish the KOS and its XAdES signature document."""
        return await self._provide(submission, actor, None)

    async def replace(self, old_entry_uuid: str, submission: KosSubmission,
                      actor: Actor | None = None) -> PublishResult:
        """ITI-41 with an RPLC association: the new KOS replaces entry ``old_entry_uuid``."""
        if not transactions.is_entry_uuid(old_entry_uuid):
            raise ValueError("old_entry_uuid must be a urn:uuid entryUUID")
        return await self._provide(submission, actor, old_entry_uuid)

    async def find_documents(self, patient: PatientId, actor: Actor, *,
                             statuses: tuple[str, ...] = (C.APPROVED,),
                             event_codes: tuple[Code, ...] = (),
                             class_codes: tuple[Code, ...] = (),
                             created_from: datetime | None = None,
                             created_to: datetime | None = None,
                             return_type: str = "LeafClass") -> QueryResult:
        """ITI-18 FindDocuments on the patient's record; ``event_codes`` are ORed, as are
        ``class_codes`` (e.g. ``codes.CLASS_IMAGING`` to list KOS entries only)."""
        params: dict[str, str | list[str]] = {
            "$XDSDocumentEntryPatientId": transactions.quote(patient.xds),
            "$XDSDocumentEntryStatus": transactions.quoted_list(statuses),
        }
        if event_codes:
            params["$XDSDocumentEntryEventCodeList"] = transactions.quoted_list(
                [f"{c.code}^^{c.system}" for c in event_codes])
        if class_codes:
            params["$XDSDocumentEntryClassCode"] = transactions.quoted_list(
                [f"{c.code}^^{c.system}" for c in class_codes])
        if created_from:
            params["$XDSDocumentEntryCreationTimeFrom"] = _dtm(created_from)
        if created_to:
            params["$XDSDocumentEntryCreationTimeTo"] = _dtm(created_to)
        return await self._query(C.FIND_DOCUMENTS, params, return_type, patient, actor)

    async def find_by_reference_id(self, patient: PatientId, reference: ReferenceId,
                                   actor: Actor, *, statuses: tuple[str, ...] = (C.APPROVED,),
                                   return_type: str = "LeafClass") -> QueryResult:
        """ITI-18 FindDocumentsByReferenceId (e.g. the exam's accession number)."""
        params: dict[str, str | list[str]] = {
            "$XDSDocumentEntryPatientId": transactions.quote(patient.xds),
            "$XDSDocumentEntryReferenceIdList": transactions.quoted_list([reference.cxi]),
            "$XDSDocumentEntryStatus": transactions.quoted_list(statuses),
        }
        return await self._query(C.FIND_BY_REFERENCE_ID, params, return_type, patient, actor)

    async def get_documents(self, unique_ids: list[str], patient: PatientId, actor: Actor, *,
                            return_type: str = "LeafClass") -> QueryResult:
        """ITI-18 GetDocuments by document uniqueIds (e.g. to learn a KOS's entryUUID)."""
        if not unique_ids:
            raise ValueError("get_documents needs at least one uniqueId")
        params: dict[str, str | list[str]] = {
            "$XDSDocumentEntryUniqueId": transactions.quoted_list(unique_ids)}
        return await self._query(C.GET_DOCUMENTS, params, return_type, patient, actor)

    async def retrieve(self, repository_id: str, document_unique_id: str, patient: PatientId,
                       actor: Actor) -> bytes:
        """ITI-43: the bytes of one document (a KOS)."""
        to = self._url + "/repository"

        def build() -> etree._Element:
            body = transactions.retrieve_request(repository_id, document_unique_id)
            return soap.envelope(C.ACTION_ITI43, to, body, self._vihf(actor, patient))

        msg = await self._call("repository", C.ACTION_ITI43, await self._build(build))
        return transactions.retrieve_response(msg, document_unique_id)

    async def delete(self, entry_uuid: str, previous: KosSubmission,
                     actor: Actor | None = None) -> tuple[RegistryError, ...]:
        """ITI-57: set an Approved entry to ``…:StatusType:Deleted`` (TD3.3c)."""
        return await self._update_status(entry_uuid, C.APPROVED, C.DELETED, previous, actor)

    async def archive(self, entry_uuid: str, previous: KosSubmission,
                      actor: Actor | None = None) -> tuple[RegistryError, ...]:
        """ITI-57: set an Approved entry to ``…:StatusType:Archived`` (TD3.3d)."""
        return await self._update_status(entry_uuid, C.APPROVED, C.ARCHIVED, previous, actor)

    # ----- plumbing -----

    def _vihf(self, actor: Actor, patient: PatientId) -> etree._Element:
        return vihf.build(actor, patient.xds, self.software, self._signer, digest=self._digest)

    async def _build(self, fn: Callable[[], T]) -> T:
        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self.signing_seconds += time.perf_counter() - start
        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    async def _provide(self, s: KosSubmission, actor: Actor | None, replaces: str | None
                       ) -> PublishResult:
        actor = actor or publication_actor(s)
        to = self._url + "/repository"

        def build() -> tuple[etree._Element, bytes]:
            sig = xades.build(s.signature_uid, s.submission_set_uid,
                              [xades.SignedDocument(s.kos_uid, s.kos)], self._signer,
                              digest=self._digest)
            objects = metadata.registry_objects(s, sig, source_id=self._source_id,
                                                replaces=replaces)
            body = transactions.provide_and_register(
                objects, [(metadata.KOS_ID, "0.2"), (metadata.SIGNATURE_ID, "0.3")])
            return soap.envelope(C.ACTION_ITI41, to, body, self._vihf(actor, s.patient)), sig

        env, sig = await self._build(build)
        msg = await self._call("repository", C.ACTION_ITI41, env, [
            soap.Attachment("0.2", "application/dicom", s.kos),
            soap.Attachment("0.3", "text/xml", sig)])
        warnings = transactions.registry_response(msg)
        log.info("DMP accepted submission set %s", s.submission_set_uid)
        return PublishResult(s.submission_set_uid, s.kos_uid, s.signature_uid, sig, warnings)

    async def _update_status(self, entry_uuid: str, original: str, new: str,
                             previous: KosSubmission, actor: Actor | None
                             ) -> tuple[RegistryError, ...]:
        actor = actor or publication_actor(previous)
        to = self._url + "/registry"

        def build() -> etree._Element:
            objects = metadata.status_update_objects(
                entry_uuid, original, new, patient=previous.patient, author=previous.author,
                institution=previous.institution, source_id=self._source_id,
                content_type=previous.content_type)
            return soap.envelope(C.ACTION_ITI57, to, transactions.submit_objects(objects),
                                 self._vihf(actor, previous.patient))

        msg = await self._call("registry", C.ACTION_ITI57, await self._build(build))
        return transactions.registry_response(msg)

    async def _query(self, query_id: str, params: dict[str, str | list[str]], return_type: str,
                     patient: PatientId, actor: Actor) -> QueryResult:
        to = self._url + "/registry"

        def build() -> etree._Element:
            body = transactions.stored_query(query_id, params, return_type)
            return soap.envelope(C.ACTION_ITI18, to, body, self._vihf(actor, patient))

        msg = await self._call("registry", C.ACTION_ITI18, await self._build(build))
        entries, refs = transactions.query_response(msg)
        return QueryResult(entries, refs)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = self._connector or aiohttp.TCPConnector(ssl=self._ssl or True, limit=8)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    async def _call(self, service: str, action: str, env: etree._Element,
                    attachments: list[soap.Attachment] | None = None) -> soap.SoapMessage:
        url = f"{self._endpoint}/{service}"
        if attachments is None:
            ctype = f'{soap.SOAP_CT}; charset=UTF-8; action="{action}"'
            data = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
        else:
            ctype, data = soap.mtom(env, action, attachments)
        try:
            async with self._http().post(url, data=data, headers={"Content-Type": ctype}) as r:
                body = await self._read(r)
                status, rtype = r.status, r.headers.get("Content-Type", "")
                gateway_error = r.headers.get(GATEWAY_ERROR_HEADER)
        except TimeoutError:
            raise DmpRetryableError(f"DMP {service}: no answer within the timeout") from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            # A certificate the other side will not accept does not fix itself: the admin acts.
            raise DmpPermanentError("TlsError", f"DMP {service}: TLS failure: {e}") from None
        except aiohttp.ClientError as e:
            raise DmpRetryableError(f"DMP {service}: connection failed: "
                                    f"{type(e).__name__}: {e}") from None
        if gateway_error and status >= 500:
            # The TLS gateway could not reach the DMP (connection, TLS, timeout), or the token
            # key is not usable right now: like a connection error, it may pass.
            text = body.decode("utf-8", "replace").strip()[:300]
            raise DmpRetryableError(f"DMP {service}: {text}", code=f"HTTP{status}")
        if status >= 500:
            try:
                transactions.check_fault(soap.decode(rtype, body, limit=self._limit))
            except DmpResponseError:
                pass
            raise DmpRetryableError(f"DMP {service}: HTTP {status}", code=f"HTTP{status}")
        if status >= 400:
            raise DmpPermanentError(f"HTTP{status}", f"DMP {service} refused the request "
                                    f"(HTTP {status})")
        if status != 200:
            raise DmpResponseError(f"DMP {service}: unexpected HTTP status {status}")
        return soap.decode(rtype, body, limit=self._limit)

    async def _read(self, r: aiohttp.ClientResponse) -> bytes:
        if r.content_length is not None and r.content_length > self._limit:
            raise DmpResponseError(f"answer of {r.content_length} bytes exceeds the limit "
                                   f"of {self._limit}")
        buf = bytearray()
        async for chunk in r.content.iter_chunked(65536):
            buf += chunk
            if len(buf) > self._limit:
                raise DmpResponseError(f"answer exceeds the limit of {self._limit} bytes")
        return bytes(buf)


def _dtm(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y%m%d%H%M%S")
