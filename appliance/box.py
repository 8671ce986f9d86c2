"""The composition root: which components a box runs, built from its configuration.

Roles and components never construct each other; everything is wired here, once. Start order is
list order: state first, then keys and the TLS gateway, the DICOM node and PACS link, the DMP link,
the source role (outbox, IOCM, HL7 intake), and HTTP last, so /healthz answers only when the rest
is up.

This process never loads pkcs11-provider: TLS with a token key (DMP mTLS, the HTTPS server) runs in
the TLS gateway child process (``appliance.tlsgateway``), so the daemon's PKCS#11 module can be
re-initialised when its token comes back.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from aiohttp import web

from appliance.component import Component
from appliance.config import Config
from appliance.daemon import Daemon
from appliance.dicom.scp import DicomNode
from appliance.dicom.scu import PacsLink
from appliance.dicomweb import server as dicomweb
from appliance.store import Store
from appliance.store.component import StoreComponent
from appliance.trust.guard import Guard
from appliance.trust.published import PublishedKos
from appliance.trust.sessions import SessionStore
from appliance.web import admin
from appliance.web.server import HttpServer, make_app

log = logging.getLogger(__name__)


def build(config: Config) -> Daemon:
    store = Store(config)
    pacs = PacsLink(config, store)
    components: list[Component] = [StoreComponent(store)]
    keys = None
    if config.hsm.enabled:
        from appliance.keys import KeysComponent

        keys = KeysComponent(config.hsm, cert_dir=config.box.data_dir / "certs")
        components.append(keys)
    gateway = _tls_gateway(config, keys)
    if gateway is not None:
        components.append(gateway)
    psc = None
    if config.psc.enabled and gateway is not None:  # psc.enabled needs hsm.enabled: a gateway
        from appliance.psc.link import PscLink

        psc = PscLink(config, gateway)
        components.append(psc)
    components += [DicomNode(config, store), pacs]

    outbox = None
    if config.roles.source:
        from appliance.dmp.link import DmpLink
        from appliance.hl7.mllp import MllpServer
        from appliance.source.intake import ReportIntake
        from appliance.source.iocm import IocmWatcher
        from appliance.source.outbox import Outbox
        from appliance.source.publisher import Publisher

        if keys is None or not config.dmp.enabled:
            raise SystemExit("roles.source needs hsm.enabled and dmp.enabled: the source role "
                             "signs and publishes with the structure's token keys")
        dmp = DmpLink(config, keys, gateway)
        publisher = Publisher(config, store.db_lazy, pacs, dmp,
                              image_retry_max=config.source.image_retry_max, store=store)
        outbox = Outbox(store.db_lazy, {"report": publisher.report, "iocm": publisher.iocm})
        intake = ReportIntake(store.db_lazy, config.source.image_wait, outbox.wake)
        hl7 = MllpServer(config.hl7.bind, config.hl7.port, intake.handle,
                         max_message_bytes=config.hl7.max_message_bytes,
                         idle_timeout=config.hl7.idle_timeout,
                         check_accession=config.source.check_accession)
        components += [dmp, outbox, IocmWatcher(store, outbox.wake), hl7]

    whitelist = None
    if config.trust.whitelist_url:
        from appliance.trust.service import WhitelistService

        whitelist = WhitelistService.from_config(config)
        components.append(whitelist)

    guard = _guard(config, store, whitelist, psc)
    subapps: dict[str, web.Application] = {
        "/api/admin": admin.make_app(config, store, pacs, outbox),
        "/dicom-web": dicomweb.make_app(store, guard=guard),
    }
    daemon = Daemon(config, components)
    app_socket = gateway.plan.app_socket if gateway is not None and gateway.plan.ingress \
        else None
    token = admin.ensure_token(config)
    app = make_app(daemon.health, subapps, behind_gateway=app_socket is not None,
                   admin_token=lambda: token, max_body_bytes=config.http.max_body_bytes)
    components.append(HttpServer(config, app, unix_path=app_socket))
    return daemon


def _guard(config: Config, store: Store, whitelist: Any, psc: Any) -> Guard:
    """The DICOMweb access guard: peers by whitelist + PSC token + KOS, sessions, open_to."""
    from appliance.keys.certs import load_pem_certificates
    from appliance.trust.crl import CrlSource

    if config.dicomweb.open_to:
        log.warning("dicomweb.open_to lets these addresses read patient data without a token",
                    extra={"open_to": ",".join(config.dicomweb.open_to)})
    return Guard(
        sessions=SessionStore(store.db_lazy),
        published=PublishedKos(store.db_lazy) if config.roles.source else None,
        # Read once, at the first peer request (the files are checked by the keys component).
        anchors=functools.cache(lambda: load_pem_certificates(config.hsm.trust_anchors)),
        whitelist=(whitelist.current if whitelist is not None else lambda: None),
        tokens=lambda: psc,
        audience=config.psc.audience or config.psc.client_id,
        revocation=(CrlSource(config.box.data_dir / "trust" / "crl",
                              timeout=config.trust.fetch_timeout)
                    if config.trust.peer_revocation == "require" else None),
        open_to=config.dicomweb.open_to,
        max_per_peer=config.dicomweb.max_concurrent_per_peer,
        request_timeout=config.dicomweb.request_timeout)


def _tls_gateway(config: Config, keys: Any) -> Any:
    """The TLS gateway, when something needs TLS with a token key: HTTPS (``http.tls``), the
    DMP (the source role) or Pro Santé Connect (``psc.enabled``)."""
    if keys is None:
        if config.http.tls:
            raise SystemExit("http.tls needs hsm.enabled: the HTTPS server key is on the "
                             "structure's token")
        return None  # (the source role refuses to run without keys, below)
    if not (config.http.tls or config.roles.source or config.psc.enabled):
        return None
    from appliance.tlsgateway.supervisor import TlsGateway

    return TlsGateway(config, keys)
