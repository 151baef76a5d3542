"""Use cases. Every clinician action is a call here: permission check, change, audit.

The GUI and the CLI call these services and never touch the database directly.
Results are plain frozen dataclasses, detached from any database session, so
they can cross threads safely.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from derm_workstation.core import audit, queue
from derm_workstation.core.errors import NotFoundError
from derm_workstation.core.models import (
    OPEN_STATUSES,
    Case,
    Patient,
    Photo,
    QuestionnaireItem,
    QuestionnaireResponse,
)
from derm_workstation.core.users import Actor
from derm_workstation.core.views import (
    AllergyView,
    CaseDetail,
    EarlierCaseView,
    MessageView,
    PatientView,
    PhotoView,
    QuestionView,
)
from derm_workstation.core.workspace import Workspace


def photo_view(ph: Photo) -> PhotoView:
    """The detached view of a stored photo."""
    return PhotoView(
        id=ph.id,
        sha256=ph.sha256,
        content_type=ph.content_type,
        byte_size=ph.byte_size,
        width=ph.width,
        height=ph.height,
        body_site=ph.body_site,
        title=ph.title,
        taken_at=ph.taken_at,
        calibration_px_per_mm=ph.calibration_px_per_mm,
        source=ph.source,
        portal_media_id=ph.portal_media_id,
    )


def _question_tree(items: Sequence[QuestionnaireItem]) -> tuple[QuestionView, ...]:
    children: dict[str | None, list[QuestionnaireItem]] = {}
    for it in items:
        children.setdefault(it.parent_id, []).append(it)

    def build(parent: str | None) -> tuple[QuestionView, ...]:
        return tuple(
            QuestionView(
                link_id=it.link_id,
                text=it.text,
                answers=tuple(a.display for a in it.answers),
                items=build(it.id),
            )
            for it in sorted(children.get(parent, []), key=lambda i: i.position)
        )

    return build(None)


class CaseService:
    """Reading the queue and cases. Viewing a case is audited."""

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def queue_ids(self, q: queue.QueueQuery) -> list[str]:
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            return queue.case_ids(s, q)

    def queue_first_page(self, q: queue.QueueQuery,
                         limit: int) -> tuple[int, list[queue.QueueRow]]:
        """(number of matching cases, first page of rows) — what the queue view shows first."""
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            return queue.first_page(s, q, limit)

    def queue_page(self, q: queue.QueueQuery, offset: int, limit: int) -> list[queue.QueueRow]:
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            return queue.page(s, q, offset, limit)

    def queue_rows(self, ids: Sequence[str]) -> list[queue.QueueRow]:
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            return queue.rows(s, ids)

    def counts(self) -> queue.QueueCounts:
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            return queue.counts(s)

    def resolve_id(self, s: Session, ref: str) -> str:
        """Accept a full local id, a unique id prefix (>= 8 chars) or a portal case number."""
        ref = ref.strip()
        if s.get(Case, ref) is not None:
            return ref
        by_number = list(s.scalars(select(Case.id).where(Case.case_number == ref)))
        if len(by_number) == 1:
            return by_number[0]
        if len(ref) >= 8:
            matches = list(
                s.scalars(select(Case.id).where(Case.id.startswith(ref, autoescape=True)).limit(2))
            )
            if len(matches) == 1:
                return matches[0]
        raise NotFoundError(
            f"No case with id '{ref}'. List cases with: derm-workstation queue list"
        )

    def case_detail(self, case_ref: str, *, audit_view: bool = True) -> CaseDetail:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            case_id = self.resolve_id(s, case_ref)
            c = s.scalars(
                select(Case)
                .where(Case.id == case_id)
                .options(
                    selectinload(Case.patient).selectinload(Patient.allergies),
                    selectinload(Case.photos),
                    selectinload(Case.messages),
                    selectinload(Case.questionnaires)
                    .selectinload(QuestionnaireResponse.items)
                    .selectinload(QuestionnaireItem.answers),
                )
            ).one()
            p: Patient = c.patient
            earlier = s.execute(
                select(
                    Case.id, Case.submitted_at, Case.status, Case.chief_complaint,
                    Case.body_site, Case.photo_count,
                )
                .where(Case.patient_id == p.id, Case.id != c.id,
                       Case.submitted_at < c.submitted_at)
                .order_by(Case.submitted_at.desc())
            ).all()
            items = [it for qr in c.questionnaires for it in qr.items]
            detail = CaseDetail(
                id=c.id,
                case_number=c.case_number,
                status=c.status,
                priority=c.priority,
                chief_complaint=c.chief_complaint,
                body_site=c.body_site,
                description=c.description,
                submitted_at=c.submitted_at,
                updated_at=c.updated_at,
                assignee=c.assignee,
                incomplete_reason=c.incomplete_reason,
                portal_task_id=c.portal_task_id,
                portal_task_version=c.portal_task_version,
                portal_service_request_id=c.portal_service_request_id,
                patient=PatientView(
                    id=p.id,
                    name=p.display_name,
                    identifier=p.identifier,
                    birth_date=p.birth_date,
                    age_years=queue.age_in_years(p.birth_date),
                    sex=p.sex,
                    portal_id=p.portal_id,
                ),
                photos=tuple(photo_view(ph) for ph in c.photos),
                questionnaire=_question_tree(items),
                messages=tuple(
                    MessageView(m.id, m.direction, m.text, m.sent_at, m.delivery_state)
                    for m in c.messages
                ),
                earlier_cases=tuple(EarlierCaseView(*row) for row in earlier),
                portal_notice=c.portal_notice,
                claim_state=c.claim_state,
                portal_business_status=c.portal_business_status,
                portal_owner=c.portal_owner,
                allergies=tuple(
                    AllergyView(a.substance, a.clinical_status, a.criticality, a.reaction)
                    for a in p.allergies
                ),
                allergies_checked=p.allergies_checked_at is not None or bool(p.allergies),
            )
            if audit_view:
                audit.record(s, self.actor, "case.view", "case", c.id)
            return detail

    def photo_hashes(self, case_ids: Sequence[str]) -> list[str]:
        """SHA-256 of every photo of these cases (for preparing previews in the background)."""
        self.actor.require("case.view")
        if not case_ids:
            return []
        with self.ws.db.session() as s:
            return list(s.scalars(select(Photo.sha256).where(Photo.case_id.in_(list(case_ids)))
                                  .distinct()))

    def open_photo_hashes(self, limit: int = 1000) -> list[str]:
        """SHA-256 of the photos of open cases, most urgent and longest waiting first
        (at most ``limit``): the photos a clinician is about to open, whose previews the
        window prepares in the background at start — also for photos that arrived while
        it was closed (a command-line sync, another workstation's import)."""
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            rows = s.execute(
                select(Photo.sha256).join(Case, Photo.case_id == Case.id)
                .where(Case.status.in_(list(OPEN_STATUSES)))
                .order_by(Case.priority_rank, Case.submitted_at, Photo.position)
                .limit(limit)
            ).scalars()
            return list(dict.fromkeys(rows))

    def photo_bytes(self, sha256: str) -> bytes:
        """Verified bytes of a stored photo (raises ImageCorruptError when damaged)."""
        self.actor.require("case.view")
        return self.ws.images.read_bytes(sha256)


def now_utc() -> datetime:
    return datetime.now(UTC)
