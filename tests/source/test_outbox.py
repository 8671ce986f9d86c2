"""The outbox: order per study, backoff, survival across restarts, admin retry/discard."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.source.outbox import Job, Outbox, Step, enqueue
from appliance.store import Database


def _db(tmp_path: Path) -> Database:
    return Database(tmp_path / "state.db")


async def test_jobs_of_one_study_run_in_order_others_interleave(tmp_path: Path) -> None:
    db = _db(tmp_path)
    seen: list[tuple[str, int]] = []
    blocked = {"A": True}

    async def handler(job: Job) -> Step:
        seen.append((job.study_uid, job.payload["n"]))
        if job.study_uid == "A" and job.payload["n"] == 1 and blocked["A"]:
            return Step("received", "waiting for images", retry_in=3600)
        return Step("published")

    ob = Outbox(db, {"report": handler})
    with db.transaction() as c:
        enqueue(c, "report", "A", {"n": 1})
        enqueue(c, "report", "A", {"n": 2})
        enqueue(c, "report", "B", {"n": 3})
    while await ob.run_once():
        pass
    # A/2 must not overtake A/1, which is waiting; B is independent.
    assert seen == [("A", 1), ("B", 3)]
    blocked["A"] = False
    while await ob.run_once(now=time.time() + 7200):
        pass
    assert seen[-2:] == [("A", 1), ("A", 2)]
    states = [r["state"] for r in db.query("SELECT state FROM jobs ORDER BY id")]
    assert states == ["published", "published", "published"]


async def test_retryable_failure_backs_off_and_counts(tmp_path: Path) -> None:
    db = _db(tmp_path)

    async def handler(job: Job) -> Step:
        return Step("built", "DMP unavailable: 503", count_attempt=True)

    ob = Outbox(db, {"report": handler}, max_backoff=60)
    with db.transaction() as c:
        enqueue(c, "report", "A", {})
    for expected in (2, 4, 8):
        t0 = time.time()
        await ob.run_once(now=time.time() + 10_000)
        row = db.query_one("SELECT attempts, next_at, reason FROM jobs")
        assert row["reason"] == "DMP unavailable: 503"
        assert expected - 1 <= row["next_at"] - t0 <= expected + 1
    assert db.query_one("SELECT attempts FROM jobs")["attempts"] == 3


async def test_handler_crash_keeps_the_job(tmp_path: Path) -> None:
    db = _db(tmp_path)

    async def handler(job: Job) -> Step:
        raise KeyError("bug")

    ob = Outbox(db, {"report": handler})
    with db.transaction() as c:
        enqueue(c, "report", "A", {})
    await ob.run_once()
    row = db.query_one("SELECT state, reason, attempts FROM jobs")
    assert (row["state"], row["attempts"]) == ("received", 1)
    assert "internal error: KeyError" in row["reason"]


async def test_state_survives_restart(tmp_path: Path) -> None:
    db = _db(tmp_path)

    async def first(job: Job) -> Step:
        return Step("built", payload={**job.payload, "kos": "1.2.3"})

    with db.transaction() as c:
        enqueue(c, "report", "A", {"n": 1})
    await Outbox(db, {"report": first}).run_once()
    db.close()
    db = _db(tmp_path)  # a new process after a crash
    seen = []

    async def second(job: Job) -> Step:
        seen.append((job.state, job.payload))
        return Step("published")

    await Outbox(db, {"report": second}).run_once()
    assert seen == [("built", {"n": 1, "kos": "1.2.3"})]


async def test_admin_retry_and_discard(tmp_path: Path) -> None:
    db = _db(tmp_path)

    async def handler(job: Job) -> Step:
        return Step("quarantined", "accession differs between report and images")

    ob = Outbox(db, {"report": handler})
    with db.transaction() as c:
        a = enqueue(c, "report", "A", {})
        b = enqueue(c, "report", "B", {})
    while await ob.run_once():
        pass
    assert ob.retry(a) and not ob.retry(a + 100)
    assert db.query_one("SELECT state FROM jobs WHERE id=?", (a,))["state"] == "received"
    assert ob.discard(b)
    assert db.query_one("SELECT state FROM jobs WHERE id=?", (b,))["state"] == "discarded"
    assert ob.health().details["jobs"] == {"received": 1}


async def test_unknown_kind_fails_visibly(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.transaction() as c:
        enqueue(c, "teleport", "A", {})
    await Outbox(db, {}).run_once()
    row = db.query_one("SELECT state, reason FROM jobs")
    assert row["state"] == "failed" and "no handler" in row["reason"]
