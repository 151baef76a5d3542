"""The case queue: filtering, sorting and searching in SQL.

The GUI's table model uses ``first_page`` (count + first page of display rows)
and ``page`` (later pages as the clinician scrolls), so a queue of 100,000
cases never loads 100,000 rows. The CLI uses ``case_ids`` + ``rows``. Every
sort key has an index ending in the same tie-breakers as ``_order``, so a
sorted page is an index walk; ``benchmarks/queue_queries.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from derm_workstation.core.models import (
    CASE_STATUSES,
    OPEN_STATUSES,
    PRIORITY_RANK,
    Case,
    Patient,
)
from derm_workstation.core.views import (
    SORT_KEY_NAMES,
    QueueCounts,
    QueueQuery,
    QueueRow,
    age_in_years,
)

#: Sort keys the queue understands, mapped to SQL columns.
SORT_KEYS: dict[str, Any] = {
    "priority": Case.priority_rank,
    "waiting": Case.submitted_at,
    "submitted": Case.submitted_at,
    "patient": Patient.family_name,
    "age": Patient.birth_date,
    "sex": Patient.sex,
    "complaint": Case.chief_complaint,
    "body_site": Case.body_site,
    "photos": Case.photo_count,
    "status": Case.status,
    "case_number": Case.case_number,
}
_NEEDS_PATIENT = {"patient", "age", "sex"}
assert set(SORT_KEYS) == set(SORT_KEY_NAMES), "views.SORT_KEY_NAMES and SORT_KEYS must agree"


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(q: QueueQuery) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    statuses = q.statuses if q.statuses else OPEN_STATUSES
    if tuple(sorted(statuses)) != tuple(sorted(CASE_STATUSES)):
        conds.append(Case.status.in_(statuses))
    if q.priorities:
        conds.append(Case.priority_rank.in_(sorted(PRIORITY_RANK[p] for p in q.priorities)))
    if q.patient_id:
        conds.append(Case.patient_id == q.patient_id)
    for word in q.text.lower().split():
        conds.append(Case.search_text.like(f"%{_escape_like(word)}%", escape="\\"))
    return conds


def _order(q: QueueQuery) -> list[Any]:
    """ORDER BY for a query: the key, then waiting time, then id (a total order, so
    paging is stable). Descending is the exact reverse, so an index serves both ways."""
    col = SORT_KEYS[q.sort]
    # Age sorts by birth date, which runs the other way.
    desc = (not q.descending) if q.sort == "age" else q.descending
    if q.sort == "priority":
        cols = [Case.priority_rank, Case.submitted_at, Case.id]
    elif q.sort in ("waiting", "submitted"):
        cols = [Case.submitted_at, Case.id]
    elif q.sort == "patient":
        cols = [Patient.family_name, Patient.given_name, Case.submitted_at, Case.id]
    elif q.sort == "sex":
        cols = [Patient.sex, Patient.family_name, Patient.given_name, Case.submitted_at, Case.id]
    else:
        cols = [col, Case.submitted_at, Case.id]
    if q.sort == "age":
        # Keep the tie-breakers in the clinician's direction, not the birth date's.
        return [col.desc() if desc else col.asc()] + [
            c.desc() if q.descending else c.asc() for c in cols[1:]
        ]
    return [c.desc() if desc else c.asc() for c in cols]


def ids_statement(q: QueueQuery) -> Select[Any]:
    stmt = select(Case.id)
    if q.sort in _NEEDS_PATIENT:
        stmt = stmt.join(Patient, Patient.id == Case.patient_id)
    return stmt.where(*_where(q)).order_by(*_order(q))


def case_ids(session: Session, q: QueueQuery) -> list[str]:
    """Ordered ids of every case matching the query."""
    return list(session.scalars(ids_statement(q)))


_ROW_COLUMNS = (
    Case.id,
    Case.case_number,
    Case.priority,
    Case.status,
    Case.submitted_at,
    Patient.family_name,
    Patient.given_name,
    Patient.birth_date,
    Patient.sex,
    Case.chief_complaint,
    Case.body_site,
    Case.photo_count,
    Case.incomplete_reason,
)


def _row(r: Any, today: date | None) -> QueueRow:
    name = ", ".join(x for x in (r.family_name, r.given_name) if x) or "(no name)"
    return QueueRow(
        id=r.id,
        case_number=r.case_number,
        priority=r.priority,
        status=r.status,
        submitted_at=r.submitted_at,
        patient_name=name,
        age_years=age_in_years(r.birth_date, today),
        sex=r.sex,
        chief_complaint=r.chief_complaint,
        body_site=r.body_site,
        photo_count=r.photo_count,
        incomplete=r.incomplete_reason is not None,
    )


def count(session: Session, q: QueueQuery) -> int:
    """How many cases match (no ordering, no join)."""
    return int(session.scalar(select(func.count()).select_from(Case).where(*_where(q))) or 0)


def page(session: Session, q: QueueQuery, offset: int, limit: int,
         today: date | None = None) -> list[QueueRow]:
    """One page of display rows in queue order: a single ordered, limited query."""
    stmt = (
        select(*_ROW_COLUMNS)
        .join(Patient, Patient.id == Case.patient_id)
        .where(*_where(q))
        .order_by(*_order(q))
        .offset(offset)
        .limit(limit)
    )
    return [_row(r, today) for r in session.execute(stmt)]


#: A text search matching at most this many cases is answered from its ids.
SPARSE_LIMIT = 5000


def first_page(session: Session, q: QueueQuery, limit: int,
               today: date | None = None) -> tuple[int, list[QueueRow]]:
    """(total matches, first page in queue order).

    Without search words the sort index is walked and the walk stops after one
    page. A substring search cannot use an index: one scan collects the ids of
    up to SPARSE_LIMIT matches; a sparse result is then ordered by id lookup,
    a dense one is paged by the index walk (which finds a page of matches fast).
    """
    if not q.text.split():
        first = page(session, q, 0, limit, today)
        total = len(first) if len(first) < limit else count(session, q)
        return total, first
    ids = list(session.scalars(select(Case.id).where(*_where(q)).limit(SPARSE_LIMIT + 1)))
    if len(ids) <= SPARSE_LIMIT:
        stmt = (
            select(*_ROW_COLUMNS)
            .join(Patient, Patient.id == Case.patient_id)
            .where(Case.id.in_(ids))
            .order_by(*_order(q))
            .limit(limit)
        )
        return len(ids), [_row(r, today) for r in session.execute(stmt)]
    return count(session, q), page(session, q, 0, limit, today)


def rows(session: Session, ids: Sequence[str], today: date | None = None) -> list[QueueRow]:
    """Display rows for the given ids, in the same order (unknown ids skipped)."""
    if not ids:
        return []
    stmt = (
        select(*_ROW_COLUMNS)
        .join(Patient, Patient.id == Case.patient_id)
        .where(Case.id.in_(list(ids)))
    )
    found = {r.id: _row(r, today) for r in session.execute(stmt)}
    return [found[i] for i in ids if i in found]


def counts(session: Session, urgent_only: bool = False) -> QueueCounts:
    stmt = select(Case.status, func.count()).group_by(Case.status)
    if urgent_only:
        stmt = stmt.where(or_(Case.priority_rank <= PRIORITY_RANK["urgent"]))
    return QueueCounts({s: n for s, n in session.execute(stmt).all()})
