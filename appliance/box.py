"""The composition root: which components a box runs, built from its configuration.

Roles and components never construct each other; everything is wired here, once. Start order is
list order (store first, HTTP last, so /healthz answers only when the rest is up).
"""

from __future__ import annotations

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
    components: list[Component] = [StoreComponent(store), DicomNode(config, store), pacs]
    subapps: dict[str, web.Application] = {
        "/api/admin": admin.make_app(config, store, pacs),
        "/dicom-web": dicomweb.make_app(store),
    }
    daemon = Daemon(config, components)
    app = make_app(daemon.health, subapps)
    components.append(HttpServer(config, app, ssl_context=_server_tls(config)))
    return daemon


def _server_tls(config: Config):  # type: ignore[no-untyped-def]
    if not config.http.tls:
        return None
    raise SystemExit("http.tls = true needs the keys layer (server key on the token); "
                     "set http.tls = false for local development")
