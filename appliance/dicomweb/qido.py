"""QIDO-RS query parsing and matching (PS3.18 §10.6), answered from the store's SQLite index.

A request's query string becomes a :class:`Query` (or a :class:`QueryError` whose message says
what is wrong); :func:`search` turns it into one SQL statement with bound parameters only and
builds the DICOM JSON answer. Matching follows PS3.4 C.2.2.2: single value (exact), list of UIDs,
wildcard (``*`` and ``?``) on text, range on dates, universal (empty value or ``*``: "return it").
Person names match case-insensitively, as Orthanc and most archives do.

Hand-written because no maintained Python library maps QIDO-RS onto an SQL index.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword

from appliance.store import BASE, valid_uid
from appliance.store.db import Database

Level = Literal["study", "series", "instance"]
Kind = Literal["uid", "text", "pn", "date", "int", "modalities", "none"]

MAX_VALUE_CHARS = 1024
DEFAULT_MAX_RESULTS = 1000


class QueryError(ValueError):
    """The query cannot be answered; the message names the parameter and what is expected."""


@dataclass(frozen=True)
class Attr:
    tag: str            # 8 upper-case hex digits
    keyword: str
    vr: str
    column: str | None  # SQL expression (None: computed in Python)
    kind: Kind          # how a query value on it is matched ("none": not matchable)
    default: bool       # returned without includefield (PS3.18 Table 10.6.3-3/4/5)


def _a(tag: str, keyword: str, vr: str, column: str | None, kind: Kind,
       default: bool = True) -> Attr:
    return Attr(tag, keyword, vr, column, kind, default)


_MODALITIES_SQL = ("(SELECT group_concat(DISTINCT x.modality) FROM series x "
                   "WHERE x.study_uid = s.study_uid AND x.modality <> '')")

ATTRIBUTES: dict[Level, tuple[Attr, ...]] = {
    "study": (
        _a("00080020", "StudyDate", "DA", "s.study_date", "date"),
        _a("00080030", "StudyTime", "TM", "s.study_time", "text"),
        _a("00080050", "AccessionNumber", "SH", "s.accession_number", "text"),
        _a("00080056", "InstanceAvailability", "CS", None, "none"),
        _a("00080061", "ModalitiesInStudy", "CS", _MODALITIES_SQL, "modalities"),
        _a("00080090", "ReferringPhysicianName", "PN", "s.referring_physician", "pn"),
        _a("00081190", "RetrieveURL", "UR", None, "none"),
        _a("00100010", "PatientName", "PN", "s.patient_name", "pn"),
        _a("00100020", "PatientID", "LO", "s.patient_id", "text"),
        _a("00100030", "PatientBirthDate", "DA", "s.patient_birth_date", "date"),
        _a("00100040", "PatientSex", "CS", "s.patient_sex", "text"),
        _a("0020000D", "StudyInstanceUID", "UI", "s.study_uid", "uid"),
        _a("00200010", "StudyID", "SH", "s.study_id", "text"),
        _a("00201206", "NumberOfStudyRelatedSeries", "IS",
           "(SELECT COUNT(*) FROM series x WHERE x.study_uid = s.study_uid)", "none"),
        _a("00201208", "NumberOfStudyRelatedInstances", "IS",
           "(SELECT COUNT(*) FROM instances x WHERE x.study_uid = s.study_uid)", "none"),
        _a("00081030", "StudyDescription", "LO", "s.study_description", "text", default=False),
    ),
    "series": (
        _a("00080060", "Modality", "CS", "r.modality", "text"),
        _a("0008103E", "SeriesDescription", "LO", "r.series_description", "text"),
        _a("00081190", "RetrieveURL", "UR", None, "none"),
        _a("0020000D", "StudyInstanceUID", "UI", "r.study_uid", "none"),
        _a("0020000E", "SeriesInstanceUID", "UI", "r.series_uid", "uid"),
        _a("00200011", "SeriesNumber", "IS", "r.series_number", "int"),
        _a("00201209", "NumberOfSeriesRelatedInstances", "IS",
           "(SELECT COUNT(*) FROM instances x WHERE x.series_uid = r.series_uid)", "none"),
        _a("00180015", "BodyPartExamined", "CS", "r.body_part", "text", default=False),
    ),
    "instance": (
        _a("00080016", "SOPClassUID", "UI", "i.sop_class_uid", "uid"),
        _a("00080018", "SOPInstanceUID", "UI", "i.sop_uid", "uid"),
        _a("00080056", "InstanceAvailability", "CS", None, "none"),
        _a("00081190", "RetrieveURL", "UR", None, "none"),
        _a("0020000D", "StudyInstanceUID", "UI", "i.study_uid", "none"),
        _a("0020000E", "SeriesInstanceUID", "UI", "i.series_uid", "none"),
        _a("00200013", "InstanceNumber", "IS", "i.instance_number", "int"),
        _a("00280008", "NumberOfFrames", "IS", "i.frames", "none"),
        _a("00280010", "Rows", "US", "i.rows", "none"),
        _a("00280011", "Columns", "US", "i.columns", "none"),
    ),
}

_FROM: dict[Level, str] = {
    "study": "FROM studies s",
    "series": "FROM series r",
    "instance": "FROM instances i",
}
_SCOPE: dict[Level, tuple[str, ...]] = {   # path parameters that restrict the level
    "study": (),
    "series": ("r.study_uid",),
    "instance": ("i.study_uid", "i.series_uid"),
}
_ORDER: dict[Level, str] = {
    "study": "ORDER BY s.study_date DESC, s.study_time DESC, s.study_uid",
    "series": "ORDER BY r.series_number IS NULL, r.series_number, r.series_uid",
    "instance": "ORDER BY i.instance_number IS NULL, i.instance_number, i.sop_uid",
}
# JSON of one instance, for includefield attributes the index does not hold.
_SAMPLE_JSON: dict[Level, str] = {
    "study": "(SELECT x.metadata_json FROM instances x WHERE x.study_uid = s.study_uid LIMIT 1)",
    "series": "(SELECT x.metadata_json FROM instances x WHERE x.series_uid = r.series_uid LIMIT 1)",
    "instance": "i.metadata_json",
}
_PATIENT_ID: dict[Level, str | None] = {"study": "s.patient_id", "series": None, "instance": None}

# Parameters a client may send that change nothing here.
_IGNORED = {"fuzzymatching"}
_DATE = re.compile(r"\d{8}")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Condition:
    sql: str
    params: tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    level: Level
    conditions: tuple[Condition, ...] = ()
    returned: tuple[Attr, ...] = ()            # indexed attributes to return, in tag order
    extra_tags: tuple[str, ...] = ()           # includefield attributes read from instance JSON
    all_instance_fields: bool = False          # includefield=all at instance level
    limit: int | None = None
    offset: int = 0
    fuzzy_requested: bool = False
    keys: tuple[str, ...] = field(default=())  # parameter names, for the audit trail


def _attr_by_name(level: Level, name: str) -> Attr | None:
    tag = name.upper() if _TAG.fullmatch(name) else None
    for a in ATTRIBUTES[level]:
        if a.keyword == name or a.tag == tag:
            return a
    return None


def _dictionary_tag(name: str) -> str | None:
    """8-hex tag of a DICOM keyword or tag string, if the dictionary knows it."""
    if _TAG.fullmatch(name):
        try:
            dictionary_VR(int(name, 16))
        except KeyError:
            return None
        return name.upper()
    t = tag_for_keyword(name)
    return None if t is None else f"{t:08X}"


def _check_text(name: str, value: str) -> None:
    if len(value) > MAX_VALUE_CHARS:
        raise QueryError(f"{name}: value longer than {MAX_VALUE_CHARS} characters")
    if any(ord(c) < 0x20 for c in value):
        raise QueryError(f"{name}: control characters are not allowed")


def _glob(pattern: str, case_insensitive: bool) -> str:
    """DICOM wildcard -> SQLite GLOB pattern (GLOB is case-sensitive; classes make it not)."""
    out = []
    for c in pattern:
        if c in "*?":
            out.append(c)
        elif c == "[":
            out.append("[[]")
        elif case_insensitive and len(c.upper()) == 1 and len(c.lower()) == 1 \
                and c.upper() != c.lower():
            out.append(f"[{c.lower()}{c.upper()}]")
        else:
            out.append(c)
    return "".join(out)


def _values(value: str) -> list[str]:
    """A value list: DICOM's backslash or the comma QIDO-RS also allows (PS3.18 §8.3.4.1)."""
    return re.split(r"[\\,]", value)


