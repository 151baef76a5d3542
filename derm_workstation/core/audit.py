"""Append-only, hash-chained audit trail.

Each event's hash covers its own fields and the previous event's hash, so a
deleted or edited row breaks the chain (:func:`verify_chain`). Details hold ids
and field names only — never names, birth dates, messages or image bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text
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
#: PostgreSQL advisory lock held by a transaction while it appends to the chain.
_PG_CHAIN_LOCK = 0x6465726D_61756474  # "dermaudt"


def _last_in_transaction(session: Session) -> AuditEvent | None:
    """The last event this transaction recorded, unless a savepoint rolled it back."""
    cached = session.info.get(_LAST)
    if cached is not None:
        transaction, last = cached
        if transaction is session.get_transaction() and last in session:
            return last
    return None


def record(session: Session, actor: Actor, action: str, entity_type: str,
           entity_id: str | None, detail: dict[str, Any] | None = None, *,
           flush: bool = True) -> AuditEvent:
    """Append an event in the caller's transaction.

    The first event of a transaction is written before the chain's end is read: the
    write takes the database's write lock (on PostgreSQL an advisory lock is taken
    first), so no other writer — another workstation, or the window's own database
    thread while a sync commits — can append between the read and this transaction's
    commit, and the chain never forks. The transaction's later events chain to its last
    one without reading anything back; ``flush=False`` leaves writing them to the
    caller's next flush or commit (a bulk writer saves a statement per row).
    """
    at = utcnow().replace(microsecond=0)
    det = dict(detail or {})
    ev = AuditEvent(at=at, actor=actor.username, action=action, entity_type=entity_type,
                    entity_id=entity_id, detail=det)
    last = _last_in_transaction(session)
    if last is not None:
        prev = str(last.hash)
        session.add(ev)
    else:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": _PG_CHAIN_LOCK})
        ev.prev_hash = ev.hash = os.urandom(32).hex()  # unique stand-in, replaced below
        session.add(ev)
        session.flush()
        prev = session.scalar(select(AuditEvent.hash).where(AuditEvent.id < ev.id)
                              .order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
    ev.prev_hash = prev
    ev.hash = _digest(prev, at, actor.username, action, entity_type, entity_id, det)
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
