"""Writing new cases into the local store.

Used by the demo seeder now and by portal sync later: one place that keeps the
derived columns (photo count, search text) and the audit trail right. Inputs
are duck-typed (``QuestionLike``, ``AnswerLike``) so any source that has the
same fields — demo data, FHIR mapping — can be passed as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Protocol

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from derm_workstation.core import audit
from derm_workstation.core.errors import InputError
from derm_workstation.core.imagestore import ImageStore
from derm_workstation.core.models import (
    CASE_STATUSES,
    MESSAGE_DIRECTIONS,
    PRIORITY_RANK,
    SEXES,
    Case,
    Message,
    Patient,
    Photo,
    QuestionnaireAnswer,
    QuestionnaireItem,
    QuestionnaireResponse,
    new_id,
)
from derm_workstation.core.users import Actor
from derm_workstation.imaging.probe import probe_bytes


class AnswerLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def value(self) -> str | bool | int | float | date: ...
    @property
    def system(self) -> str | None: ...
    @property
    def code(self) -> str | None: ...


class QuestionLike(Protocol):
    @property
    def link_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def answers(self) -> Sequence[AnswerLike]: ...
    @property
    def items(self) -> Sequence[QuestionLike]: ...


def upsert_patient(
    s: Session,
    *,
    identifier: str | None,
    family_name: str,
    given_name: str,
    birth_date: date | None,
    sex: str,
    portal_id: str | None = None,
) -> Patient:
    """Find the patient by portal id (or identifier), else create it; update demographics."""
    patient = None
    if portal_id:
        patient = s.scalar(select(Patient).where(Patient.portal_id == portal_id))
    if patient is None and identifier:
        patient = s.scalar(select(Patient).where(Patient.identifier == identifier))
    if patient is None:
        patient = Patient(portal_id=portal_id)
        s.add(patient)
    patient.identifier = identifier
    patient.family_name = family_name
    patient.given_name = given_name
    patient.birth_date = birth_date
    patient.sex = sex if sex in SEXES else "unknown"
    for case in patient.cases:  # names are part of each case's search text
        case.refresh_search_text()
    s.flush()
    return patient


def add_case(
    s: Session,
    actor: Actor,
    patient: Patient,
    *,
    status: str,
    priority: str,
    chief_complaint: str,
    body_site: str,
    description: str,
    submitted_at: datetime,
    updated_at: datetime | None = None,
    case_number: str | None = None,
    portal_task_id: str | None = None,
    portal_task_version: str | None = None,
    portal_service_request_id: str | None = None,
    incomplete_reason: str | None = None,
    flush: bool = True,
) -> Case:
    """A new case (audited). ``flush=False`` leaves writing it to the caller's next
    flush or commit, so fields the caller sets next go into the same INSERT."""
    actor.require("case.edit")
    if status not in CASE_STATUSES:
        raise InputError(f"Unknown case status '{status}'.")
    if priority not in PRIORITY_RANK:
        raise InputError(f"Unknown priority '{priority}'.")
    case = Case(
        id=new_id(),  # known before the flush: the audit event refers to it
        patient=patient,
        status=status,
        priority=priority,
        priority_rank=PRIORITY_RANK[priority],
        chief_complaint=chief_complaint,
        body_site=body_site,
        description=description,
        submitted_at=submitted_at,
        updated_at=updated_at or submitted_at,
        case_number=case_number,
        portal_task_id=portal_task_id,
        portal_task_version=portal_task_version,
        portal_service_request_id=portal_service_request_id,
        incomplete_reason=incomplete_reason,
        photo_count=0,
    )
    case.refresh_search_text()
    s.add(case)
    if flush:
        s.flush()
    audit.record(s, actor, "case.create", "case", case.id, flush=flush)
    return case


def add_photo(
    s: Session,
    images: ImageStore,
    case: Case,
    data: bytes,
    *,
    body_site: str = "",
    title: str = "",
    taken_at: datetime | None = None,
    source: str = "portal",
    portal_media_id: str | None = None,
) -> Photo:
    """Store the bytes (content-addressed) and the photo's metadata; bumps the case count."""
    facts = probe_bytes(data)
    sha = images.put_bytes(data)
    return add_stored_photo(
        s, case, sha256=sha, content_type=facts.content_type, byte_size=len(data),
        width=facts.width, height=facts.height, body_site=body_site, title=title,
        taken_at=taken_at, source=source, portal_media_id=portal_media_id,
    )


