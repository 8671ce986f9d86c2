"""A strict DMP simulator: an aiohttp HTTPS server on loopback that requires a client certificate
and answers ITI-41, ITI-18, ITI-43, ITI-57 and TD0.2 with the real semantics (see checks.py for
what it refuses). The real DMP cannot be reached from a test machine, hence this server.

Control (``/_control/…``) injects faults and registers patients; inspection (``/_inspect/…``)
shows what was stored. Both sit behind the same mTLS as the services.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import socket
import ssl
import struct
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from lxml import etree

from .checks import (
    NS,
    Entry,
    Refusal,
    S,
    SecurityFault,
    Vihf,
    author_structure,
    check_addressing,
    check_document_entry,
    check_submission_set,
    check_vihf,
    check_xades,
    classifications,
    coded,
    external,
    ou,
    parse_xml,
    q,
    slots,
    stored_query_values,
)

BASE = "/si-dmp-server/v2/services"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
ACTIONS = {
    ("repository", "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"): "iti41",
    ("repository", "urn:ihe:iti:2007:RetrieveDocumentSet"): "iti43",
    ("registry", "urn:ihe:iti:2007:RegistryStoredQuery"): "iti18",
    ("registry", "urn:ihe:iti:2010:UpdateDocumentSet"): "iti57",
    ("patients", "urn:hl7-org:v3:PRPA_IN201307UV02"): "td02",
}
ERROR_TAGS = {"iti18": "query:AdhocQueryResponse"}
TRANSITIONS = {(APPROVED, DELETED), (APPROVED, ARCHIVED), (ARCHIVED, APPROVED),
               (ARCHIVED, DELETED)}


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class DmpSimulator:
    def __init__(self, *, cert: Path, key: Path, client_ca: Path,
                 trust_anchors: list[Path] | None = None, host: str = "127.0.0.1", port: int = 0,
                 limit: int = 32 * 1024 * 1024) -> None:
        self.host, self.port, self.limit = host, port, limit
        self._ssl = server_context(cert, key, client_ca)
        self.anchors = [c for p in (trust_anchors or [client_ca])
                        for c in x509.load_pem_x509_certificates(p.read_bytes())]
        self.repository_id = "1.2.250.1.213.1.1.9.999"
        self._runner: web.AppRunner | None = None
        self.reset()

    # ----- state -----

    def reset(self) -> None:
        self.patients: dict[str, dict[str, str]] = {}
        self.entries: dict[str, Entry] = {}
        self.by_unique: dict[str, str] = {}
        self.submission_set_uids: set[str] = set()
        self.submissions: list[bytes] = []
        self.faults: list[dict[str, Any]] = []
        self.stats: dict[str, int] = {}

    def add_patient(self, patient_id: str, authorization: str = "VALIDE",
                    opposition: str = "no") -> None:
        self.patients[patient_id] = {"authorization": authorization, "opposition": opposition}

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}{BASE}"

    # ----- lifecycle -----

    async def start(self) -> None:
        app = web.Application(client_max_size=self.limit)
        app.router.add_post(BASE + "/{service}", self._service)
        app.router.add_post("/_control/patients", self._ctl_patient)
        app.router.add_post("/_control/faults", self._ctl_fault)
        app.router.add_delete("/_control/faults", self._ctl_clear_faults)
        app.router.add_post("/_control/reset", self._ctl_reset)
        app.router.add_get("/_inspect/entries", self._insp_entries)
        app.router.add_get("/_inspect/entries/{entry_uuid}/metadata", self._insp_metadata)
        app.router.add_get("/_inspect/documents/{unique_id}", self._insp_document)
        app.router.add_get("/_inspect/submissions/last", self._insp_last)
        app.router.add_get("/_inspect/stats", self._insp_stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- control & inspection -----

    async def _ctl_patient(self, request: web.Request) -> web.Response:
        d = await request.json()
        self.add_patient(d["patient_id"], d.get("authorization", "VALIDE"),
                         d.get("opposition", "no"))
        return web.json_response({"ok": True})

    async def _ctl_fault(self, request: web.Request) -> web.Response:
        d = await request.json()
        if d.get("kind") not in ("latency", "status", "reset", "registry_error", "bomb",
                                 "wrong_namespace", "truncated_mtom", "oversized", "garbage",
                                 "soap_fault"):
            return web.json_response({"error": "unknown fault kind"}, status=400)
        d.setdefault("times", 1)
        self.faults.append(d)
        return web.json_response({"ok": True})

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"ok": True})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _insp_entries(self, request: web.Request) -> web.Response:
        out = []
        for e in self.entries.values():
            d = asdict(e)
            d.pop("xml"), d.pop("content")
            d["size"] = len(e.content)
            out.append(d)
        return web.json_response(out)

    async def _insp_metadata(self, request: web.Request) -> web.Response:
        e = self.entries.get(request.match_info["entry_uuid"])
        if e is None:
            raise web.HTTPNotFound()
        return web.Response(body=e.xml, content_type="text/xml")

    async def _insp_document(self, request: web.Request) -> web.Response:
        eid = self.by_unique.get(request.match_info["unique_id"])
        if eid is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.entries[eid].content,
                            content_type="application/octet-stream")

    async def _insp_last(self, request: web.Request) -> web.Response:
        if not self.submissions:
            raise web.HTTPNotFound()
        return web.Response(body=self.submissions[-1], content_type="text/xml")

    async def _insp_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    # ----- services -----

    def _take_fault(self, service: str) -> dict[str, Any] | None:
        for f in self.faults:
            if f.get("service") in (None, service):
                f["times"] -= 1
                if f["times"] <= 0:
                    self.faults.remove(f)
                return f
        return None

    async def _service(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        fault = self._take_fault(service)
        if fault is not None:
            hostile = await self._apply_fault(request, fault)
            if hostile is not None:
                return hostile
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413)
        try:
            env, parts, ctype_action = self._decode(request.headers.get("Content-Type", ""), body)
            action = env.findtext("soap:Header/wsa:Action", "", NS).strip()
            kind = ACTIONS.get((service, action))
            if kind is None or (ctype_action and ctype_action != action):
                raise SecurityFault("wsa:ActionNotSupported",
                                    f"action {action!r} not served on {service}")
            self.stats[kind] = self.stats.get(kind, 0) + 1
            check_addressing(env, action)
            vihf = check_vihf(env, self.anchors)
            tls_cert = self._peer_cert(request)
            if vihf.cert is not None and ou(vihf.cert) != ou(tls_cert):
                raise SecurityFault("wsse:FailedAuthentication",
                                    "VIHF signed by another organisation than the TLS client")
            if fault is not None and fault["kind"] == "registry_error":
                raise Refusal(fault.get("code", "XDSRegistryError"), fault.get("text", ""))
            handler = getattr(self, "_" + kind)
            return await handler(env, parts, vihf, action)
        except SecurityFault as e:
            return self._fault(e.subcode, e.text)
        except Refusal as e:
            if service == "patients":
                return self._fault("dmp:" + e.code, e.text)
            act = action if "action" in locals() else ""
            kind = ACTIONS.get((service, act))
            rr = self._registry_response([(e.code, e.text)], ERROR_TAGS.get(kind or "",
                                                                          "rs:RegistryResponse"))
            if kind == "iti43":
                wrapper = etree.Element(q("xds", "RetrieveDocumentSetResponse"),
                                        nsmap={"xds": NS["xds"]})
                wrapper.append(rr)
                rr = wrapper
            return self._respond(service, act, rr)

    async def _apply_fault(self, request: web.Request, f: dict[str, Any]
                           ) -> web.StreamResponse | None:
        kind = f["kind"]
        if kind == "latency":
            await asyncio.sleep(float(f.get("seconds", 1.0)))
            return None
        if kind == "status":
            return web.Response(status=int(f.get("status", 503)), text="Service Unavailable")
        if kind == "reset":
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if kind == "soap_fault":
            return self._fault(f.get("code", "wsse:InvalidSecurity"), f.get("text", "refused"),
                               receiver=bool(f.get("receiver")))
        if kind == "bomb":
            lol = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                   + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i else "")) * 10}">'
                             for i in range(1, 10)).replace("&lol0;", "&lol;")
                   + ']><soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">'
                   '<soap:Body><x>&lol9;</x></soap:Body></soap:Envelope>')
            return web.Response(body=lol.encode(), content_type="application/soap+xml")
        if kind == "wrong_namespace":
            return web.Response(body=b'<?xml version="1.0"?><soap:Envelope xmlns:soap='
                                b'"http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                                b'<RegistryResponse status="urn:oasis:names:tc:ebxml-regrep:'
                                b'ResponseStatusType:Success"/></soap:Body></soap:Envelope>',
                                content_type="application/soap+xml")
        if kind == "truncated_mtom":
            env = self._envelope("x", self._registry_response([]))
            ct, data = self._mtom(env, [])
            return web.Response(body=data[: len(data) // 2], headers={"Content-Type": ct})
        if kind == "oversized":
            return web.Response(body=b"<a>" + b"x" * int(f.get("bytes", 2 * 1024 * 1024))
                                + b"</a>", content_type="application/soap+xml")
        if kind == "garbage":
            return web.Response(body=bytes(range(256)) * 8, content_type="application/soap+xml")
        return None

    @staticmethod
    def _peer_cert(request: web.Request) -> x509.Certificate:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        if not der:
            raise SecurityFault("wsse:FailedAuthentication", "no TLS client certificate")
        return x509.load_der_x509_certificate(der)

    def _decode(self, content_type: str, body: bytes
                ) -> tuple[etree._Element, dict[str, bytes], str]:
        msg = Message()
        msg["content-type"] = content_type
        ctype = msg.get_content_type()
        params = {k.lower(): v for k, v in msg.get_params()[1:]}
        if ctype == "application/soap+xml":
            env, parts = parse_xml(body, self.limit), {}
        elif ctype == "multipart/related":
            if params.get("type") != "application/xop+xml" or params.get(
                    "start-info") != "application/soap+xml":
                raise Refusal("XDSRegistryError", "MTOM needs type=application/xop+xml and "
                              "start-info=application/soap+xml")
            boundary = params.get("boundary", "")
            if not boundary or f"--{boundary}--".encode() not in body:
                raise Refusal("XDSRegistryError", "truncated or unframed MTOM request")
            m = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
            if m.defects:
                raise Refusal("XDSRegistryError", "malformed MTOM request")
            parts = {}
            for p in m.iter_parts():
                cid = str(p.get("Content-ID", "")).strip().strip("<>")
                parts[cid] = p.get_payload(decode=True) or b""
            start = params.get("start", "").strip("<>")
            if start not in parts:
                raise Refusal("XDSRegistryError", "MTOM start part missing")
            env = parse_xml(parts.pop(start), self.limit)
        else:
            raise Refusal("XDSRegistryError", f"unsupported content type {ctype}")
        if env.tag != q("soap", "Envelope"):
            raise Refusal("XDSRegistryError", "not a SOAP 1.2 envelope")
        return env, parts, params.get("action", "")

    # ----- answers -----

    def _envelope(self, action: str, body: etree._Element) -> etree._Element:
        env = etree.Element(q("soap", "Envelope"), nsmap={"soap": NS["soap"], "wsa": NS["wsa"]})
        h = etree.SubElement(env, q("soap", "Header"))
        etree.SubElement(h, q("wsa", "Action")).text = action + "Response"
        etree.SubElement(h, q("wsa", "MessageID")).text = "urn:uuid:" + str(uuid.uuid4())
        etree.SubElement(env, q("soap", "Body")).append(body)
        return env

    @staticmethod
    def _mtom(env: etree._Element, parts: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
        boundary = "uuid:" + str(uuid.uuid4())
        out = bytearray()
        allparts = [("0.1", 'application/xop+xml; charset=UTF-8; type="application/soap+xml"',
                     etree.tostring(env, xml_declaration=True, encoding="UTF-8"))] + parts
        for cid, ctype, data in allparts:
            out += (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: "
                    f"binary\r\nContent-ID: <{cid}>\r\n\r\n").encode()
            out += data + b"\r\n"
        out += f"--{boundary}--\r\n".encode()
        return (f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
                f'start="<0.1>"; start-info="application/soap+xml"'), bytes(out)

    def _respond(self, service: str, action: str, body: etree._Element,
                 parts: list[tuple[str, str, bytes]] | None = None) -> web.Response:
        env = self._envelope(action, body)
        if service == "repository":
            ct, data = self._mtom(env, parts or [])
            return web.Response(body=data, headers={"Content-Type": ct})
        return web.Response(body=etree.tostring(env, xml_declaration=True, encoding="UTF-8"),
                            headers={"Content-Type": "application/soap+xml; charset=UTF-8"})

    def _fault(self, subcode: str, text: str, receiver: bool = False) -> web.Response:
        env = etree.Element(q("soap", "Envelope"), nsmap={"soap": NS["soap"], "wsse": NS["wsse"],
                                                           "dmp": "urn:dmp:errors"})
        f = etree.SubElement(etree.SubElement(env, q("soap", "Body")), q("soap", "Fault"))
        code = etree.SubElement(f, q("soap", "Code"))
        etree.SubElement(code, q("soap", "Value")).text = "soap:Receiver" if receiver \
            else "soap:Sender"
        etree.SubElement(etree.SubElement(code, q("soap", "Subcode")), q("soap", "Value")
                         ).text = subcode
        reason = etree.SubElement(f, q("soap", "Reason"))
        t = etree.SubElement(reason, q("soap", "Text"))
        t.set("{http://www.w3.org/XML/1998/namespace}lang", "fr")
        t.text = text
        return web.Response(status=500, body=etree.tostring(env, xml_declaration=True,
                                                            encoding="UTF-8"),
                            headers={"Content-Type": "application/soap+xml; charset=UTF-8"})

    @staticmethod
    def _registry_response(errors: list[tuple[str, str]], tag: str = "rs:RegistryResponse"
                           ) -> etree._Element:
        prefix, name = tag.split(":")
        rr = etree.Element(q(prefix, name), status=FAILURE if errors else SUCCESS,
                           nsmap={prefix: NS[prefix], "rs": NS["rs"]})
        if errors:
            rel = etree.SubElement(rr, q("rs", "RegistryErrorList"))
            for code, text in errors:
                etree.SubElement(rel, q("rs", "RegistryError"), errorCode=code, codeContext=text,
                                 severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:"
                                          "Error", location="DMP simulator")
        return rr

    # ----- ITI-41 -----

    async def _iti41(self, env: etree._Element, parts: dict[str, bytes], vihf: Vihf,
                     action: str) -> web.Response:
        req = env.find("soap:Body/xds:ProvideAndRegisterDocumentSetRequest", NS)
        rol = None if req is None else req.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList",
                                                 NS)
        if req is None or rol is None:
            raise Refusal("XDSRegistryError", "ProvideAndRegisterDocumentSetRequest expected")
        if vihf.mode != "INDIRECTE":
            raise SecurityFault("wsse:FailedAuthentication",
                                "publication requires Authentification_Mode INDIRECTE")
        docs: dict[str, bytes] = {}
        for d in req.findall("xds:Document", NS):
            inc = d.find("xop:Include", NS)
            if inc is not None:
                cid = inc.get("href", "").removeprefix("cid:")
                if cid not in parts:
                    raise Refusal("XDSMissingDocument", f"MTOM part {cid} missing")
                docs[d.get("id", "")] = parts[cid]
            else:
                try:
                    docs[d.get("id", "")] = base64.b64decode(d.text or "", validate=True)
                except ValueError:
                    raise Refusal("XDSRegistryError", "document neither XOP nor base64") from None
        sub = check_submission_set(rol)
        if sub.patient_id not in self.patients:
            raise Refusal("XDSUnknownPatientId", "no DMP for this patient")
        if vihf.patient_id != sub.patient_id:
            raise SecurityFault("wsse:FailedAuthentication",
                                "VIHF resource-id is not the submission's patient")
        ids = {eo.get("id", "") for eo in sub.documents}
        for did in docs:
            if did not in ids:
                raise Refusal("XDSMissingDocumentMetadata", f"document {did} without metadata")
        kos, sig = [], []
        uids: list[str] = []
        for eo in sub.documents:
            eid = eo.get("id", "")
            if eid not in docs:
                raise Refusal("XDSMissingDocument", f"DocumentEntry {eid} without its document")
            is_sig = check_document_entry(eo, sub.patient_id, docs[eid])
            (sig if is_sig else kos).append(eo)
            uids.append(external(eo, S["de_unique"]) or "")
        if len(sig) != 1 or not kos:
            raise Refusal("XDSRegistryMetadataError",
                          "a DMP imaging submission holds KOS documents and one signature")
        for u in uids + [sub.uid]:
            if u in self.by_unique or u in self.submission_set_uids or uids.count(u) > 1:
                raise Refusal("XDSDuplicateUniqueIdInRegistry", f"uniqueId {u} already used")
        ss_id = sub.package.get("id", "")
        members, signs, replaced = set(), False, []
        for a in sub.associations:
            kind, src, tgt = (a.get("associationType"), a.get("sourceObject"),
                              a.get("targetObject"))
            if kind == "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember":
                if src != ss_id or slots(a).get("SubmissionSetStatus") != ["Original"]:
                    raise Refusal("XDSRegistryMetadataError", "malformed HasMember association")
                members.add(tgt)
            elif kind == "urn:ihe:iti:2007:AssociationType:signs":
                signs = src == sig[0].get("id") and tgt == ss_id
            elif kind == "urn:ihe:iti:2007:AssociationType:RPLC":
                old = self.entries.get(tgt or "")
                if src not in {e.get("id") for e in kos} or old is None:
                    raise Refusal("UnresolvedReferenceException",
                                  "RPLC target is not a known DocumentEntry")
                if old.status != APPROVED:
                    raise Refusal("XDSRegistryError", "only an Approved entry can be replaced")
                if old.patient_id != sub.patient_id:
                    raise Refusal("XDSPatientIdDoesNotMatch", "RPLC target is another patient")
                replaced.append(old)
            else:
                raise Refusal("XDSRegistryMetadataError", f"unexpected association {kind}")
        if members != ids:
            raise Refusal("XDSRegistryMetadataError", "every DocumentEntry must be a member of "
                          "the SubmissionSet")
        if not signs:
            raise Refusal("XDSRegistryMetadataError", "signs association Signature->SubmissionSet "
                          "missing")
        sig_uid = external(sig[0], S["de_unique"]) or ""
        kos_docs = {external(e, S["de_unique"]) or "": docs[e.get("id", "")] for e in kos}
        sig_cert = check_xades(docs[sig[0].get("id", "")], sub.uid, kos_docs, sig_uid,
                               self.anchors, self.limit)
        if vihf.cert is not None and ou(sig_cert) != ou(vihf.cert):
            raise Refusal("XDSRegistryMetadataError", "XAdES signed by another organisation")
        # Everything checked: store in one go (nothing half-stored on refusal).
        self.submissions.append(etree.tostring(rol))
        self.submission_set_uids.add(sub.uid)
        for eo in sub.documents:
            self._store(eo, docs[eo.get("id", "")], sub.uid, sub.patient_id, eo in sig)
        for old in replaced:
            old.status = DEPRECATED
        return self._respond("repository", action, self._registry_response([]))

    def _store(self, eo: etree._Element, content: bytes, ss_uid: str, patient_id: str,
               is_sig: bool) -> None:
        entry_uuid = "urn:uuid:" + str(uuid.uuid4())
        eo = etree.fromstring(etree.tostring(eo))
        symbolic = eo.get("id")
        eo.set("id", entry_uuid)
        for el in eo.iter():
            for attr in ("classifiedObject", "registryObject"):
                if el.get(attr) == symbolic:
                    el.set(attr, entry_uuid)
        slot = etree.SubElement(eo, q("rim", "Slot"), name="repositoryUniqueId")
        etree.SubElement(etree.SubElement(slot, q("rim", "ValueList")), q("rim", "Value")
                         ).text = self.repository_id
        # ebRIM order: Slots first.
        eo.remove(slot)
        eo.insert(0, slot)
        s = slots(eo)
        unique_id = external(eo, S["de_unique"]) or ""
        self.entries[entry_uuid] = Entry(
            entry_uuid=entry_uuid, unique_id=unique_id, patient_id=patient_id,
            mime_type=eo.get("mimeType", ""), status=APPROVED, xml=etree.tostring(eo),
            content=content, submission_set_uid=ss_uid,
            structure=author_structure(eo, S["de_author"]), is_signature=is_sig,
            reference_ids=s.get("urn:ihe:iti:xds:2013:referenceIdList", []),
            event_codes=[coded(c) for c in classifications(eo, S["event"])],
            class_code=coded(classifications(eo, S["class"])[0]),
            creation_time=s.get("creationTime", [""])[0])
        self.by_unique[unique_id] = entry_uuid

    # ----- reading rights -----

    def _readable(self, e: Entry, vihf: Vihf) -> bool:
        if e.patient_id != vihf.patient_id or e.status == DELETED:
            return False
        own = e.structure == vihf.structure
        if vihf.mode == "INDIRECTE" and not own:
            return False  # a box on its own may only read back what its structure published
        masked = b'nodeRepresentation="MASQUE_PS"' in e.xml
        return own or not masked

    # ----- ITI-18 -----

    async def _iti18(self, env: etree._Element, parts: dict[str, bytes], vihf: Vihf,
                     action: str) -> web.Response:
        req = env.find("soap:Body/query:AdhocQueryRequest", NS)
        if req is None:
            raise Refusal("XDSRegistryError", "AdhocQueryRequest expected")
        opt = req.find("query:ResponseOption", NS)
        rtype = opt.get("returnType") if opt is not None else None
        if rtype not in ("ObjectRef", "LeafClass"):
            raise Refusal("XDSRegistryError", "returnType must be ObjectRef or LeafClass")
        aq = req.find("rim:AdhocQuery", NS)
        if aq is None:
            raise Refusal("XDSRegistryError", "AdhocQuery expected")
        params: dict[str, list[list[str]]] = {}
        for s in aq.findall("rim:Slot", NS):
            params[s.get("name", "")] = [stored_query_values(v.text or "")
                                         for v in s.iterfind("rim:ValueList/rim:Value", NS)]
        qid = aq.get("id")
        known = {
            "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d": (
                {"$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus"},
                {"$XDSDocumentEntryEventCodeList", "$XDSDocumentEntryCreationTimeFrom",
                 "$XDSDocumentEntryCreationTimeTo", "$XDSDocumentEntryClassCode"}),
            "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492": (
                {"$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus",
                 "$XDSDocumentEntryReferenceIdList"}, set()),
            "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4": (set(), {
                "$XDSDocumentEntryUniqueId", "$XDSDocumentEntryEntryUUID"}),
        }
        if qid not in known:
            raise Refusal("XDSUnknownStoredQuery", f"stored query {qid} not supported")
        required, optional = known[qid]
        for p in required:
            if p not in params:
                raise Refusal("XDSStoredQueryParamNumber", f"parameter {p} missing")
        for p in params:
            if p not in required | optional:
                raise Refusal("XDSStoredQueryParamNumber", f"parameter {p} unknown")
        found: list[Entry]
        if qid == "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4":
            uids = [v for group in params.get("$XDSDocumentEntryUniqueId", []) for v in group]
            euids = [v for group in params.get("$XDSDocumentEntryEntryUUID", []) for v in group]
            if bool(uids) == bool(euids):
                raise Refusal("XDSStoredQueryParamNumber",
                              "give either $XDSDocumentEntryUniqueId or $XDSDocumentEntryEntryUUID")
            ids = euids or [self.by_unique.get(u, "") for u in uids]
            found = [self.entries[i] for i in ids if i in self.entries]
        else:
            pid = params["$XDSDocumentEntryPatientId"]
            if len(pid) != 1 or len(pid[0]) != 1:
                raise Refusal("XDSStoredQueryParamNumber", "one patient id expected")
            if pid[0][0] != vihf.patient_id:
                raise SecurityFault("wsse:FailedAuthentication",
                                    "VIHF resource-id is not the queried patient")
            statuses = {v for group in params["$XDSDocumentEntryStatus"] for v in group}
            found = [e for e in self.entries.values()
                     if e.patient_id == pid[0][0] and e.status in statuses]
            for group in params.get("$XDSDocumentEntryEventCodeList", []):
                wanted = {tuple(v.split("^^", 1)) for v in group}
                found = [e for e in found if wanted & set(e.event_codes)]
            for group in params.get("$XDSDocumentEntryClassCode", []):
                classes = {tuple(v.split("^^", 1)) for v in group}
                found = [e for e in found if e.class_code in classes]
            for name, keep in (("$XDSDocumentEntryCreationTimeFrom", lambda t, b: t >= b),
                               ("$XDSDocumentEntryCreationTimeTo", lambda t, b: t < b)):
                if name in params:
                    bound = params[name][0][0]
                    found = [e for e in found if keep(e.creation_time[:len(bound)], bound)]
            if "$XDSDocumentEntryReferenceIdList" in params:
                refs = {v for group in params["$XDSDocumentEntryReferenceIdList"] for v in group}
                found = [e for e in found if refs & set(e.reference_ids)]
        found = [e for e in found if self._readable(e, vihf)]
        resp = self._registry_response([], "query:AdhocQueryResponse")
        rol = etree.SubElement(resp, q("rim", "RegistryObjectList"), nsmap={"rim": NS["rim"]})
        for e in found:
            if rtype == "ObjectRef":
                etree.SubElement(rol, q("rim", "ObjectRef"), id=e.entry_uuid)
            else:
                eo = etree.fromstring(e.xml)
                eo.set("status", e.status)
                rol.append(eo)
        return self._respond("registry", action, resp)

    # ----- ITI-43 -----

    async def _iti43(self, env: etree._Element, parts: dict[str, bytes], vihf: Vihf,
                     action: str) -> web.Response:
        reqs = env.findall("soap:Body/xds:RetrieveDocumentSetRequest/xds:DocumentRequest", NS)
        if not reqs:
            raise Refusal("XDSRegistryError", "RetrieveDocumentSetRequest expected")
        resp = etree.Element(q("xds", "RetrieveDocumentSetResponse"), nsmap={"xds": NS["xds"]})
        resp.append(self._registry_response([]))
        out_parts = []
        for i, r in enumerate(reqs):
            repo = r.findtext("xds:RepositoryUniqueId", "", NS).strip()
            uid = r.findtext("xds:DocumentUniqueId", "", NS).strip()
            if repo != self.repository_id:
                raise Refusal("XDSUnknownRepositoryId", f"repository {repo} unknown")
            e = self.entries.get(self.by_unique.get(uid, ""))
            if e is None or not self._readable(e, vihf):
                raise Refusal("XDSDocumentUniqueIdError", f"document {uid} not found")
            dr = etree.SubElement(resp, q("xds", "DocumentResponse"))
            etree.SubElement(dr, q("xds", "RepositoryUniqueId")).text = repo
            etree.SubElement(dr, q("xds", "DocumentUniqueId")).text = uid
            etree.SubElement(dr, q("xds", "mimeType")).text = e.mime_type
            cid = f"doc{i}@dmp-simulator"
            etree.SubElement(etree.SubElement(dr, q("xds", "Document")), q("xop", "Include"),
                             href="cid:" + cid, nsmap={"xop": NS["xop"]})
            out_parts.append((cid, "application/octet-stream", e.content))
        return self._respond("repository", action, resp, out_parts)

    # ----- ITI-57 -----

    async def _iti57(self, env: etree._Element, parts: dict[str, bytes], vihf: Vihf,
                     action: str) -> web.Response:
        rol = env.find("soap:Body/lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
        if rol is None:
            raise Refusal("XDSRegistryError", "SubmitObjectsRequest expected")
        if vihf.mode != "INDIRECTE":
            raise SecurityFault("wsse:FailedAuthentication",
                                "metadata update requires Authentification_Mode INDIRECTE")
        sub = check_submission_set(rol)
        if vihf.patient_id != sub.patient_id:
            raise SecurityFault("wsse:FailedAuthentication",
                                "VIHF resource-id is not the submission's patient")
        changes = []
        for a in sub.associations:
            if a.get("associationType") != \
                    "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus":
                raise Refusal("XDSMetadataUpdateError", "only UpdateAvailabilityStatus supported")
            s = slots(a)
            orig, new = s.get("OriginalStatus", [""])[0], s.get("NewStatus", [""])[0]
            e = self.entries.get(a.get("targetObject", ""))
            if e is None or e.status == DELETED:
                raise Refusal("UnresolvedReferenceException", "target entry unknown")
            if e.patient_id != sub.patient_id:
                raise Refusal("XDSPatientIdDoesNotMatch", "target entry is another patient")
            if e.structure != vihf.structure:
                raise Refusal("XDSMetadataUpdateError", "only the author structure may update")
            if orig != e.status:
                raise Refusal("XDSMetadataUpdateError", "OriginalStatus is not the entry's status")
            if (orig, new) not in TRANSITIONS:
                raise Refusal("XDSMetadataUpdateError", f"status change to {new} not allowed")
            changes.append((e, new))
        if not changes:
            raise Refusal("XDSMetadataUpdateError", "no status change requested")
        if sub.uid in self.submission_set_uids:
            raise Refusal("XDSDuplicateUniqueIdInRegistry", "SubmissionSet uniqueId reused")
        self.submission_set_uids.add(sub.uid)
        for e, new in changes:
            e.status = new
        return self._respond("registry", action, self._registry_response([]))

    # ----- TD0.2 -----

    async def _td02(self, env: etree._Element, parts: dict[str, bytes], vihf: Vihf,
                    action: str) -> web.Response:
        m = env.find("soap:Body/hl7:PRPA_IN201307UV02", NS)
        if m is None:
            raise Refusal("XDSRegistryError", "PRPA_IN201307UV02 expected")
        rc = m.find("hl7:controlActProcess/hl7:reasonCode", NS)
        if rc is None or rc.get("code") != "TEST_EXST" or rc.get(
                "codeSystem") != "1.2.250.1.213.1.1.4.11":
            raise Refusal("REQUETE_INVALIDE", "reasonCode TEST_EXST (1.2.250.1.213.1.1.4.11) "
                          "expected")
        v = m.find("hl7:controlActProcess/hl7:queryByParameter/hl7:parameterList/"
                   "hl7:patientIdentifier/hl7:value", NS)
        if v is None:
            raise Refusal("REQUETE_INVALIDE", "patientIdentifier expected")
        pid = f"{v.get('extension')}^^^&{v.get('root')}&ISO^NH"
        if vihf.mode != "INDIRECTE_RENFORCEE":
            raise SecurityFault("wsse:FailedAuthentication",
                                "access check requires Authentification_Mode INDIRECTE_RENFORCEE")
        if pid != vihf.patient_id:
            raise SecurityFault("wsse:FailedAuthentication", "VIHF resource-id is not the patient")
        patient = self.patients.get(pid)
        H = NS["hl7"]
        r = etree.Element(f"{{{H}}}PRPA_IN201306UV02", ITSVersion="XML_1.0", nsmap={None: H})
        etree.SubElement(r, f"{{{H}}}id", root="1.2.250.1.213.4.1.1.1", extension=str(uuid.uuid4()))
        etree.SubElement(r, f"{{{H}}}creationTime",
                         value=datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
        ack = etree.SubElement(r, f"{{{H}}}acknowledgement")
        etree.SubElement(ack, f"{{{H}}}typeCode", code="AA")
        cap = etree.SubElement(r, f"{{{H}}}controlActProcess", classCode="CACT", moodCode="EVN")
        if patient is not None:
            ev = etree.SubElement(etree.SubElement(cap, f"{{{H}}}subject", typeCode="SUBJ"),
                                  f"{{{H}}}registrationEvent", classCode="REG", moodCode="EVN")
            pat = etree.SubElement(etree.SubElement(ev, f"{{{H}}}subject1", typeCode="SBJ"),
                                   f"{{{H}}}patient", classCode="PAT")
            etree.SubElement(pat, f"{{{H}}}id", root=v.get("root", ""),
                             extension=v.get("extension", ""))
            for code, value in (("AUTORISATION", patient["authorization"]),
                                ("OPPOSITION", patient["opposition"])):
                ob = etree.SubElement(etree.SubElement(pat, f"{{{H}}}subjectOf"),
                                      f"{{{H}}}administrativeObservation", classCode="VERIF",
                                      moodCode="EVN")
                etree.SubElement(ob, f"{{{H}}}code", code=code, codeSystem="1.2.250.1.213.4.1.2.3")
                etree.SubElement(ob, f"{{{H}}}value", code=value)
        qa = etree.SubElement(cap, f"{{{H}}}queryAck")
        etree.SubElement(qa, f"{{{H}}}queryResponseCode", code="OK" if patient else "NF")
        return self._respond("patients", action, r)
