"""Framing of multipart/related bodies (RFC 2387) for WADO-RS.

Hand-written (a few lines) rather than aiohttp.MultipartWriter: DICOMweb needs the ``type`` and
``transfer-syntax`` parameters on the top-level and per-part Content-Type, and a body whose total
length is known before the first byte so it can be streamed with a Content-Length.
"""

from __future__ import annotations

import secrets


def new_boundary() -> str:
    """A random boundary: 32 hex digits never occur by chance in an instance's bytes."""
    return "drimbox-" + secrets.token_hex(16)


def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """The response's Content-Type: ``multipart/related; type=...; boundary=...``."""
    ct = f'multipart/related; type="{part_type}"'
    if transfer_syntax:
        ct += f"; transfer-syntax={transfer_syntax}"
    return ct + f"; boundary={boundary}"


def part_header(boundary: str, part_content_type: str, length: int | None = None,
                location: str | None = None) -> bytes:
    """The delimiter and headers that open one part (the body follows directly)."""
    lines = [f"--{boundary}", f"Content-Type: {part_content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if location is not None:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def part_end() -> bytes:
    """The line break that ends a part's body before the next delimiter."""
    return b"\r\n"


def closing(boundary: str) -> bytes:
    """The close delimiter after the last part."""
    return f"--{boundary}--\r\n".encode("ascii")