def add_stored_photo(
    s: Session,
    case: Case,
    *,
    sha256: str,
    content_type: str,
    byte_size: int,
    width: int,
    height: int,
    body_site: str = "",
    title: str = "",
    taken_at: datetime | None = None,
    source: str = "portal",
    portal_media_id: str | None = None,
    flush: bool = True,
) -> Photo:
    """Record a photo already in the image store (streamed there by portal sync).

    ``flush=False`` lets a caller adding several photos flush once at the end.
    """
    photo = Photo(
        case=case,
        position=case.photo_count,
        sha256=sha256,
        content_type=content_type,
        byte_size=byte_size,
        width=width,
        height=height,
        body_site=body_site,
        title=title,
        taken_at=taken_at,
        source=source,
        portal_media_id=portal_media_id,
    )
    s.add(photo)
    case.photo_count += 1
    if flush:
        s.flush()
    return photo


#: The columns :func:`_answer` fills (all but the keys).
_ANSWER_VALUES = ("position", "value_type", "value_string", "value_boolean", "value_integer",
                  "value_decimal", "value_date", "value_system", "value_code")


def _answer(a: AnswerLike, position: int) -> QuestionnaireAnswer:
    ans = QuestionnaireAnswer(position=position, value_type=a.type)
    v = a.value
    if a.type == "boolean":
        ans.value_boolean = bool(v)
    elif a.type == "integer" and isinstance(v, int):
        ans.value_integer = v
    elif a.type == "decimal" and isinstance(v, int | float):
        ans.value_decimal = float(v)
    elif a.type == "date" and isinstance(v, date):
        ans.value_date = v
    elif a.type == "coding":
        ans.value_string = str(v)
        ans.value_system = a.system
        ans.value_code = a.code
    else:
        ans.value_type = "string"
        ans.value_string = str(v)
    return ans


def add_questionnaire(
    s: Session,
    case: Case,
    questions: Sequence[QuestionLike],
    *,
    title: str = "Intake questionnaire",
    authored_at: datetime | None = None,
    portal_id: str | None = None,
) -> QuestionnaireResponse:
    """Store a questionnaire response with nested items, keeping their order."""
    qr = QuestionnaireResponse(id=new_id(), case=case, title=title, authored_at=authored_at,
                               portal_id=portal_id)
    s.add(qr)

    # Ids are assigned here and the tree is written as two bulk INSERTs (parents before
    # their children), not through the unit of work: items refer to items, which makes
    # the ORM insert a self-referential table one row at a time (most of a sync's
    # database time for portals with long questionnaires).
    items: list[dict[str, object]] = []
    answers: list[dict[str, object]] = []

    def add_items(questions_: Sequence[QuestionLike], parent_id: str | None) -> None:
        for pos, q in enumerate(questions_):
            item_id = new_id()
            items.append({"id": item_id, "response_id": qr.id, "parent_id": parent_id,
                          "position": pos, "link_id": q.link_id,
                          "text": q.text if q.text is not None else ""})
            for i, a in enumerate(q.answers):
                ans = _answer(a, i)
                answers.append({**{c: getattr(ans, c) for c in _ANSWER_VALUES},
                                "id": new_id(), "item_id": item_id})
            add_items(q.items, item_id)

    add_items(questions, None)
    s.flush()  # the response row (and its case) first
    if items:
        s.execute(insert(QuestionnaireItem), items)
    if answers:
        s.execute(insert(QuestionnaireAnswer), answers)
    return qr


def add_message(
    s: Session,
    case: Case,
    *,
    direction: str,
    text: str,
    sent_at: datetime,
    delivery_state: str | None = None,
    portal_id: str | None = None,
    sender: str | None = None,
) -> Message:
    if direction not in MESSAGE_DIRECTIONS:
        raise InputError(f"Unknown message direction '{direction}'.")
    msg = Message(
        case=case,
        direction=direction,
        text=text,
        sent_at=sent_at,
        delivery_state=delivery_state or ("received" if direction == "inbound" else "sent"),
        portal_id=portal_id,
        sender=sender,
    )
    s.add(msg)
    return msg
