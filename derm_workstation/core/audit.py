"""Append-only, hash-chained audit trail.

Each event's hash covers its own fields and the previous event's hash, so a
deleted or edited row breaks the chain (:func:`verify_chain`). Details hold ids
and field names only — never names, birth dates, messages or image bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from derm_workstation.core.models import AuditEvent, utcnow
from derm_workstation.core.users import Actor

if TYPE_CHECKING:
    from derm_workstation.core.workspace import Workspace

GENESIS = "0" * 64
#: The workstation was connected to a portal / its portal was forgotten (GUI or CLI).
PORTAL_CONNECT = "portal.connect"
PORTAL_DISCONNECT = "portal.disconnect"


def _digest(prev: str, at: datetime, actor: str, action: str, etype: str, eid: str | None,
            detail: dict[str, Any]) -> str:
    payload = json.dumps(
        [prev, at.isoformat(), actor, action, etype, eid, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


#: ``session.info`` key: (the transaction, the last event recorded in it).
_LAST = "derm_audit_last"


def _previous_hash(session: Session) -> str | None:
    """The hash the next event chains to.

    After the first event of a transaction it is that transaction's last event (even
    one not flushed yet: events are written in the order they were added, and on SQLite
    no other writer can append until this transaction ends), unless a savepoint rolled
    it back. Otherwise it is read from the database.
    """
    cached = session.info.get(_LAST)
    if cached is not None:
        transaction, last = cached
        if transaction is session.get_transaction() and last in session:
            return str(last.hash)
    return session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))


def record(session: Session, actor: Actor, action: str, entity_type: str,
           entity_id: str | None, detail: dict[str, Any] | None = None, *,
           flush: bool = True) -> AuditEvent:
    """Append an event in the caller's transaction.

    ``flush=False`` leaves writing it to the caller's next flush or commit (a bulk
    writer saves a statement per row it would otherwise write twice).
    """
    prev = _previous_hash(session)
    at = utcnow().replace(microsecond=0)
    det = dict(detail or {})
    ev = AuditEvent(
        at=at,
        actor=actor.username,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        detail=det,
        prev_hash=prev or GENESIS,
        hash=_digest(prev or GENESIS, at, actor.username, action, entity_type, entity_id, det),
    )
    session.add(ev)
    session.info[_LAST] = (session.get_transaction(), ev)
    if flush:
        session.flush()
    return ev


def verify_chain(session: Session) -> int | None:
    """Return the id of the first broken event, or None when the chain is intact."""
    prev = GENESIS
    for ev in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        expected = _digest(prev, ev.at, ev.actor, ev.action, ev.entity_type, ev.entity_id,
                           ev.detail)
        if ev.prev_hash != prev or ev.hash != expected:
            return ev.id
        prev = ev.hash
    return None


def record_portal(workspace: Workspace, actor: Actor, action: str, host: str) -> None:
    """Log connecting (``portal.connect``) or disconnecting (``portal.disconnect``) the
    portal in the data folder's database. ``host`` is the portal's host[:port] only —
    never a path, a token or a secret."""
    if action not in (PORTAL_CONNECT, PORTAL_DISCONNECT):
        raise ValueError(f"not a portal audit action: {action}")
    if any(c in host for c in "/@?#") or " " in host:
        raise ValueError("record_portal takes a host name only")
    with workspace.db.session() as s:
        record(s, actor, action, "portal", None, {"host": host})
