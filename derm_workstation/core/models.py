"""The domain model as SQLAlchemy 2 ORM classes.

Local ids are UUID strings; portal (FHIR) ids are stored beside them. Times are
stored as UTC and always returned timezone-aware. SQL is kept portable between
SQLite and PostgreSQL (no dialect-specific types).

Two columns are derived and maintained by the services that write cases, because
the queue must sort and search 100,000 cases in SQL in well under 50 ms:
``Case.photo_count`` and ``Case.search_text``.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# The vocabulary lives in a module without SQLAlchemy so the GUI can start fast;
# it is re-exported here for the code that works with the models.
from derm_workstation.core.vocabulary import (
    CASE_STATUSES,
    DELIVERY_STATES,
    MESSAGE_DIRECTIONS,
    OPEN_STATUSES,
    PHOTO_SOURCES,
    PRIORITY_LABELS,
    PRIORITY_RANK,
    SEXES,
    STATUS_LABELS,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_ID_BYTES = 16 * 256
_id_lock = threading.Lock()
_id_pool = b""
_id_pos = 0


def _forget_ids() -> None:
    """A forked child must not hand out the parent's ids: it draws its own bytes."""
    global _id_pool, _id_pos
    _id_pool, _id_pos = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ids)


def new_id() -> str:
    """A random (version 4) UUID as text.

    The same randomness as :func:`uuid.uuid4` (``os.urandom``), drawn 256 ids at a time:
    a sync assigns thousands of ids on the thread that writes the database, and one
    system call per id there costs more than the insert itself.
    """
    global _id_pool, _id_pos
    with _id_lock:
        if _id_pos + 16 > len(_id_pool):
            _id_pool, _id_pos = os.urandom(_ID_BYTES), 0
        raw = _id_pool[_id_pos:_id_pos + 16]
        _id_pos += 16
    return str(uuid.UUID(bytes=raw, version=4))


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned timezone-aware (UTC).

    Portable: SQLite has no time zones, and PostgreSQL ``timestamp`` keeps the
    value as given. Naive datetimes are rejected to avoid silent local-time bugs.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    portal_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    identifier: Mapped[str | None] = mapped_column(String(64))
    family_name: Mapped[str] = mapped_column(String(200), default="")
    given_name: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[date | None] = mapped_column(Date, index=True)
    sex: Mapped[str] = mapped_column(String(16), default="unknown")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: When the portal last answered the patient's allergy search (even with none).
    #: NULL = never asked or the search failed: "Allergies not checked", never "none".
    allergies_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    cases: Mapped[list[Case]] = relationship(back_populates="patient", passive_deletes="all")
    allergies: Mapped[list[Allergy]] = relationship(
        back_populates="patient", order_by="Allergy.substance", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_patients_family_given", "family_name", "given_name"),
        Index("ix_patients_sex_name", "sex", "family_name", "given_name"),
    )

    @property
    def display_name(self) -> str:
        if self.family_name and self.given_name:
            return f"{self.family_name}, {self.given_name}"
        return self.family_name or self.given_name or "(no name)"


