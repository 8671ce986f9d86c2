"""The admin API (JSON), consumed by the local admin UI, the demo and operators' scripts.

Default deny: every route needs ``Authorization: Bearer <token>``. The token is 32 random bytes
generated at first start into ``data_dir/admin-token`` (mode 0600, readable by the box's user
only); ``drimbox admin token -c FILE`` prints it. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from appliance.audit import record as audit
from appliance.config import Config

log = logging.getLogger(__name__)

PACS_LINK: web.AppKey[Any] = web.AppKey("pacs_link", object)
OUTBOX: web.AppKey[Any] = web.AppKey("outbox", object)
STORE: web.AppKey[Any] = web.AppKey("store", object)


def token_path(config: Config) -> Path:
    return config.box.data_dir / "admin-token"


def ensure_token(config: Config) -> str:
    """Read the admin token, creating it (0600) on first start."""
    path = token_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(config: Config, store: Any, pacs_link: Any, outbox: Any = None) -> web.Application:
    token = ensure_token(config)

    @web.middleware
    async def require_token(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return _json_error(401, "admin API: missing or wrong bearer token")
        return await handler(request)

    app = web.Application(middlewares=[require_token])
    app[PACS_LINK] = pacs_link
    app[STORE] = store
    app.router.add_post("/pacs/echo", pacs_echo)
    app.router.add_post("/pacs/find", pacs_find)
    app.router.add_post("/pacs/retrieve", pacs_retrieve)
    if outbox is not None:
        app[OUTBOX] = outbox
        app.router.add_get("/reports", reports_list)
        app.router.add_get("/reports/{job_id:[0-9]+}", report_detail)
        app.router.add_post("/reports/{job_id:[0-9]+}/retry", report_retry)
        app.router.add_post("/reports/{job_id:[0-9]+}/discard", report_discard)
    return app


# Job columns safe to show: the payload (INS, names, CDA) stays inside the box.
_JOB_COLUMNS = ("id, kind, study_uid, state, reason, attempts, next_at, deadline_at, created_at, "
                "updated_at, json_extract(payload, '$.action') AS action")


async def reports_list(request: web.Request) -> web.Response:
    state = request.query.get("state")
    limit = request.query.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        return _json_error(400, "limit must be an integer from 1 to 1000")
    db = request.app[STORE].db
    if state:
        rows = db.query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?",
                        (state, int(limit)))
    else:
        rows = db.query(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (int(limit),))
    return web.json_response({"reports": [dict(r) for r in rows]})


async def report_detail(request: web.Request) -> web.Response:
    db = request.app[STORE].db
    job_id = int(request.match_info["job_id"])
    row = db.query_one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
    if row is None:
        return _json_error(404, f"no report job {job_id}")
    pubs = db.query("SELECT kos_sop_uid, version, state, replaces, created_at, published_at "
                    "FROM publications WHERE study_uid=? ORDER BY version", (row["study_uid"],))
    return web.json_response({"report": dict(row), "publications": [dict(p) for p in pubs]})


async def report_retry(request: web.Request) -> web.Response:
    job_id = int(request.match_info["job_id"])
    if not request.app[OUTBOX].retry(job_id):
        return _json_error(409, f"job {job_id} is not quarantined or failed")
    return web.json_response({"id": job_id, "state": "received"})


async def report_discard(request: web.Request) -> web.Response:
    job_id = int(request.match_info["job_id"])
    if not request.app[OUTBOX].discard(job_id):
        return _json_error(409, f"job {job_id} cannot be discarded (unknown or already final)")
    return web.json_response({"id": job_id, "state": "discarded"})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body must be JSON"}',
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}',
                                 content_type="application/json")
    return body


async def pacs_echo(request: web.Request) -> web.Response:
    from appliance.dicom.scu import PacsError, PacsUnavailable

    try:
        await request.app[PACS_LINK].echo()
    except (PacsUnavailable, PacsError) as e:
        return _json_error(502, f"PACS C-ECHO failed: {e}")
    return web.json_response({"status": "ok"})


async def pacs_find(request: web.Request) -> web.Response:
    from appliance.dicom.scu import PacsError, PacsUnavailable

    body = await _body(request)
    keys = {k: body[k] for k in ("study_uid", "accession") if isinstance(body.get(k), str)}
    if not keys:
        return _json_error(400, "give study_uid or accession")
    try:
        matches = await request.app[PACS_LINK].find_studies(**keys)
    except ValueError as e:
        return _json_error(400, str(e))
    except (PacsUnavailable, PacsError) as e:
        return _json_error(502, f"PACS C-FIND failed: {e}")
    audit(request.app[STORE].db, actor="admin", action="pacs.find", interface="http",
          study_uid=keys.get("study_uid", ""), detail=f"{len(matches)} match(es)")
    # Patient fields stay out of the answer: an operator checks presence, not identities.
    hidden = {"patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date",
              "patient_sex"}
    return web.json_response({"studies": [
        {k: v for k, v in _plain(asdict(m)).items() if k not in hidden} for m in matches]})


async def pacs_retrieve(request: web.Request) -> web.Response:
    from appliance.dicom.scu import PacsError, PacsUnavailable

    body = await _body(request)
    study = body.get("study_uid")
    if not isinstance(study, str) or not study:
        return _json_error(400, "give study_uid")
    received = 0
    try:
        retrieval = request.app[PACS_LINK].retrieve_study(study)
        async for _instance in retrieval:
            received += 1
        summary = retrieval.summary
    except ValueError as e:
        return _json_error(400, str(e))
    except (PacsUnavailable, PacsError) as e:
        return _json_error(502, f"PACS retrieve failed: {e}")
    audit(request.app[STORE].db, actor="admin", action="pacs.retrieve", interface="http",
          study_uid=study, detail=f"{received} instance(s)")
    return web.json_response({"study_uid": study, "received": received,
                              "summary": _plain(asdict(summary)) if summary else None})


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