def _text_condition(column: str, name: str, value: str, case_insensitive: bool) -> Condition:
    parts, params = [], []
    for v in value.split("\\"):
        if v == "" or v.strip("*") == "":
            return Condition("1", ())  # an empty or all-'*' alternative matches everything
        if "*" in v or "?" in v or case_insensitive:
            parts.append(f"{column} GLOB ?")
            params.append(_glob(v, case_insensitive))
        else:
            parts.append(f"{column} = ?")
            params.append(v)
    return Condition("(" + " OR ".join(parts) + ")", tuple(params))


def _date(name: str, v: str) -> str:
    if not _DATE.fullmatch(v):
        raise QueryError(f"{name}: expected a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD, "
                         f"got {v!r}")
    try:
        dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        raise QueryError(f"{name}: {v!r} is not a calendar date") from None
    return v


def _condition(level: Level, attr: Attr, name: str, value: str) -> Condition | None:
    """SQL for one matching key; None for universal matching (return the attribute only)."""
    _check_text(name, value)
    col = attr.column
    assert col is not None
    if value == "":
        return None
    if attr.kind == "uid":
        uids = _values(value)
        for u in uids:
            if not valid_uid(u):
                raise QueryError(f"{name}: {u[:70]!r} is not a valid UID "
                                 "(digits and dots, at most 64 characters)")
        return Condition(f"{col} IN ({','.join('?' * len(uids))})", tuple(uids))
    if attr.kind in ("text", "pn"):
        if value == "*":
            return None
        return _text_condition(col, name, value, attr.kind == "pn")
    if attr.kind == "date":
        if "-" not in value:
            return Condition(f"{col} = ?", (_date(name, value),))
        lo, _, hi = value.partition("-")
        if not lo and not hi:
            raise QueryError(f"{name}: a range needs at least one end")
        conds, params = [f"{col} <> ''"], []
        if lo:
            conds.append(f"{col} >= ?")
            params.append(_date(name, lo))
        if hi:
            conds.append(f"{col} <= ?")
            params.append(_date(name, hi))
        if lo and hi and lo > hi:
            raise QueryError(f"{name}: range start is after its end")
        return Condition("(" + " AND ".join(conds) + ")", tuple(params))
    if attr.kind == "int":
        nums = []
        for v in _values(value):
            if not re.fullmatch(r"[+-]?\d{1,12}", v.strip()):
                raise QueryError(f"{name}: expected an integer or a list of integers, got "
                                 f"{v[:40]!r}")
            nums.append(int(v))
        return Condition(f"{col} IN ({','.join('?' * len(nums))})", tuple(nums))
    if attr.kind == "modalities":
        if value == "*":
            return None
        parts, params = [], []
        for v in _values(value):
            if v == "" or v.strip("*") == "":
                return None
            parts.append("x.modality GLOB ?")
            params.append(_glob(v, False))
        return Condition("EXISTS (SELECT 1 FROM series x WHERE x.study_uid = s.study_uid AND ("
                         + " OR ".join(parts) + "))", tuple(params))
    raise QueryError(f"{name}: matching on this attribute is not supported")