class Case(Base):
    """One submitted consult: a FHIR Task with its ServiceRequest."""

    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    portal_task_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    portal_task_version: Mapped[str | None] = mapped_column(String(64))
    portal_service_request_id: Mapped[str | None] = mapped_column(String(64))
    case_number: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="requested")
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    priority_rank: Mapped[int] = mapped_column(Integer, default=3)
    chief_complaint: Mapped[str] = mapped_column(String(500), default="")
    body_site: Mapped[str] = mapped_column(String(200), default="")
    body_site_code: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    assignee: Mapped[str | None] = mapped_column(String(200))
    #: Set when the portal sent a case whose required parts were missing or malformed.
    incomplete_reason: Mapped[str | None] = mapped_column(Text)
    #: Task.owner as the portal has it (reference, identifier or display), for comparison.
    portal_owner: Mapped[str | None] = mapped_column(String(200))
    portal_business_status: Mapped[str | None] = mapped_column(String(200))
    #: Task.note texts (staff notes on the portal side).
    portal_note: Mapped[str | None] = mapped_column(Text)
    #: A sentence for the banner of an open case: cancelled, claimed or completed
    #: elsewhere, or a claim that conflicted (412). Cleared when the clinician retries.
    portal_notice: Mapped[str | None] = mapped_column(Text)
    #: The workstation's claim: None, "pending" (queued), "claimed", "conflict",
    #: "elsewhere" (someone else holds it on the portal).
    claim_state: Mapped[str | None] = mapped_column(String(16))
    #: Set when the last pull of this case could not fetch everything (a photo failed
    #: verification); the next sync fetches the case again.
    portal_sync_error: Mapped[str | None] = mapped_column(Text)
    photo_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Lower-cased patient name, case number, complaint and body site for queue search.
    search_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="cases")
    photos: Mapped[list[Photo]] = relationship(
        back_populates="case", order_by="Photo.position", cascade="all, delete-orphan"
    )
    questionnaires: Mapped[list[QuestionnaireResponse]] = relationship(
        back_populates="case", cascade="all, delete-orphan"
    )
    messages: Mapped[list[Message]] = relationship(
        back_populates="case", order_by="Message.sent_at", cascade="all, delete-orphan"
    )

    # One index per queue sort key, ending in the tie-breakers (submitted_at, id), so a
    # sorted first page is an index walk that stops after one page.
    __table_args__ = (
        Index("ix_cases_queue_priority", "priority_rank", "submitted_at", "id"),
        Index("ix_cases_queue_submitted", "submitted_at", "id"),
        Index("ix_cases_queue_status", "status", "submitted_at", "id"),
        Index("ix_cases_queue_complaint", "chief_complaint", "submitted_at", "id"),
        Index("ix_cases_queue_body_site", "body_site", "submitted_at", "id"),
        Index("ix_cases_queue_photos", "photo_count", "submitted_at", "id"),
        Index("ix_cases_queue_case_number", "case_number", "submitted_at", "id"),
        # Covering index for search: a substring match scans this, not the table.
        Index("ix_cases_queue_search", "status", "priority_rank", "search_text", "id"),
    )

    def refresh_search_text(self) -> None:
        p = self.patient
        parts = [
            p.family_name if p else "",
            p.given_name if p else "",
            p.identifier if p and p.identifier else "",
            self.case_number or "",
            self.chief_complaint,
            self.body_site,
        ]
        self.search_text = " ".join(x.strip() for x in parts if x).lower()


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    byte_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    body_site: Mapped[str] = mapped_column(String(200), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Pixels per millimetre once calibrated; NULL means "uncalibrated".
    calibration_px_per_mm: Mapped[float | None] = mapped_column(Float)
    calibration_method: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default="portal")
    portal_media_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    case: Mapped[Case] = relationship(back_populates="photos")


