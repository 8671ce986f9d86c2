"""MLLP (HL7 v2 over TCP, framing 0x0B ... 0x1C 0x0D) server component and a small client.

Framing is hand-written on the public asyncio stream API: python-hl7's ``hl7.mllp`` reaches into
private ``StreamReader`` internals and offers no idle timeout nor a way to answer an oversized
message, which the box needs. Parsing and ACKs are ``messages``/``ack`` (python-hl7 underneath).

Semantics (original-mode acknowledgement, one message at a time per connection):
- a frame is parsed (HL7, base64 CDA, CDA, identifiers consistency); any refusal is answered
  ``AE``/``AR`` with an ERR segment and the handler is not called;
- otherwise ``await handler(report)``; ``AA`` is sent only after it returns (the handler commits
  the report and its job first). It raises ``Hl7Error`` to refuse; any other exception gives
  ``AE`` with a generic reason and is logged without patient data;
- a repeated MSH-10 control id is the handler's business: it must dedupe (a unique key in the
  database) and return normally, so the sender gets ``AA`` and the report is processed once;
- a frame cut by EOF is dropped (nothing delivered); a frame over ``max_message_bytes`` is
  answered ``AR`` and the connection closed; bytes other than a frame start between frames close
  the connection; no byte for ``idle_timeout`` seconds closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.component import Health
from appliance.config import Hl7Config
from appliance.hl7.ack import build_ack
from appliance.hl7.cda import DEFAULT_MAX_CDA_BYTES
from appliance.hl7.errors import ErrorCode, Hl7Error
from appliance.hl7.messages import Report, read_report
from appliance.logs import new_correlation_id

log = logging.getLogger("drimbox.hl7")

START = b"\x0b"
END = b"\x1c\x0d"
_READ_SIZE = 64 * 1024
_INLINE_PARSE_BYTES = 1024 * 1024
_BETWEEN_FRAMES = b"\r\n"  # tolerated between frames: some senders add a line end

Handler = Callable[[Report], Awaitable[None]]


class FramingError(Exception):
    """The byte stream is not MLLP; the connection cannot be resynchronised."""


class OversizedFrame(FramingError):
    def __init__(self, head: bytes, limit: int) -> None:
        super().__init__(f"message exceeds {limit} bytes")
        self.head = head  # the first bytes, to answer with the sender's MSH


class FrameReader:
    """Yields MLLP frame payloads from a ``StreamReader``, whatever the TCP segmentation."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int,
                 idle_timeout: float | None = None) -> None:
        self._reader = reader
        self._max = max_bytes
        self._idle = idle_timeout
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for END

    async def next(self) -> bytes | None:
        """The next payload; None at a clean EOF or when EOF cuts a frame (the partial frame is
        dropped). Raises ``TimeoutError`` when idle, ``FramingError`` on a stream that is not
        MLLP, ``OversizedFrame`` over the limit."""
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            chunk = await self._read()
            if not chunk:
                return None
            self._buf += chunk

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a complete frame."""
        return len(self._buf)

    def _take(self) -> bytes | None:
        buf = self._buf
        skip = 0
        while skip < len(buf) and buf[skip] in _BETWEEN_FRAMES:
            skip += 1
        if skip:
            del buf[:skip]
            self._scanned = max(0, self._scanned - skip)
        if not buf:
            return None
        if buf[0:1] != START:
            raise FramingError("data outside an MLLP frame")
        end = buf.find(END, max(1, self._scanned - 1))
        if end < 0:
            self._scanned = len(buf)
            if len(buf) - 1 > self._max:
                raise OversizedFrame(bytes(buf[1:4097]), self._max)
            return None
        if end - 1 > self._max:
            raise OversizedFrame(bytes(buf[1:4097]), self._max)
        frame = bytes(buf[1:end])
        del buf[:end + len(END)]
        self._scanned = 0
        return frame

    async def _read(self) -> bytes:
        if self._idle is None:
            return await self._reader.read(_READ_SIZE)
        async with asyncio.timeout(self._idle):
            return await self._reader.read(_READ_SIZE)


def frame(payload: bytes) -> bytes:
    return START + payload + END


class MllpServer:
    """The HL7 intake component (``name = "hl7"``)."""

    name = "hl7"

    def __init__(self, bind: str, port: int, handler: Handler,
                 max_message_bytes: int = 16 * 1024 * 1024, idle_timeout: float = 300.0, *,
                 check_accession: bool = False, max_cda_bytes: int = DEFAULT_MAX_CDA_BYTES,
                 application: str | None = None, facility: str | None = None,
                 max_connections: int = 16, stop_grace: float = 5.0) -> None:
        """``check_accession``: also refuse a message whose OBR-18 differs from the CDA
        accession. Off by default: every ANS referencing sample carries the filler order number
        in OBR-18 (``09011600123``) and the real accession only in the CDA (``ACN103``...); the
        CDA accession is the one the KOS uses and study resolution checks against the PACS.
        ``application``/``facility``: MSH-3/4 of our ACKs (default: the sender's MSH-5/6).
        ``max_connections``: beyond it new connections are closed at once (each may buffer up
        to ``max_message_bytes``)."""
        self.bind = bind
        self.port = port
        self._handler = handler
        self._max = max_message_bytes
        self._idle = idle_timeout
        self._check_accession = check_accession
        self._max_cda = max_cda_bytes
        self._application = application
        self._facility = facility
        self._max_connections = max_connections
        self._grace = stop_grace
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections inside the handler
        self.stats = {"connections": 0, "messages": 0, "accepted": 0, "errors": 0,
                      "rejected": 0, "dropped_partial": 0, "oversized": 0, "idle_closed": 0,
                      "refused_connections": 0}

    @classmethod
    def from_config(cls, config: Hl7Config, handler: Handler, **options: Any) -> MllpServer:
        """The server for the ``[hl7]`` section (ARCHITECTURE.md §7)."""
        return cls(config.bind, config.port, handler, config.max_message_bytes,
                   config.idle_timeout, **options)

    # --- Component -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._on_connection, self.bind, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("hl7 intake listening", extra={"bind": self.bind, "port": self.port})

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        # Connections waiting for the next frame are closed now; one inside the handler gets
        # ``stop_grace`` seconds to commit and send its ACK (an unACKed message is resent).
        idle = [t for t in self._connections if t not in self._busy]
        for t in idle:
            t.cancel()
        busy = list(self._busy)
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self._grace)
            for t in pending:
                t.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        self._stopping = False
        log.info("hl7 intake stopped")

    def health(self) -> Health:
        if self._server is None or not self._server.is_serving():
            return Health(ready=False, status="stopped", details={"port": self.port})
        return Health(ready=True, details={"port": self.port,
                                           "open_connections": len(self._connections),
                                           **self.stats})

    # --- connections -----------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._max_connections:
            self.stats["refused_connections"] += 1
            log.warning("hl7 connection refused: too many open connections",
                        extra={"max_connections": self._max_connections})
            writer.close()
            return
        self._connections.add(task)
        self.stats["connections"] += 1
        frames = FrameReader(reader, self._max, self._idle)
        try:
            while True:
                try:
                    payload = await frames.next()
                except TimeoutError:
                    self.stats["idle_closed"] += 1
                    log.info("hl7 connection idle, closed", extra={"idle_timeout": self._idle})
                    return
                except OversizedFrame as e:
                    self.stats["oversized"] += 1
                    log.warning("hl7 message over the size limit, connection closed",
                                extra={"limit": self._max})
                    head = e.head.decode("utf-8", "replace")
                    await self._send(writer, build_ack(
                        head, Hl7Error("AR", ErrorCode.APPLICATION_INTERNAL_ERROR,
                                       f"message exceeds the {self._max}-byte limit"),
                        self._application, self._facility))
                    await _drain_then_close(reader, writer)
                    return
                except FramingError as e:
                    log.warning("hl7 connection closed: not MLLP", extra={"error": str(e)})
                    return
                if payload is None:
                    if frames.pending:
                        self.stats["dropped_partial"] += 1
                        log.warning("hl7 connection closed in the middle of a frame; "
                                    "nothing delivered", extra={"bytes": frames.pending})
                    return
                self._busy.add(task)  # until the ACK is written: stop() waits for it
                try:
                    await self._send(writer, await self._process(payload))
                finally:
                    self._busy.discard(task)
                if self._stopping:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("hl7 connection lost")
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, ack: str) -> None:
        writer.write(frame(ack.encode("utf-8")))
        await writer.drain()

    async def _process(self, payload: bytes) -> str:
        """One message: the ACK text to send back."""
        new_correlation_id("hl7-")
        self.stats["messages"] += 1
        started = time.monotonic()
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return self._refuse(payload.decode("utf-8", "replace"), Hl7Error(
                "AR", ErrorCode.DATA_TYPE_ERROR,
                f"the message is not valid UTF-8 (byte {e.start}); MSH-18 must be UNICODE UTF-8"))
        try:
            if len(payload) > _INLINE_PARSE_BYTES:  # ~10 ms per MB: keep the loop responsive
                report = await asyncio.to_thread(read_report, text, self._max_cda,
                                                 self._check_accession)
            else:
                report = read_report(text, self._max_cda, self._check_accession)
        except Hl7Error as e:
            return self._refuse(text, e)
        try:
            await self._handler(report)
        except Hl7Error as e:
            return self._refuse(text, e, report.control_id)
        except Exception as e:
            # Exception text may quote patient data: log its type and where it was raised.
            where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            log.error("hl7 handler failed", extra={
                "control_id": report.control_id, "error": type(e).__name__,
                "at": f"{where.filename}:{where.lineno}" if where else ""})
            return self._refuse(text, Hl7Error(
                "AE", ErrorCode.APPLICATION_INTERNAL_ERROR,
                "the report could not be stored; send it again later"), report.control_id)
        self.stats["accepted"] += 1
        log.info("hl7 report accepted", extra={
            "control_id": report.control_id, "event": f"{report.message_type}^{report.trigger}",
            "action": report.effective_action.value,
            "ms": round((time.monotonic() - started) * 1000, 1)})
        return build_ack(text, None, self._application, self._facility)

    def _refuse(self, text: str, error: Hl7Error, control_id: str | None = None) -> str:
        self.stats["rejected" if error.ack_code == "AR" else "errors"] += 1
        log.warning("hl7 message refused", extra={
            "control_id": control_id or "", "ack": error.ack_code,
            "hl7_error": error.hl7_error_code, "reason": error.reason})
        return build_ack(text, error, self._application, self._facility)


async def _drain_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            limit: float = 2.0) -> None:
    """Half-close, then discard what the peer still sends for a moment: closing a socket with
    unread data makes Linux send RST, which can destroy the NAK before the peer reads it."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(limit):
            while await reader.read(_READ_SIZE):
                pass


class MllpClient:
    """A minimal MLLP sender: one message, one ACK at a time (tests, demo, benchmark)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float, max_ack_bytes: int) -> None:
        self._writer = writer
        self._frames = FrameReader(reader, max_ack_bytes)
        self._timeout = timeout

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 30.0,
                      max_ack_bytes: int = 1024 * 1024) -> MllpClient:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, timeout, max_ack_bytes)

    async def send(self, message: str | bytes) -> str:
        """Send one message (CR-separated segments) and return the ACK text. Raises
        ``ConnectionError`` if the server closes the connection without an ACK."""
        data = message.encode("utf-8") if isinstance(message, str) else message
        self._writer.write(frame(data))
        await self._writer.drain()
        return await self.receive()

    async def receive(self) -> str:
        async with asyncio.timeout(self._timeout):
            payload = await self._frames.next()
        if payload is None:
            raise ConnectionError("connection closed by the server without an ACK")
        return payload.decode("utf-8")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> MllpClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def send_message(host: str, port: int, message: str | bytes,
                       timeout: float = 30.0) -> str:
    """Connect, send one message, return its ACK text, close."""
    async with await MllpClient.connect(host, port, timeout) as client:
        return await client.send(message)