def _non_negative_int(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value):
        raise QueryError(f"{name}: expected a non-negative integer, got {value[:40]!r}")
    return int(value)


def parse(level: Level, params: Iterable[tuple[str, str]]) -> Query:
    """A QIDO query from the request's (name, value) pairs, in order. Raises QueryError."""
    conditions: list[Condition] = []
    returned = {a.tag: a for a in ATTRIBUTES[level] if a.default}
    extra: dict[str, None] = {}
    all_fields = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    seen: set[str] = set()
    keys: list[str] = []
    for name, value in params:
        if name in seen and name != "includefield":
            raise QueryError(f"{name}: given more than once")
        seen.add(name)
        keys.append(name)
        if name == "limit":
            limit = _non_negative_int(name, value)
        elif name == "offset":
            offset = _non_negative_int(name, value)
        elif name == "includefield":
            _check_text(name, value)
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    all_fields = True
                    returned.update({a.tag: a for a in ATTRIBUTES[level]})
                    continue
                a = _attr_by_name(level, item)
                if a is not None:
                    returned[a.tag] = a
                    continue
                tag = _dictionary_tag(item)
                if tag is None:
                    raise QueryError(f"includefield: {item[:70]!r} is neither 'all', a DICOM "
                                     "keyword nor a tag of 8 hex digits")
                extra[tag] = None
        elif name in _IGNORED:
            fuzzy = value.strip().lower() == "true"
        else:
            if "." in name and all(_TAG.fullmatch(p) or tag_for_keyword(p) for p in
                                   name.split(".")):
                raise QueryError(f"{name[:70]}: matching inside sequences is not supported")
            a = _attr_by_name(level, name)
            if a is None:
                known = ", ".join(x.keyword for x in ATTRIBUTES[level] if x.kind != "none")
                if _dictionary_tag(name) is not None:
                    raise QueryError(f"{name[:70]}: cannot match on this attribute at the "
                                     f"{level} level (matching keys: {known})")
                raise QueryError(f"{name[:70]!r} is not a query parameter (expected limit, "
                                 f"offset, includefield, fuzzymatching or one of {known})")
            if a.kind == "none":
                raise QueryError(f"{name}: this attribute is returned but cannot be matched")
            cond = _condition(level, a, name, value)
            if cond is not None:
                conditions.append(cond)
            returned[a.tag] = a
    return Query(level, tuple(conditions), tuple(sorted(returned.values(), key=lambda a: a.tag)),
                 tuple(t for t in extra if t not in returned), all_fields and level == "instance",
                 limit, offset, fuzzy, tuple(keys))


# -- answers -------------------------------------------------------------------------------------