class Annotation(Base):
    """A vector annotation on a photo, in displayed-image pixel coordinates.

    Never burned into the original. ``geometry`` holds ``{"points": [[x, y], ...]}``
    (and for an ellipse its rotation); see :mod:`derm_workstation.core.annotations`.
    """

    __tablename__ = "annotations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    photo_id: Mapped[str] = mapped_column(
        ForeignKey("photos.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str] = mapped_column(Text, default="")
    lesion_number: Mapped[int | None] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class QuestionnaireResponse(Base):
    __tablename__ = "questionnaire_responses"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    portal_id: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    authored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    case: Mapped[Case] = relationship(back_populates="questionnaires")
    items: Mapped[list[QuestionnaireItem]] = relationship(
        back_populates="response",
        order_by="QuestionnaireItem.position",
        cascade="all, delete-orphan",
    )


class QuestionnaireItem(Base):
    """One question or group; nested through ``parent_id``, ordered by ``position``."""

    __tablename__ = "questionnaire_items"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    response_id: Mapped[str] = mapped_column(
        ForeignKey("questionnaire_responses.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("questionnaire_items.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    link_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")

    response: Mapped[QuestionnaireResponse] = relationship(back_populates="items")
    children: Mapped[list[QuestionnaireItem]] = relationship(
        cascade="all, delete-orphan", order_by="QuestionnaireItem.position"
    )
    answers: Mapped[list[QuestionnaireAnswer]] = relationship(
        back_populates="item",
        order_by="QuestionnaireAnswer.position",
        cascade="all, delete-orphan",
    )


class QuestionnaireAnswer(Base):
    """One typed answer (FHIR answer[].value[x]); exactly one value column is set."""

    __tablename__ = "questionnaire_answers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    item_id: Mapped[str] = mapped_column(
        ForeignKey("questionnaire_items.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    value_type: Mapped[str] = mapped_column(String(16))
    value_string: Mapped[str | None] = mapped_column(Text)
    value_boolean: Mapped[bool | None] = mapped_column(Boolean)
    value_integer: Mapped[int | None] = mapped_column(Integer)
    value_decimal: Mapped[float | None] = mapped_column(Float)
    value_date: Mapped[date | None] = mapped_column(Date)
    value_system: Mapped[str | None] = mapped_column(String(200))
    value_code: Mapped[str | None] = mapped_column(String(100))

    item: Mapped[QuestionnaireItem] = relationship(back_populates="answers")

    @property
    def value(self) -> Any:
        return {
            "string": self.value_string,
            "boolean": self.value_boolean,
            "integer": self.value_integer,
            "decimal": self.value_decimal,
            "date": self.value_date,
            "coding": self.value_string,
        }.get(self.value_type, self.value_string)

    @property
    def display(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return "Yes" if v else "No"
        if isinstance(v, date):
            return v.isoformat()
        return "" if v is None else str(v)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    portal_id: Mapped[str | None] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivery_state: Mapped[str] = mapped_column(String(16), default="received")
    sender: Mapped[str | None] = mapped_column(String(200))

    case: Mapped[Case] = relationship(back_populates="messages")


class Allergy(Base):
    """An AllergyIntolerance of a patient, as the portal has it (shown; used for prescribing)."""

    __tablename__ = "allergies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), index=True
    )
    portal_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    substance: Mapped[str] = mapped_column(String(500), default="")
    substance_system: Mapped[str | None] = mapped_column(String(200))
    substance_code: Mapped[str | None] = mapped_column(String(100))
    clinical_status: Mapped[str | None] = mapped_column(String(32))
    criticality: Mapped[str | None] = mapped_column(String(32))
    reaction: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    patient: Mapped[Patient] = relationship(back_populates="allergies")


#: Outbox row states: waiting to be sent (also after a transient failure, with backoff),
#: delivered, or failed in a way that needs a person (the server's message is kept).
OUTBOX_STATES: tuple[str, ...] = ("pending", "sent", "failed")


class OutboxItem(Base):
    """A change the portal must hear of, written in the same transaction as the change.

    The row's id is the idempotency key sent to the portal
    (``urn:derm-workstation:outbox|<id>``), so a resend never duplicates anything.
    ``payload`` holds ids and domain values, never image bytes.
    """

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(
        ForeignKey("cases.id", ondelete="RESTRICT"), index=True
    )
    actor: Mapped[str] = mapped_column(String(200), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Id of the resource the portal created or updated.
    portal_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_outbox_state_due", "state", "next_attempt_at", "created_at"),)


class SyncState(Base):
    """Small key/value facts of portal sync: cursors, last successful sync, portal URL."""

    __tablename__ = "sync_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    """Append-only audit trail; each row carries the hash of the previous one.

    ``detail`` holds ids and field names only, never names, dates of birth,
    message text or image bytes.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


__all__ = [
    "CASE_STATUSES",
    "DELIVERY_STATES",
    "MESSAGE_DIRECTIONS",
    "OPEN_STATUSES",
    "OUTBOX_STATES",
    "PHOTO_SOURCES",
    "PRIORITY_LABELS",
    "PRIORITY_RANK",
    "SEXES",
    "STATUS_LABELS",
    "Allergy",
    "Annotation",
    "AuditEvent",
    "Base",
    "Case",
    "Message",
    "OutboxItem",
    "Patient",
    "Photo",
    "QuestionnaireAnswer",
    "QuestionnaireItem",
    "QuestionnaireResponse",
    "SyncState",
]


class BodyMapPin(Base):
    """Where the clinician put a pin on the patient's body map, when it was moved by hand.

    A pin is a photo site (``target_kind`` "site", ``target_key`` the site's map key) or
    a numbered lesion ("lesion", its number). Without a row the pin sits where the body
    site the patient gave places it (:mod:`derm_workstation.core.body_map`). ``x``/``y``
    are 0..1 across the outline's box of the ``view`` ("front" or "back").
    """

    __tablename__ = "body_map_pins"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    target_kind: Mapped[str] = mapped_column(String(16))
    target_key: Mapped[str] = mapped_column(String(200))
    view: Mapped[str] = mapped_column(String(8))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    moved_by: Mapped[str] = mapped_column(String(200), default="")
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_body_map_pins_target", "patient_id", "target_kind", "target_key",
              unique=True),
    )


__all__ += ["BodyMapPin"]
