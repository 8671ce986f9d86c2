"""The box's DICOM node: C-ECHO and C-STORE SCP for the site PACS and the configured modalities.

One asyncio task per association (appliance/dicom/ul.py reads the PDUs). A C-STORE's data set is
gathered as it arrives and handed, with the file meta the receiver owes it, to the store in a
worker thread (which validates, fsyncs and renames into place); the store's verdict becomes the
DIMSE status. The response goes out only once the instance is stored and indexed, so a sender
that got "success" can rely on it. An association aborted or cut mid-transfer never reaches the
store: nothing is half-stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
from typing import Any

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.component import Health
from appliance.config import Config
from appliance.store import Store

from . import dimse, ul
from .ingest import (
    OUT_OF_RESOURCES,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    SUCCESS,
    ingest_result,
    part10,
)

log = logging.getLogger("appliance.dicom")

VERIFICATION = str(Verification)


class DicomNode:
    """C-ECHO and C-STORE SCP (a :class:`~appliance.component.Component`)."""

    name = "dicom"

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._stats = {"associations": 0, "refused": 0, "aborted": 0, "stored": 0, "failed": 0}
        self._stopping = False
        self._contexts = [build_context(Verification, [ExplicitVRLittleEndian,
                                                       ImplicitVRLittleEndian])]
        self._contexts += [build_context(c, list(STORAGE_TRANSFER_SYNTAXES))
                           for c in STORAGE_SOP_CLASSES]

    @property
    def allowed_calling_aets(self) -> list[str]:
        """Default deny: only the site PACS and the configured modalities may associate."""
        titles = [self._config.pacs.ae_title] + [m.ae_title for m in self._config.dicom.modalities]
        return list(dict.fromkeys(titles))

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the configuration asks for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("DICOM node is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def active_sockets(self) -> list[socket.socket]:
        """The sockets of the associations in progress (diagnostics)."""
        return [w.get_extra_info("socket") for w in self._connections.values()]

    async def start(self) -> None:
        if self._server is not None:
            return
        cfg = self._config.dicom
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(cfg.max_associations,
                                                           thread_name_prefix="dicom-ingest")
        # The stream buffer holds at least a whole PDU, so reading never pauses mid-PDU.
        limit = max(cfg.max_pdu or 0, 1 << 20) + 6
        self._server = await asyncio.start_server(self._serve, cfg.bind, cfg.port, limit=limit)
        log.info("DICOM node listening", extra={"ae_title": cfg.ae_title, "bind": cfg.bind,
                                                "port": self.port, "max_pdu": cfg.max_pdu})

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        # Abort whatever is in flight: a C-STORE whose data set has not fully arrived is dropped
        # (never stored); one already in the store completes atomically (the pool is drained).
        for writer in list(self._connections.values()):
            _abort(writer, 0)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        log.info("DICOM node stopped")

    def health(self) -> Health:
        details: dict[str, Any] = dict(self._stats)
        if self._server is None:
            return Health(ready=False, status="stopped", details=details)
        details["port"] = self.port
        details["active"] = len(self._connections)
        return Health(ready=True, status="ok", details=details)

    # -- one association -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        calling = ""
        try:
            calling = await self._associate(reader, writer, peer)
        except ul.ProtocolError as e:
            self._stats["aborted"] += 1
            log.warning("association aborted: protocol error",
                        extra={"reason": str(e), "calling_ae": calling, "peer": peer})
            _abort(writer, e.reason)
        except TimeoutError:
            self._stats["aborted"] += 1
            log.info("association aborted: network timeout",
                     extra={"calling_ae": calling, "peer": peer})
            _abort(writer, 0)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._stats["aborted"] += 1
            log.info("association aborted: connection lost", extra={"peer": peer})
        except asyncio.CancelledError:
            pass  # stop(): the A-ABORT is already sent
        finally:
            del self._connections[task]
            writer.close()

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: Any) -> str:
        cfg = self._config.dicom
        async with asyncio.timeout(cfg.network_timeout):  # ARTIM: the request comes first
            kind, body = await ul.read_pdu(reader, ul.MAX_ASSOCIATE_PDU)
        if kind != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError("the first PDU is not an A-ASSOCIATE-RQ")
        request = ul.decode_request(body)
        refusal = self._refusal(request)
        if refusal is not None:
            reason, rj = refusal
            self._stats["refused"] += 1
            log.warning("association refused", extra={"reason": reason, "peer": peer,
                                                      "calling_ae": request.calling_ae})
            writer.write(ul.reject_pdu(*rj))
            await writer.drain()
            return request.calling_ae
        ac, accepted = ul.accept(request, self._contexts, cfg.max_pdu)
        writer.write(ac)
        self._stats["associations"] += 1
        log.debug("association accepted", extra={"calling_ae": request.calling_ae,
                                                 "peer": peer})
        await self._exchange(reader, writer, accepted, request)
        return request.calling_ae

    def _refusal(self, rq: ul.Request) -> tuple[str, tuple[int, int, int]] | None:
        cfg = self._config.dicom
        if rq.calling_ae not in self.allowed_calling_aets:
            return "calling AE title not allowed", (ul.REJECT_PERMANENT, ul.SOURCE_USER,
                                                    ul.REASON_CALLING_AE)
        if rq.called_ae != cfg.ae_title:
            return "called AE title is not the box's", (ul.REJECT_PERMANENT, ul.SOURCE_USER,
                                                        ul.REASON_CALLED_AE)
        if str(rq.primitive.application_context_name) != ul.APPLICATION_CONTEXT:
            return "unknown application context", (ul.REJECT_PERMANENT, ul.SOURCE_USER,
                                                   ul.REASON_CONTEXT_NAME)
        if self._stopping or len(self._connections) > cfg.max_associations:
            return "too many associations", (ul.REJECT_TRANSIENT, ul.SOURCE_PRESENTATION,
                                             ul.REASON_LOCAL_LIMIT)
        return None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        accepted: dict[int, tuple[str, str]], request: ul.Request) -> None:
        """DIMSE messages until the peer releases or aborts."""
        cfg = self._config.dicom
        max_pdu = cfg.max_pdu or 0xFFFFFFFF
        command = bytearray()
        current: dimse.Command | None = None
        context: int | None = None  # every fragment of one message is on one context
        data_set: list[bytes] = []
        while True:
            async with asyncio.timeout(cfg.network_timeout):
                kind, body = await ul.read_pdu(reader, max_pdu)
            if kind == ul.RELEASE_RQ:
                writer.write(ul.RELEASE_RP_PDU)
                await writer.drain()
                return
            if kind == ul.ABORT:
                self._stats["aborted"] += 1
                log.info("association aborted by the peer", extra={
                    "calling_ae": request.calling_ae, "peer": writer.get_extra_info("peername")})
                return
            if kind != ul.P_DATA:
                raise ul.ProtocolError(f"unexpected PDU type 0x{kind:02x}")
            for context_id, header, fragment in ul.pdvs(body):
                if context_id not in accepted:
                    raise ul.ProtocolError(f"PDV on presentation context {context_id}, which "
                                           "was not accepted", ul.ABORT_INVALID_PARAMETER)
                if context is not None and context_id != context:
                    raise ul.ProtocolError("one message on two presentation contexts")
                context = context_id
                if header & 0x01:  # command fragment
                    if current is not None:
                        raise ul.ProtocolError("command fragment inside a data set")
                    command += fragment
                    if len(command) > dimse.MAX_COMMAND_BYTES:
                        raise ul.ProtocolError("command set too long")
                    if not header & 0x02:
                        continue
                    try:
                        current = dimse.decode(bytes(command))
                    except dimse.CommandError as e:
                        raise ul.ProtocolError(str(e), ul.ABORT_INVALID_PARAMETER) from None
                    command.clear()
                    if current.has_data_set:
                        continue
                    reply = self._answer(current, accepted[context_id], None, request)
                else:  # data set fragment
                    if current is None:
                        raise ul.ProtocolError("data set fragment without a command set")
                    data_set.append(bytes(fragment))
                    if not header & 0x02:
                        continue
                    reply = self._answer(current, accepted[context_id], data_set, request)
                writer.write(ul.p_data(context_id, await reply))
                current, context, data_set = None, None, []

    async def _answer(self, command: dimse.Command, context: tuple[str, str],
                      data_set: list[bytes] | None, request: ul.Request) -> bytes:
        abstract, transfer_syntax = context
        if command.field == dimse.C_ECHO_RQ and data_set is None and abstract == VERIFICATION:
            return dimse.response(command, SUCCESS)
        if command.field != dimse.C_STORE_RQ or data_set is None or abstract == VERIFICATION:
            raise ul.ProtocolError(f"DIMSE command 0x{command.field:04x} is not served here "
                                   f"(presentation context {abstract})")
        if self._stopping:
            return dimse.response(command, OUT_OF_RESOURCES, "Out of resources: node stopping")
        data = part10(command.sop_class_uid or abstract, command.sop_instance_uid,
                      transfer_syntax, data_set)
        data_set.clear()
        status, comment = await asyncio.get_running_loop().run_in_executor(
            self._pool, ingest_result, self._store, data)
        self._stats["stored" if status == SUCCESS else "failed"] += 1
        return dimse.response(command, status, comment)


def _abort(writer: asyncio.StreamWriter, reason: int) -> None:
    """Send A-ABORT and drop the connection (best effort: the peer may be gone already)."""
    try:
        if not writer.is_closing():
            writer.write(ul.abort_pdu(reason))
    except (ConnectionError, RuntimeError):
        pass