def _element(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        names = []
        for v in str(value).split("\\"):
            groups = v.split("=")
            pn = {k: g for k, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if g}
            names.append(pn)
        return {"vr": vr, "Value": names}
    if vr in ("IS", "US"):
        return {"vr": vr, "Value": [int(value)]}
    if isinstance(value, list):
        return {"vr": vr, "Value": value} if value else {"vr": vr}
    return {"vr": vr, "Value": str(value).split("\\")}


def _retrieve_url(level: Level, base: str, row: sqlite3.Row) -> str:
    url = f"{base}/studies/{row['_study']}"
    if level in ("series", "instance"):
        url += f"/series/{row['_series']}"
    if level == "instance":
        url += f"/instances/{row['_sop']}"
    return url


@dataclass(frozen=True)
class Result:
    items: list[dict[str, Any]]
    truncated: bool          # more matches than the server's maximum: a Warning is due
    touched: dict[str, set[str]]   # patient ID -> the study UIDs of theirs in the answer


def search(db: Database, query: Query, base: str, scope: Sequence[str] = (),
           max_results: int = DEFAULT_MAX_RESULTS, visible: Any = None) -> Result:
    """Run the query; ``scope`` is the path's (study[, series]) UIDs; ``base`` the public root;
    ``visible`` (:class:`appliance.trust.published.Visible`) what the caller may see."""
    level = query.level
    key_cols = {"study": ("s.study_uid", None, None),
                "series": ("r.study_uid", "r.series_uid", None),
                "instance": ("i.study_uid", "i.series_uid", "i.sop_uid")}[level]
    cols = [f"{key_cols[0]} AS _study"]
    if key_cols[1]:
        cols.append(f"{key_cols[1]} AS _series")
    if key_cols[2]:
        cols.append(f"{key_cols[2]} AS _sop")
    pid = _PATIENT_ID[level] or ("(SELECT patient_id FROM studies WHERE study_uid = "
                                 f"{key_cols[0]})")
    cols.append(f"{pid} AS _patient")
    for n, a in enumerate(query.returned):
        if a.column is not None:
            cols.append(f"{a.column} AS c{n}")
    if query.extra_tags or query.all_instance_fields:
        cols.append(f"{_SAMPLE_JSON[level]} AS _json")
    where = [f"{c} = ?" for c in _SCOPE[level][:len(scope)]]
    params: list[Any] = list(scope[:len(_SCOPE[level])])
    for cond in query.conditions:
        where.append(cond.sql)
        params.extend(cond.params)
    if visible is not None:
        # One JSON array parameter per level, however many UIDs a KOS lists.
        for uids, col in ((visible.studies, key_cols[0]), (visible.series, key_cols[1]),
                          (visible.instances, key_cols[2])):
            if uids is not None and col is not None:
                where.append(f"{col} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(sorted(uids)))
    limit = max_results if query.limit is None else min(query.limit, max_results)
    sql = (f"SELECT {', '.join(cols)} {_FROM[level]}"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" {_ORDER[level]} LIMIT ? OFFSET ?")
    rows = db.query(sql, (*params, limit + 1, query.offset))
    truncated = len(rows) > limit and (query.limit is None or query.limit > max_results)
    rows = rows[:limit]
    items = []
    for row in rows:
        item: dict[str, Any] = {}
        sample: dict[str, Any] = {}
        if query.extra_tags or query.all_instance_fields:
            raw = row["_json"]
            sample = json.loads(raw) if raw else {}
        if query.all_instance_fields:
            item.update({t: e for t, e in sample.items() if _plain(e)})
        for n, a in enumerate(query.returned):
            if a.keyword == "RetrieveURL":
                item[a.tag] = _element("UR", _retrieve_url(level, base, row))
            elif a.keyword == "InstanceAvailability":
                item[a.tag] = _element("CS", "ONLINE")
            elif a.keyword == "ModalitiesInStudy":
                mods = sorted(set((row[f"c{n}"] or "").split(",")) - {""})
                item[a.tag] = _element("CS", mods)
            else:
                item[a.tag] = _element(a.vr, row[f"c{n}"])
        for tag in query.extra_tags:
            e = sample.get(tag)
            if e is not None and _plain(e):
                item[tag] = e
        items.append(dict(sorted(item.items())))
    touched: dict[str, set[str]] = {}
    for r in rows:
        touched.setdefault(r["_patient"], set()).add(r["_study"])
    return Result(items, truncated, touched)


def _plain(element: dict[str, Any]) -> bool:
    """True for an element that carries no bulk data (QIDO answers never do)."""
    text = json.dumps(element)
    return "BulkDataURI" not in text and "InlineBinary" not in text and BASE not in text


def describe(query: Query) -> str:
    """Names of the query keys, never their values (which may be patient data).

    Only names that :func:`parse` accepted reach here, so no client text is echoed.
    """
    return ",".join(sorted(set(query.keys)))
