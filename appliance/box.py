"""The composition root: which components a box runs, built from its configuration.

Roles and components never construct each other; everything is wired here, once. Start order is
list order: state first, then keys, the DICOM node and PACS link, the DMP link, the source role
(outbox, IOCM, HL7 intake), and HTTP last, so /healthz answers only when the rest is up.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from appliance.component import Component
from appliance.config import Config
from appliance.daemon import Daemon
from appliance.dicom.scp import DicomNode
from appliance.dicom.scu import PacsLink
from appliance.dicomweb import server as dicomweb
from appliance.store import Store
from appliance.store.component import StoreComponent
from appliance.web import admin
from appliance.web.server import HttpServer, make_app


def build(config: Config) -> Daemon:
    store = Store(config)
    pacs = PacsLink(config, store)
    components: list[Component] = [StoreComponent(store)]
    keys = None
    if config.hsm.enabled:
        from appliance.keys import KeysComponent

        keys = KeysComponent(config.hsm, cert_dir=config.box.data_dir / "certs")
        components.append(keys)
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
        dmp = DmpLink(config, keys)
        publisher = Publisher(config, store.db_lazy, pacs, dmp,
                              image_retry_max=config.source.image_retry_max, store=store)
        outbox = Outbox(store.db_lazy, {"report": publisher.report, "iocm": publisher.iocm})
        intake = ReportIntake(store.db_lazy, config.source.image_wait, outbox.wake)
        hl7 = MllpServer(config.hl7.bind, config.hl7.port, intake.handle,
                         max_message_bytes=config.hl7.max_message_bytes,
                         idle_timeout=config.hl7.idle_timeout,
                         check_accession=config.source.check_accession)
        components += [dmp, outbox, IocmWatcher(store, outbox.wake), hl7]

    subapps: dict[str, web.Application] = {
        "/api/admin": admin.make_app(config, store, pacs, outbox),
        "/dicom-web": dicomweb.make_app(store),
    }
    daemon = Daemon(config, components)
    app = make_app(daemon.health, subapps)
    components.append(HttpServer(config, app, ssl_context=_server_tls(config)))
    return daemon


def _server_tls(config: Config) -> ssl.SSLContext | None:
    """HTTPS: the server key stays on the token; the certificate is ``http.cert_file`` or, when
    unset, the one stored with the key, chained from ``hsm.trust_anchors``."""
    if not config.http.tls:
        return None
    import dataclasses

    from appliance.keys import Token, certs, tls
    from appliance.keys.chain import chain_for, write_chain

    if config.http.cert_file is None:
        with Token.from_config(config.hsm, cert_dir=config.box.data_dir / "certs") as token:
            leaf = token.certificate(config.http.server_key_label)
        chain = write_chain(config.runtime_dir / "server-chain.pem",
                            chain_for(leaf, certs.load_pem_certificates(config.hsm.trust_anchors)))
        config = dataclasses.replace(config, http=dataclasses.replace(config.http,
                                                                      cert_file=chain))
    return tls.box_server_context(config)
