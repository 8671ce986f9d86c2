"""The composition root: which components a box runs, built from its configuration.

Roles and components never construct each other; everything is wired here, once.
"""

from __future__ import annotations

from aiohttp import web

from appliance.component import Component
from appliance.config import Config
from appliance.daemon import Daemon
from appliance.store import Store
from appliance.store.component import StoreComponent
from appliance.web.server import HttpServer, make_app


def build(config: Config) -> Daemon:
    store = Store(config)
    components: list[Component] = [StoreComponent(store)]
    subapps: dict[str, web.Application] = {}

    daemon = Daemon(config, components)
    app = make_app(daemon.health, subapps)
    components.append(HttpServer(config, app, ssl_context=None if not config.http.tls else
                                 _server_tls(config)))
    return daemon


def _server_tls(config: Config):  # type: ignore[no-untyped-def]
    raise SystemExit("http.tls = true needs the keys layer (server key on the token); "
                     "set http.tls = false for local development")
