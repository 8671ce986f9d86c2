"""What a KOS this box published opens to a peer: its study, series and instances.

A peer box reads only what the manifest it found in the DMP lists (``KOS-SOPInstanceUID``), and
only while that manifest is the current one: a KOS that is pending, withdrawn (deleted) or
replaced by a newer version opens nothing. Blocking (SQLite): call from an executor.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

from appliance.dicom.kos import KosError, parse_kos
from appliance.store.db import Database


@dataclass(frozen=True)
class Visible:
    """What one request may see. ``None`` at a level means no restriction at that level."""

    studies: frozenset[str] | None
    series: frozenset[str] | None = None
    instances: frozenset[str] | None = None

    def allows(self, study: str | None = None, series: str | None = None,
               sop: str | None = None) -> bool:
        return not ((study is not None and self.studies is not None and study not in self.studies)
                    or (series is not None and self.series is not None
                        and series not in self.series)
                    or (sop is not None and self.instances is not None
                        and sop not in self.instances))


EVERYTHING = Visible(None)

_STATE_WORDS = {"pending": "KOS not published yet", "replaced": "KOS replaced by a newer version",
                "deleted": "KOS withdrawn"}


@dataclass(frozen=True)
class Opened:
    """The answer for one ``KOS-SOPInstanceUID``: what it opens, or why it opens nothing."""

    visible: Visible | None
    study_uid: str = ""
    reason: str = ""


class PublishedKos:
    def __init__(self, db: Database, cache_size: int = 256) -> None:
        self.db = db   # or the store's db_lazy: the box wires this before the store opens
        self._cache: OrderedDict[str, Visible] = OrderedDict()   # parsed manifests, by UID
        self._lock = Lock()
        self.cache_size = cache_size


    def open(self, kos_sop_uid: str, study_uid: str | None) -> Opened:
        row = self.db.query_one("SELECT study_uid, state FROM publications WHERE kos_sop_uid=?",
                                (kos_sop_uid,))
        if row is None:
            return Opened(None, reason="no KOS of this box has that SOP Instance UID")
        if study_uid is not None and row["study_uid"] != study_uid:
            return Opened(None, reason="the KOS is of another study")
        if row["state"] != "published":
            return Opened(None, row["study_uid"],
                          _STATE_WORDS.get(row["state"], f"KOS {row['state']}"))
        with self._lock:
            visible = self._cache.get(kos_sop_uid)
            if visible is not None:
                self._cache.move_to_end(kos_sop_uid)
        if visible is None:
            blob = self.db.query_one("SELECT kos FROM publications WHERE kos_sop_uid=?",
                                     (kos_sop_uid,))
            try:
                manifest = parse_kos(bytes(blob["kos"]))  # type: ignore[index]
            except (KosError, TypeError) as e:
                return Opened(None, row["study_uid"], f"stored KOS unreadable: {e}")
            visible = Visible(frozenset({manifest.study_uid}),
                              frozenset(s.series_uid for s in manifest.series),
                              manifest.sop_instance_uids)
            with self._lock:
                self._cache[kos_sop_uid] = visible   # a KOS never changes: only its state does
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return Opened(visible, row["study_uid"])
