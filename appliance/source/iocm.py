"""IOCM: a rejection note stored by the PACS into the box corrects what the DMP lists.

Runs as a store listener, in the thread that ingested the note: it records the rejected instances,
queues one ``iocm`` job per study in the same transaction, purges the rejected instances from the
cache, and wakes the outbox on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from appliance.component import Health
from appliance.dicom import kos as kosmod
from appliance.source.outbox import enqueue
from appliance.store import Store, StoredInstance

log = logging.getLogger(__name__)


class IocmWatcher:
    """Component: listens to the store for rejection notes while started."""

    name = "iocm"

    def __init__(self, store: Store, wake: Callable[[], None]) -> None:
        self.store = store
        self.wake = wake
        self.loop: asyncio.AbstractEventLoop | None = None
        self.notes = 0

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.store.add_listener(self.on_stored)

    async def stop(self) -> None:
        self.store.remove_listener(self.on_stored)

    def health(self) -> Health:
        return Health(self.loop is not None, "ok", {"rejection_notes": self.notes})

    def on_stored(self, stored: StoredInstance) -> None:
        if stored.sop_class_uid != kosmod.KOS_SOP_CLASS_UID:
            return
        try:
            note = kosmod.rejection_note(stored.path.read_bytes())
        except kosmod.KosError as e:
            log.warning("unreadable KOS from the PACS ignored", extra={"error": str(e)[:200]})
            return
        if note is None:
            return
        self.apply(note)

    def apply(self, note: kosmod.RejectionNote) -> list[int]:
        now = time.time()
        jobs: list[int] = []
        with self.store.db.transaction() as c:
            for series in note.rejected:
                for sop in series.sops:
                    c.execute("INSERT OR IGNORE INTO rejected_instances(sop_uid, study_uid, "
                              "note_uid, reason_code, received_at) VALUES (?,?,?,?,?)",
                              (sop.sop_instance_uid, series.study_uid, note.sop_instance_uid,
                               note.reason.value, now))
            for study in sorted(note.study_uids):
                jobs.append(enqueue(c, "iocm", study, {"note": note.sop_instance_uid,
                                                       "reason": note.reason.value}))
        purged = self.store.delete_instances(note.rejected_sop_instance_uids)
        log.info("IOCM rejection note received", extra={"reason": note.reason.value,
                                                        "rejected": len(note.rejected_sop_instance_uids),
                                                        "purged": purged, "jobs": len(jobs)})
        self.notes += 1
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake)
        return jobs
