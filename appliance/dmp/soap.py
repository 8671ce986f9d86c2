"""SOAP 1.2 envelopes with WS-Addressing and WS-Security, and their MTOM/XOP packaging.

The envelope is built with lxml. The multipart/related framing of MTOM is a few lines written
here (aiohttp's writer cannot set the ``type``/``start``/``start-info`` parameters XOP needs);
incoming multiparts are parsed by the standard library's ``email`` package, with size limits and
a check for truncation.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import uuid
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote

from lxml import etree

from .codes import NS
from .errors import DmpResponseError
from appliance.xmlsafe import UnsafeXmlError, parse

SOAP = NS["soap"]
WSA = NS["wsa"]
WSSE = NS["wsse"]
XOP = NS["xop"]
SOAP_CT = "application/soap+xml"


def envelope(action: str, to: str, body_child: etree._Element,
             security: etree._Element | None) -> etree._Element:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(env, f"{{{SOAP}}}Header")
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = "urn:uuid:" + str(uuid.uuid4())
    etree.SubElement(header, f"{{{WSA}}}To").text = to
    etree.SubElement(header, f"{{{WSA}}}Action", {f"{{{SOAP}}}mustUnderstand": "true"}
                     ).text = action
    if security is not None:
        sec = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        sec.append(security)
    etree.SubElement(env, f"{{{SOAP}}}Body").append(body_child)
    return env


def xop_include(parent: etree._Element, cid: str) -> None:
    etree.SubElement(parent, f"{{{XOP}}}Include", href="cid:" + cid, nsmap={"xop": XOP})


@dataclass
class Attachment:
    cid: str
    content_type: str
    content: bytes


def mtom(envelope_el: etree._Element, action: str, attachments: list[Attachment]
         ) -> tuple[str, bytes]:
    """(Content-Type header, body) of an MTOM message: part ``0.1`` is the SOAP envelope."""
    boundary = "MIMEBoundary_" + uuid.uuid4().hex
    soap_bytes = etree.tostring(envelope_el, xml_declaration=True, encoding="UTF-8")
    parts = [(f'application/xop+xml; charset=UTF-8; type="{SOAP_CT}"', "0.1", "8bit", soap_bytes)]
    parts += [(a.content_type, a.cid, "binary", a.content) for a in attachments]
    out = bytearray()
    for ctype, cid, cte, data in parts:
        out += (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n"
                f"Content-ID: <{cid}>\r\n\r\n").encode("ascii")
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode("ascii")
    header = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
              f'start="<0.1>"; start-info="{SOAP_CT}"; action="{action}"')
    return header, bytes(out)


@dataclass
class SoapMessage:
    """A received SOAP envelope with its MTOM attachments (by Content-ID, no angle brackets)."""

    envelope: etree._Element
    attachments: dict[str, bytes] = field(default_factory=dict)
    action: str = ""

    @property
    def body(self) -> etree._Element:
        b = self.envelope.find(f"{{{SOAP}}}Body")
        if b is None or len(b) == 0:
            raise DmpResponseError("SOAP envelope without a Body element")
        return b[0]

    def header(self, ns: str, tag: str) -> etree._Element | None:
        h = self.envelope.find(f"{{{SOAP}}}Header")
        return None if h is None else h.find(f"{{{ns}}}{tag}")

    def resolve(self, el: etree._Element) -> bytes:
        """The bytes of a document element: its xop:Include target, else its base64 text."""
        inc = el.find(f"{{{XOP}}}Include")
        if inc is not None:
            href = inc.get("href", "")
            cid = href.removeprefix("cid:")
            cid = unquote(cid)
            if cid not in self.attachments:
                raise DmpResponseError(f"MTOM part {cid!r} referenced but absent")
            return self.attachments[cid]
        try:
            return base64.b64decode((el.text or "").strip(), validate=True)
        except (binascii.Error, ValueError):
            raise DmpResponseError("document content is neither an XOP include nor base64"
                                   ) from None


def _content_type_params(header: str) -> tuple[str, dict[str, str]]:
    msg = Message()
    msg["content-type"] = header
    params = {k.lower(): str(v) for k, v in (msg.get_params(header="content-type") or [])[1:]}
    return msg.get_content_type(), params


def decode(content_type: str, body: bytes, *, limit: int) -> SoapMessage:
    """Parse a SOAP answer or request (plain ``application/soap+xml`` or MTOM); clear errors only."""
    if len(body) > limit:
        raise DmpResponseError(f"message of {len(body)} bytes exceeds the limit of {limit}")
    ctype, params = _content_type_params(content_type or "")
    try:
        if ctype == SOAP_CT or ctype in ("text/xml", "application/xml"):
            return SoapMessage(_envelope(parse(body, limit)), action=params.get("action", ""))
        if ctype != "multipart/related":
            raise DmpResponseError(f"unexpected content type {ctype!r}")
        return _decode_mtom(content_type, params, body, limit)
    except UnsafeXmlError as e:
        raise DmpResponseError(str(e)) from None


def _envelope(root: etree._Element) -> etree._Element:
    if root.tag != f"{{{SOAP}}}Envelope":
        raise DmpResponseError(f"root element {root.tag!r} is not a SOAP 1.2 Envelope")
    return root


def _decode_mtom(content_type: str, params: dict[str, str], body: bytes, limit: int
                 ) -> SoapMessage:
    boundary = params.get("boundary")
    if not boundary:
        raise DmpResponseError("multipart message without a boundary")
    if f"--{boundary}--".encode() not in body:
        raise DmpResponseError("truncated MTOM message: closing boundary missing")
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if msg.defects or not msg.is_multipart():
        raise DmpResponseError(f"malformed MTOM message: {msg.defects or 'not multipart'}")
    parts: dict[str, tuple[str, bytes]] = {}
    order: list[str] = []
    for part in msg.iter_parts():
        if part.defects:
            raise DmpResponseError(f"malformed MTOM part: {part.defects}")
        cid = str(part.get("Content-ID", "")).strip().strip("<>")
        if not cid:
            raise DmpResponseError("MTOM part without a Content-ID")
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            raise DmpResponseError("MTOM part without content")
        parts[cid] = (part.get_content_type(), data)
        order.append(cid)
    start = params.get("start", "").strip().strip("<>") or (order[0] if order else "")
    if start not in parts:
        raise DmpResponseError("MTOM root part (start) absent")
    root_type, root_bytes = parts.pop(start)
    if root_type != "application/xop+xml":
        raise DmpResponseError(f"MTOM root part has type {root_type!r}, not application/xop+xml")
    env = _envelope(parse(root_bytes, limit))
    return SoapMessage(env, {cid: data for cid, (_, data) in parts.items()},
                       action=params.get("action", ""))
