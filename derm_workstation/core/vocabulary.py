"""Codes and labels of the domain (FHIR values and what a clinician reads).

No SQLAlchemy here: the Qt layer imports this at start-up, before the database
libraries are loaded on the database lane.
"""

from __future__ import annotations

#: FHIR Task.status values (PORTAL_CONTRACT.md), in workflow order.
CASE_STATUSES: tuple[str, ...] = (
    "requested",
    "received",
    "accepted",
    "in-progress",
    "on-hold",
    "completed",
    "cancelled",
)
OPEN_STATUSES: tuple[str, ...] = CASE_STATUSES[:5]
STATUS_LABELS: dict[str, str] = {
    "requested": "New",
    "received": "Received",
    "accepted": "Accepted",
    "in-progress": "In progress",
    "on-hold": "Awaiting patient",
    "completed": "Completed",
    "cancelled": "Cancelled",
}
#: FHIR request priorities, most urgent first; the rank sorts them in SQL.
PRIORITY_RANK: dict[str, int] = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
PRIORITY_LABELS: dict[str, str] = {
    "stat": "STAT",
    "asap": "ASAP",
    "urgent": "Urgent",
    "routine": "Routine",
}
SEXES: tuple[str, ...] = ("female", "male", "other", "unknown")
MESSAGE_DIRECTIONS: tuple[str, ...] = ("inbound", "outbound")
DELIVERY_STATES: tuple[str, ...] = ("received", "draft", "queued", "sent", "failed")
PHOTO_SOURCES: tuple[str, ...] = ("portal", "import", "demo")
