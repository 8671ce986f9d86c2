"""The box's DICOM node: C-ECHO and C-STORE SCP for the site PACS and the configured modalities.

The node runs its own event loop in its own thread, one task per association (appliance/dicom/ul.py
reads the PDUs): file writes during a transfer never hold up the daemon's web side. A C-STORE's
data set is written to the store's temp area as it arrives, behind the file meta the receiver owes
it; at its last fragment a worker thread checks, fsyncs, renames into place and indexes it, and the
store's verdict becomes the DIMSE status. The response goes out only once the instance is stored
and indexed, so a sender that got "success" can rely on it. An association aborted or cut
mid-transfer leaves nothing: its partial file is removed from the temp area.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from typing import Any

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.component import Health
from appliance.config import Config
from appliance.store import Incoming, Store

from . import dimse, ul
from .ingest import (
    OUT_OF_RESOURCES,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    SUCCESS,
    ingest_result,
    part10_header,
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed: asyncio.Event | None = None  # set in the node's loop to stop it
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
        if self._thread is not None:
            return
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(self._config.dicom.max_associations,
                                                           thread_name_prefix="dicom-ingest")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(started)),
                                        name="dicom-node", daemon=True)
        self._thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:  # could not bind: nothing to serve
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None
            self._pool.shutdown(wait=False)
            self._pool = None
            raise
        cfg = self._config.dicom
        log.info("DICOM node listening", extra={"ae_title": cfg.ae_title, "bind": cfg.bind,
                                                "port": self.port, "max_pdu": cfg.max_pdu})

    async def _run(self, started: concurrent.futures.Future[None]) -> None:
        """The node's own loop: serve until :meth:`stop`."""
        cfg = self._config.dicom
        self._loop, self._closed = asyncio.get_running_loop(), asyncio.Event()
        try:
            # The stream buffer holds at least a whole PDU, so reading never pauses mid-PDU.
            limit = max(cfg.max_pdu or 0, 1 << 20) + 6
            self._server = await asyncio.start_server(self._serve, cfg.bind, cfg.port,
                                                      limit=limit)
        except BaseException as e:
            started.set_exception(e)
            return
        started.set_result(None)
        await self._closed.wait()
        server, self._server = self._server, None
        server.close()
        # Abort whatever is in flight: a C-STORE whose data set has not fully arrived is dropped
        # (its partial file removed); one already in the store completes atomically (stop()
        # drains the pool).
        for writer in list(self._connections.values()):
            _abort(writer, 0)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        if self._loop is not None and self._closed is not None:
            self._loop.call_soon_threadsafe(self._closed.set)
        await asyncio.to_thread(thread.join, 10)
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)
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
        loop = asyncio.get_running_loop()
        message = _Message()
        try:
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
                        "calling_ae": request.calling_ae,
                        "peer": writer.get_extra_info("peername")})
                    return
                if kind != ul.P_DATA:
                    raise ul.ProtocolError(f"unexpected PDU type 0x{kind:02x}")
                for context_id, header, fragment in ul.pdvs(body):
                    if context_id not in accepted:
                        raise ul.ProtocolError(f"PDV on presentation context {context_id}, "
                                               "which was not accepted",
                                               ul.ABORT_INVALID_PARAMETER)
                    if message.add(context_id, header, fragment, accepted[context_id],
                                   self._store, self._stopping):
                        writer.write(ul.p_data(context_id, await self._answer(message)))
                        if message.incoming_used:  # the next one's temp file, while we wait
                            loop.run_in_executor(self._pool, self._store.prepare_incoming)
                        message = _Message()
        finally:
            message.discard()  # a data set cut short leaves nothing behind

    async def _answer(self, message: _Message) -> bytes:
        command = message.command
        assert command is not None
        abstract, _ts = message.syntaxes
        if command.field == dimse.C_ECHO_RQ and message.incoming is None \
                and abstract == VERIFICATION and not command.has_data_set:
            return dimse.response(command, SUCCESS)
        if command.field != dimse.C_STORE_RQ or abstract == VERIFICATION \
                or not command.has_data_set:
            raise ul.ProtocolError(f"DIMSE command 0x{command.field:04x} is not served here "
                                   f"(presentation context {abstract})")
        incoming = message.incoming
        if incoming is None:  # refused at its start: the node is stopping
            return dimse.response(command, OUT_OF_RESOURCES, "Out of resources: node stopping")
        data = b"".join(message.data)
        message.data.clear()
        message.incoming = None  # finish() owns it now, success or not
        status, comment = await asyncio.get_running_loop().run_in_executor(
            self._pool, ingest_result, lambda: incoming.finish(data))
        self._stats["stored" if status == SUCCESS else "failed"] += 1
        return dimse.response(command, status, comment)


class _Message:
    """One DIMSE message being received: its command set, then its data set."""

    def __init__(self) -> None:
        self.context: int | None = None  # every fragment of one message is on one context
        self.syntaxes = ("", "")
        self.command_bytes = bytearray()
        self.command: dimse.Command | None = None
        self.data: list[bytes] = []
        self.incoming: Incoming | None = None
        self.incoming_used = False

    def add(self, context_id: int, header: int, fragment: memoryview,
            syntaxes: tuple[str, str], store: Store, stopping: bool) -> bool:
        """Take one PDV; True once the message is complete."""
        if self.context is not None and context_id != self.context:
            raise ul.ProtocolError("one message on two presentation contexts")
        self.context, self.syntaxes = context_id, syntaxes
        if header & 0x01:  # command fragment
            if self.command is not None:
                raise ul.ProtocolError("command fragment inside a data set")
            self.command_bytes += fragment
            if len(self.command_bytes) > dimse.MAX_COMMAND_BYTES:
                raise ul.ProtocolError("command set too long")
            if not header & 0x02:
                return False
            try:
                self.command = dimse.decode(bytes(self.command_bytes))
            except dimse.CommandError as e:
                raise ul.ProtocolError(str(e), ul.ABORT_INVALID_PARAMETER) from None
            if not self.command.has_data_set:
                return True
            if self.command.field == dimse.C_STORE_RQ and not stopping:
                # Written to disk as it arrives; the disk starts on it at once.
                self.incoming, self.incoming_used = store.incoming(), True
                head = part10_header(self.command.sop_class_uid or syntaxes[0],
                                     self.command.sop_instance_uid, syntaxes[1])
                self.incoming.write(head)
                self.data.append(head)
            return False
        if self.command is None:
            raise ul.ProtocolError("data set fragment without a command set")
        chunk = bytes(fragment)
        if self.incoming is not None:
            self.incoming.write(chunk)
            self.data.append(chunk)
        return bool(header & 0x02)

    def discard(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None


def _abort(writer: asyncio.StreamWriter, reason: int) -> None:
    """Send A-ABORT and drop the connection (best effort: the peer may be gone already)."""
    try:
        if not writer.is_closing():
            writer.write(ul.abort_pdu(reason))
    except (ConnectionError, RuntimeError):
        pass
