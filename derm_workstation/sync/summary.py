"""The result of one sync, as the CLI prints it and the GUI shows it.

No patient data: errors and warnings name cases by their portal case number.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from derm_workstation.core.models import utcnow


@dataclass
class SyncSummary:
    cases_new: int = 0
    cases_updated: int = 0
    photos_downloaded: int = 0
    bytes: int = 0
    outbox_sent: int = 0
    outbox_failed: int = 0
    outbox_pending: int = 0
    #: Problems that mean the sync did not get everything (the run is not "completed").
    errors: list[str] = field(default_factory=list)
    #: Cases stored but flagged incomplete by the portal's data, and similar notes.
    warnings: list[str] = field(default_factory=list)
    #: (case id, sentence) for cases cancelled/claimed/completed elsewhere or conflicting.
    notices: list[tuple[str, str]] = field(default_factory=list)
    changed_case_ids: list[str] = field(default_factory=list)
    requests: int = 0
    aborted: bool = False
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def completed(self) -> bool:
        """True when the pull got everything and the outbox was pushed without trouble."""
        return not self.errors and not self.aborted

    def error(self, text: str) -> None:
        with self._lock:
            if text not in self.errors:
                self.errors.append(text)

    def warn(self, text: str) -> None:
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)

    def changed(self, case_id: str) -> None:
        with self._lock:
            if case_id not in self.changed_case_ids:
                self.changed_case_ids.append(case_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "cases_new": self.cases_new,
            "cases_updated": self.cases_updated,
            "photos_downloaded": self.photos_downloaded,
            "bytes": self.bytes,
            "outbox_sent": self.outbox_sent,
            "outbox_failed": self.outbox_failed,
            "outbox_pending": self.outbox_pending,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "notices": [{"case_id": c, "notice": n} for c, n in self.notices],
            "changed_case_ids": list(self.changed_case_ids),
            "requests": self.requests,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


__all__ = ["SyncSummary"]
