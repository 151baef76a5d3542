"""Sync bookkeeping in the ``sync_state`` table: cursors, last sync, portal URL.

Keys:

* ``portal_url`` — the portal the cursors belong to (another URL resets them);
* ``cursor.open`` / ``cursor.closed`` — ``meta.lastUpdated`` of the newest Task
  committed from the open-status and closed-status searches;
* ``last_attempt_at``, ``last_success_at``, ``last_error``, ``last_summary`` (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from derm_workstation.core.models import SyncState, utcnow
from derm_workstation.core.workspace import Workspace

PORTAL_URL = "portal_url"
CURSOR_OPEN = "cursor.open"
CURSOR_CLOSED = "cursor.closed"
LAST_ATTEMPT = "last_attempt_at"
LAST_SUCCESS = "last_success_at"
LAST_ERROR = "last_error"
LAST_SUMMARY = "last_summary"


def get(s: Session, key: str) -> str | None:
    row = s.get(SyncState, key)
    return row.value if row is not None else None


def put(s: Session, key: str, value: str | None) -> None:
    row = s.get(SyncState, key)
    if row is None:
        s.add(SyncState(key=key, value=value, updated_at=utcnow()))
    else:
        row.value = value
        row.updated_at = utcnow()


@dataclass(frozen=True)
class SyncStatus:
    """What the status bar shows about sync."""

    portal_url: str | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_summary: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "portal_url": self.portal_url,
            "last_attempt_at": self.last_attempt_at.isoformat() if self.last_attempt_at else None,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_error": self.last_error,
            "last_summary": self.last_summary,
        }


def _dt(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def status(ws: Workspace) -> SyncStatus:
    with ws.db.session() as s:
        raw = get(s, LAST_SUMMARY)
        try:
            summary = json.loads(raw) if raw else None
        except ValueError:
            summary = None
        return SyncStatus(
            portal_url=get(s, PORTAL_URL),
            last_attempt_at=_dt(get(s, LAST_ATTEMPT)),
            last_success_at=_dt(get(s, LAST_SUCCESS)),
            last_error=get(s, LAST_ERROR),
            last_summary=summary if isinstance(summary, dict) else None,
        )


__all__ = [
    "CURSOR_CLOSED",
    "CURSOR_OPEN",
    "LAST_ATTEMPT",
    "LAST_ERROR",
    "LAST_SUCCESS",
    "LAST_SUMMARY",
    "PORTAL_URL",
    "SyncStatus",
    "get",
    "put",
    "status",
]
