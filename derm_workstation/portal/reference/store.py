"""The reference portal's own SQLite file: FHIR resources as versioned JSON.

One row per resource (current version) plus every version in ``history``; Binary
bytes in ``binary_data``; a ``search_index`` of (param, system, value) rows per
resource, rebuilt on every write. ``meta.versionId`` counts up from 1 per resource and
``meta.lastUpdated`` (UTC, millisecond precision) is strictly increasing over the
whole store, across restarts too, so ``_lastUpdated=gt<last seen>`` is an exact
"changed since" cursor and doubles as the keyset for paging.

All access goes through one connection behind a lock; the HTTP threads and test code
may call it concurrently. Nothing here knows about HTTP except :class:`FhirError`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derm_workstation.core.errors import StorageError
from derm_workstation.portal.reference.search import (
    ID_RE,
    RESOURCE_TYPES,
    FhirError,
    ParsedQuery,
    date_sql,
    extract_index,
    format_instant,
    parse_query,
)

__all__ = ["BASE_TOKEN", "Page", "PortalStore", "Stored"]

#: Stand-in for the server's base URL inside stored JSON (the port changes between
#: runs); replaced by the real base URL whenever a resource is read.
BASE_TOKEN = "urn:x-derm-reference-portal:base"

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    lu_ms INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, json TEXT NOT NULL,
    PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS resources_type_lu ON resources (type, lu_ms);
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    lu_ms INTEGER NOT NULL, deleted INTEGER NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (type, id, version));
CREATE TABLE IF NOT EXISTS binary_data (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS search_index (
    type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL, sys TEXT, val TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS search_index_lookup ON search_index (type, param, val);
CREATE INDEX IF NOT EXISTS search_index_owner ON search_index (type, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Stored:
    """One version of one resource as stored (JSON text, base URL not yet filled in)."""

    rtype: str
    id: str
    version: int
    lu_ms: int
    deleted: bool
    text: str

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_updated(self) -> str:
        return format_instant(self.lu_ms)

    def resource(self, base_url: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.text.replace(BASE_TOKEN, base_url))
        return data


@dataclass(frozen=True)
class Page:
    total: int
    items: list[Stored]
    next_after: int | None  # keyset for the next page, None on the last page


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class PortalStore:
    """A FHIR resource store in one SQLite file. Thread-safe."""

    def __init__(self, path: Path, base_url: str = "") -> None:
        self.path = Path(path)
        self.base_url = base_url
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                         isolation_level=None, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"Cannot open the portal database {self.path}: {exc}.") from exc
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self._conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if tables and version != SCHEMA_VERSION:
                raise StorageError(f"{self.path} is not a reference portal database.")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._last_ms = int(self._conn.execute(
                "SELECT COALESCE(MAX(lu_ms), 0) FROM history").fetchone()[0])
            self._next_id = int(self.setting("next_id") or "1")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StorageError(f"{self.path} is not a reference portal database ({exc}).") from exc
        except StorageError:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one atomic unit (re-entrant)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    def setting(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM settings WHERE key = ?",
                                     (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                               (key, value))

    def new_id(self) -> str:
        """A fresh server-assigned id (one sequence for all types, like HAPI)."""
        with self.transaction():
            n = self._next_id
            self._next_id += 1
            self._conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                               ("next_id", str(self._next_id)))
        return str(n)

    def _tick(self) -> int:
        """The next lastUpdated: wall-clock milliseconds, always above the previous one."""
        self._last_ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
        return self._last_ms

    @staticmethod
    def _row(row: Sequence[Any]) -> Stored:
        return Stored(row[0], row[1], int(row[2]), int(row[3]), bool(row[4]), row[5])

    # ------------------------------------------------------------------ used by the server

    def read(self, rtype: str, rid: str) -> Stored | None:
        """The current version, deleted or not; None if there never was one."""
        with self._lock:
            row = self._conn.execute(
                "SELECT type, id, version, lu_ms, deleted, json FROM resources "
                "WHERE type = ? AND id = ?", (rtype, rid)).fetchone()
        return None if row is None else self._row(row)

    def vread(self, rtype: str, rid: str, version: int) -> Stored | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT type, id, version, lu_ms, deleted, json FROM history "
                "WHERE type = ? AND id = ? AND version = ?", (rtype, rid, version)).fetchone()
        return None if row is None else self._row(row)

    def binary_data(self, rid: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM binary_data WHERE id = ?",
                                     (rid,)).fetchone()
        return None if row is None else bytes(row[0])

    def write(self, rtype: str, rid: str, resource: dict[str, Any], *,
              data: bytes | None = None, if_match: int | None = None,
              deleted: bool = False) -> tuple[Stored, bool]:
        """Create or replace ``rtype/rid``; returns (stored version, created).

        ``if_match``: the version the writer last saw; a different current version is
        a 412 (a deleted resource is 410). ``data``: the bytes of a Binary.
        """
        if rtype not in RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"Unknown resource type {rtype!r}.")
        if not ID_RE.match(rid):
            raise FhirError(400, "invalid", f"Invalid id {rid!r}.")
        with self.transaction():
            current = self.read(rtype, rid)
            if if_match is not None:
                if current is None:
                    raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist.")
                if current.deleted:
                    raise FhirError(410, "deleted", f"{rtype}/{rid} has been deleted.")
                if current.version != if_match:
                    raise FhirError(
                        412, "conflict",
                        f"{rtype}/{rid} has changed: the current version is "
                        f"{current.version}, the update was based on version {if_match}.")
            version = current.version + 1 if current else 1
            lu = self._tick()
            res = {k: v for k, v in resource.items() if not (rtype == "Binary" and k == "data")}
            res["resourceType"] = rtype
            res["id"] = rid
            meta = res.get("meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            meta["versionId"] = str(version)
            meta["lastUpdated"] = format_instant(lu)
            res["meta"] = meta
            text = _dumps({"resourceType": rtype, "id": rid, "meta": meta,
                           **{k: v for k, v in res.items()
                              if k not in ("resourceType", "id", "meta")}})
            c = self._conn
            c.execute("INSERT OR REPLACE INTO resources (type, id, version, lu_ms, deleted, json)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (rtype, rid, version, lu, int(deleted), text))
            c.execute("INSERT INTO history (type, id, version, lu_ms, deleted, json)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (rtype, rid, version, lu, int(deleted), text))
            c.execute("DELETE FROM search_index WHERE type = ? AND id = ?", (rtype, rid))
            if not deleted:
                c.executemany(
                    "INSERT INTO search_index (type, id, param, sys, val) VALUES (?, ?, ?, ?, ?)",
                    [(rtype, rid, p, s, v)
                     for p, s, v in extract_index(rtype, res, self.base_url)])
            if data is not None:
                c.execute("INSERT OR REPLACE INTO binary_data (id, data) VALUES (?, ?)",
                          (rid, data))
        return Stored(rtype, rid, version, lu, deleted, text), current is None

    def insert(self, resource: dict[str, Any], *, data: bytes | None = None,
               if_none_exist: Sequence[tuple[str, str]] | None = None
               ) -> tuple[Stored, bool]:
        """Create with a new id; with ``if_none_exist`` (a search), return the one match
        instead (created=False), or 412 when several match."""
        rtype = str(resource.get("resourceType"))
        if rtype not in RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"Unknown resource type {rtype!r}.")
        with self.transaction():
            if if_none_exist is not None:
                q = parse_query(rtype, if_none_exist, self.base_url)
                q.count = 2
                page = self.query(q)
                if page.total > 1:
                    raise FhirError(412, "duplicate",
                                    f"If-None-Exist matches {page.total} {rtype} resources.")
                if page.total == 1:
                    return page.items[0], False
            return self.write(rtype, self.new_id(), resource, data=data)

    def remove(self, rtype: str, rid: str) -> None:
        """Delete (a new, deleted version); reads then answer 410."""
        with self.transaction():
            current = self.read(rtype, rid)
            if current is None:
                raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist.")
            if not current.deleted:
                self.write(rtype, rid, json.loads(current.text), deleted=True)
                if rtype == "Binary":
                    self._conn.execute("DELETE FROM binary_data WHERE id = ?", (rid,))

    def query(self, q: ParsedQuery) -> Page:
        where = ["r.type = ?", "r.deleted = 0"]
        args: list[Any] = [q.rtype]
        for ids in q.ids:
            where.append(f"r.id IN ({', '.join('?' * len(ids))})")
            args.extend(ids)
        for name, conds in q.criteria:
            alternatives = " OR ".join(c.sql for c in conds)
            where.append("r.id IN (SELECT s.id FROM search_index s WHERE s.type = ? "
                         f"AND s.param = ? AND ({alternatives}))")
            args.extend([q.rtype, name])
            for c in conds:
                args.extend(c.args)
        for op, start, end in q.last_updated:
            sql, vals = date_sql(op, start, end)
            where.append(sql)
            args.extend(vals)
        clause = " AND ".join(where)
        order = "DESC" if q.descending else "ASC"
        page_where, page_args = clause, list(args)
        if q.after is not None:
            page_where += " AND r.lu_ms < ?" if q.descending else " AND r.lu_ms > ?"
            page_args.append(q.after)
        with self._lock:
            total = int(self._conn.execute(f"SELECT COUNT(*) FROM resources r WHERE {clause}",
                                           args).fetchone()[0])
            rows = [] if q.count == 0 else self._conn.execute(
                "SELECT r.type, r.id, r.version, r.lu_ms, r.deleted, r.json FROM resources r "
                f"WHERE {page_where} ORDER BY r.lu_ms {order} LIMIT ?",
                [*page_args, q.count + 1]).fetchall()
        items = [self._row(r) for r in rows[:q.count]]
        more = len(rows) > q.count
        return Page(total, items, items[-1].lu_ms if more and items else None)

    # ------------------------------------------------------------------ helpers for tests

    def get(self, rtype: str, rid: str) -> dict[str, Any]:
        """The current resource as a client would read it; KeyError if missing or deleted."""
        s = self.read(rtype, rid)
        if s is None or s.deleted:
            raise KeyError(f"{rtype}/{rid}")
        return s.resource(self.base_url)

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store ``resource`` under its ``id`` (a new version, or version 1)."""
        stored, _ = self.write(str(resource["resourceType"]), str(resource["id"]), resource)
        return stored.resource(self.base_url)

    def create(self, resource: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
        """Store ``resource`` under a new server id."""
        stored, _ = self.insert(resource, data=data)
        return stored.resource(self.base_url)

    def put_binary(self, data: bytes, content_type: str, rid: str | None = None
                   ) -> dict[str, Any]:
        """Store bytes as a Binary (new, or a new version of ``rid``)."""
        res = {"resourceType": "Binary", "contentType": content_type}
        if rid is None:
            return self.create(res, data)
        stored, _ = self.write("Binary", rid, res, data=data)
        return stored.resource(self.base_url)

    def binary(self, rid: str) -> bytes:
        data = self.binary_data(rid)
        if data is None:
            raise KeyError(f"Binary/{rid}")
        return data

    def delete(self, rtype: str, rid: str) -> None:
        self.remove(rtype, rid)

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        """All matches, oldest change first; ``based_on=`` stands for ``based-on=``."""
        pairs = [(k if k.startswith("_") else k.replace("_", "-"), v) for k, v in params.items()]
        q = parse_query(rtype, pairs, self.base_url)
        q.count = 1_000_000_000
        return [s.resource(self.base_url) for s in self.query(q).items]

    def count(self, rtype: str | None = None) -> int:
        """Resources not deleted, of one type or of all."""
        with self._lock:
            if rtype is None:
                row = self._conn.execute("SELECT COUNT(*) FROM resources WHERE deleted = 0")
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM resources WHERE deleted = 0 AND type = ?", (rtype,))
            return int(row.fetchone()[0])

    def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, id, version, lu_ms, deleted, json FROM history "
                "WHERE type = ? AND id = ? ORDER BY version", (rtype, rid)).fetchall()
        return [self._row(r).resource(self.base_url) for r in rows]
