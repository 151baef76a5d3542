"""Plain, immutable results of the core: queue queries and rows, case details.

No SQLAlchemy here. Services return these detached objects, so they cross
threads safely, and the Qt layer can import them at start-up before the
database libraries are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from derm_workstation.core.errors import InputError
from derm_workstation.core.vocabulary import (
    CASE_STATUSES,
    OPEN_STATUSES,
    PRIORITY_LABELS,
    PRIORITY_RANK,
    STATUS_LABELS,
)

#: The queue's sort keys (``core.queue.SORT_KEYS`` maps each to SQL).
SORT_KEY_NAMES: tuple[str, ...] = (
    "priority",
    "waiting",
    "submitted",
    "patient",
    "age",
    "sex",
    "complaint",
    "body_site",
    "photos",
    "status",
    "case_number",
)


@dataclass(frozen=True)
class QueueQuery:
    """What the clinician asked to see.

    ``statuses`` None means the open cases (not completed or cancelled);
    ``text`` matches every word against patient name, identifier, case number,
    complaint and body site. The default order is the triage order: most urgent
    first, then the longest waiting.
    """

    statuses: tuple[str, ...] | None = None
    priorities: tuple[str, ...] | None = None
    text: str = ""
    sort: str = "priority"
    descending: bool = False
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEY_NAMES:
            raise InputError(
                f"Unknown sort '{self.sort}'. Choose one of: {', '.join(sorted(SORT_KEY_NAMES))}."
            )
        for s in self.statuses or ():
            if s not in CASE_STATUSES:
                raise InputError(
                    f"Unknown status '{s}'. Choose one of: {', '.join(CASE_STATUSES)}."
                )
        for p in self.priorities or ():
            if p not in PRIORITY_RANK:
                raise InputError(
                    f"Unknown priority '{p}'. Choose one of: {', '.join(PRIORITY_RANK)}."
                )


@dataclass(frozen=True)
class QueueRow:
    """One line of the queue, ready to display."""

    id: str
    case_number: str | None
    priority: str
    status: str
    submitted_at: datetime
    patient_name: str
    age_years: int | None
    sex: str
    chief_complaint: str
    body_site: str
    photo_count: int
    incomplete: bool = False

    @property
    def priority_label(self) -> str:
        return PRIORITY_LABELS.get(self.priority, self.priority)

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "case_number": self.case_number,
            "status": self.status,
            "priority": self.priority,
            "submitted_at": self.submitted_at.isoformat(),
            "patient_name": self.patient_name,
            "age_years": self.age_years,
            "sex": self.sex,
            "chief_complaint": self.chief_complaint,
            "body_site": self.body_site,
            "photo_count": self.photo_count,
            "incomplete": self.incomplete,
        }


def age_in_years(birth: date | None, today: date | None = None) -> int | None:
    if birth is None:
        return None
    today = today or datetime.now(UTC).date()
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    return max(years, 0)


@dataclass
class QueueCounts:
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def open(self) -> int:
        return sum(n for s, n in self.by_status.items() if s in OPEN_STATUSES)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class PatientView:
    id: str
    name: str
    identifier: str | None
    birth_date: date | None
    age_years: int | None
    sex: str
    portal_id: str | None


@dataclass(frozen=True)
class PhotoView:
    id: str
    sha256: str
    content_type: str
    byte_size: int
    width: int
    height: int
    body_site: str
    title: str
    taken_at: datetime | None
    calibration_px_per_mm: float | None
    source: str
    portal_media_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "byte_size": self.byte_size,
            "width": self.width,
            "height": self.height,
            "body_site": self.body_site,
            "title": self.title,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "calibration_px_per_mm": self.calibration_px_per_mm,
            "source": self.source,
            "portal_media_id": self.portal_media_id,
        }


@dataclass(frozen=True)
class QuestionView:
    link_id: str
    text: str
    answers: tuple[str, ...]
    items: tuple[QuestionView, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "link_id": self.link_id,
            "text": self.text,
            "answers": list(self.answers),
            "items": [i.as_json() for i in self.items],
        }


@dataclass(frozen=True)
class MessageView:
    id: str
    direction: str
    text: str
    sent_at: datetime
    delivery_state: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "text": self.text,
            "sent_at": self.sent_at.isoformat(),
            "delivery_state": self.delivery_state,
        }


@dataclass(frozen=True)
class EarlierCaseView:
    id: str
    submitted_at: datetime
    status: str
    chief_complaint: str
    body_site: str
    photo_count: int


@dataclass(frozen=True)
class AllergyView:
    """An allergy of the patient as the portal has it."""

    substance: str
    clinical_status: str | None
    criticality: str | None
    reaction: str

    def as_json(self) -> dict[str, Any]:
        return {
            "substance": self.substance,
            "clinical_status": self.clinical_status,
            "criticality": self.criticality,
            "reaction": self.reaction,
        }


#: What the case banner says about the workstation's claim (``Case.claim_state``).
CLAIM_STATE_LABELS = {
    "pending": "Claimed by you (pending sync)",
    "claimed": "Claimed by you",
    "conflict": "Your claim conflicted with a change on the portal",
    "elsewhere": "Claimed by someone else on the portal",
}


@dataclass(frozen=True)
class CaseDetail:
    id: str
    case_number: str | None
    status: str
    priority: str
    chief_complaint: str
    body_site: str
    description: str
    submitted_at: datetime
    updated_at: datetime
    assignee: str | None
    incomplete_reason: str | None
    portal_task_id: str | None
    portal_task_version: str | None
    portal_service_request_id: str | None
    patient: PatientView
    photos: tuple[PhotoView, ...]
    questionnaire: tuple[QuestionView, ...]
    messages: tuple[MessageView, ...]
    earlier_cases: tuple[EarlierCaseView, ...] = field(default=())
    #: A sentence about a change on the portal (cancelled / claimed / completed elsewhere,
    #: a claim that conflicted); shown as the case banner.
    portal_notice: str | None = None
    claim_state: str | None = None
    portal_business_status: str | None = None
    portal_owner: str | None = None
    allergies: tuple[AllergyView, ...] = field(default=())
    #: True when the portal answered the allergy search (even with none); False when it
    #: was never asked or the search failed — then "no allergies" must not be claimed.
    allergies_checked: bool = False

    @property
    def claim_label(self) -> str | None:
        return CLAIM_STATE_LABELS.get(self.claim_state or "")

    @property
    def claimable(self) -> bool:
        """A portal case still waiting for someone (requested/received, not held)."""
        return (self.portal_task_id is not None and self.status in ("requested", "received")
                and not self.portal_owner and self.claim_state not in ("pending", "claimed"))

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    @property
    def priority_label(self) -> str:
        return PRIORITY_LABELS.get(self.priority, self.priority)

    def as_json(self) -> dict[str, Any]:
        p = self.patient
        return {
            "id": self.id,
            "case_number": self.case_number,
            "status": self.status,
            "priority": self.priority,
            "chief_complaint": self.chief_complaint,
            "body_site": self.body_site,
            "description": self.description,
            "submitted_at": self.submitted_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "assignee": self.assignee,
            "incomplete_reason": self.incomplete_reason,
            "portal": {
                "task_id": self.portal_task_id,
                "task_version": self.portal_task_version,
                "service_request_id": self.portal_service_request_id,
                "patient_id": p.portal_id,
                "business_status": self.portal_business_status,
                "owner": self.portal_owner,
            },
            "portal_notice": self.portal_notice,
            "claim_state": self.claim_state,
            "allergies": [a.as_json() for a in self.allergies],
            "allergies_checked": self.allergies_checked,
            "patient": {
                "id": p.id,
                "name": p.name,
                "identifier": p.identifier,
                "birth_date": p.birth_date.isoformat() if p.birth_date else None,
                "age_years": p.age_years,
                "sex": p.sex,
            },
            "questionnaire": [q.as_json() for q in self.questionnaire],
            "messages": [m.as_json() for m in self.messages],
            "photos": [ph.as_json() for ph in self.photos],
            "earlier_cases": [
                {
                    "id": e.id,
                    "submitted_at": e.submitted_at.isoformat(),
                    "status": e.status,
                    "chief_complaint": e.chief_complaint,
                    "body_site": e.body_site,
                    "photo_count": e.photo_count,
                }
                for e in self.earlier_cases
            ],
        }


