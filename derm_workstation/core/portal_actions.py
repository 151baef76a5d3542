"""Clinician actions the portal must hear of: claim a case, message the patient.

Each action checks the actor's permission, changes the local store, writes an
:class:`~derm_workstation.core.models.OutboxItem` in the SAME transaction and
appends an audit event — so the change and the promise to tell the portal are
committed together or not at all. The outbox sender (``derm_workstation.sync``)
delivers the rows idempotently; nothing here talks to the network, so every
action works offline.

Payloads hold ids and domain values only; the sender builds the FHIR resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from derm_workstation.core import audit
from derm_workstation.core.errors import InputError, NotFoundError
from derm_workstation.core.models import Case, Message, OutboxItem, utcnow
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace

#: Outbox kinds the sender understands.
KIND_CLAIM = "task.claim"
KIND_MESSAGE = "communication"
KIND_CREATE = "create"
OUTBOX_KINDS: tuple[str, ...] = (KIND_CLAIM, KIND_MESSAGE, KIND_CREATE)
OUTBOX_STATE_LABELS = {
    "pending": "Waiting to be sent",
    "sent": "Sent",
    "failed": "Failed — needs attention",
}
MAX_MESSAGE_CHARS = 10_000
_CLOSED = ("completed", "cancelled")


@dataclass(frozen=True)
class ClaimResult:
    """``state``: "queued" (sent with the next sync), "already" (this user holds it or
    a claim is queued), "local" (a case not from the portal: claimed locally only)."""

    case_id: str
    state: str
    outbox_id: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "state": self.state, "outbox_id": self.outbox_id,
                "message": self.message}


@dataclass(frozen=True)
class QueuedMessage:
    case_id: str
    message_id: str
    outbox_id: str

    def as_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "message_id": self.message_id,
                "outbox_id": self.outbox_id, "state": "pending"}


@dataclass(frozen=True)
class OutboxView:
    """One outbox row for lists (no message text, no patient data)."""

    id: str
    created_at: datetime
    kind: str
    case_id: str | None
    case_number: str | None
    actor: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sent_at: datetime | None
    portal_id: str | None

    @property
    def state_label(self) -> str:
        return OUTBOX_STATE_LABELS.get(self.state, self.state)

    def as_json(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "case_id": self.case_id,
            "case_number": self.case_number,
            "actor": self.actor,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at),
            "last_error": self.last_error,
            "sent_at": iso(self.sent_at),
            "portal_id": self.portal_id,
        }


class ClaimedElsewhereError(InputError):
    """The case is held by someone else on the portal; nothing was changed."""

    exit_code = 1


class PortalActions:
    """Claim, message and outbox management for one actor."""

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def _case(self, s: Session, ref: str) -> Case:
        case_id = CaseService(self.ws, self.actor).resolve_id(s, ref)
        case = s.get(Case, case_id)
        if case is None:  # pragma: no cover - resolve_id already checked
            raise NotFoundError(f"No case with id '{ref}'.")
        return case

    def claim(self, case_ref: str) -> ClaimResult:
        """Take the case: locally now; on the portal (Task owner + in-progress) via the outbox.

        A case the portal shows as held by someone else raises
        :class:`ClaimedElsewhereError` and changes nothing.
        """
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            case = self._case(s, case_ref)
            label = case.case_number or case.id[:8]
            if case.status in _CLOSED:
                raise InputError(f"Case {label} is {case.status}; it cannot be claimed.")
            mine = case.assignee == self.actor.username
            if case.portal_owner and not mine:
                raise ClaimedElsewhereError(
                    f"Case {label} is already claimed on the portal by "
                    f"{case.assignee or case.portal_owner}; nothing was changed."
                )
            if mine and case.claim_state in ("pending", "claimed"):
                pending = s.scalar(
                    select(OutboxItem.id).where(
                        OutboxItem.case_id == case.id, OutboxItem.kind == KIND_CLAIM,
                        OutboxItem.state == "pending",
                    ).limit(1)
                )
                return ClaimResult(case.id, "already", pending,
                                   f"Case {label} is already claimed by you.")
            case.assignee = self.actor.username
            case.status = "in-progress"
            case.portal_notice = None
            if case.portal_task_id is not None:
                # A claim that failed earlier (412) is re-based and sent again, not doubled.
                failed = s.scalar(
                    select(OutboxItem).where(
                        OutboxItem.case_id == case.id, OutboxItem.kind == KIND_CLAIM,
                        OutboxItem.state.in_(("failed", "pending")),
                    ).order_by(OutboxItem.created_at.desc()).limit(1)
                )
                if failed is not None:
                    failed.state = "pending"
                    failed.attempts = 0
                    failed.next_attempt_at = None
                    failed.actor = self.actor.username
                    failed.payload = {**failed.payload, "base_version": case.portal_task_version,
                                      "owner_user": self.actor.username}
                    case.claim_state = "pending"
                    audit.record(s, self.actor, "case.claim", "case", case.id,
                                 {"portal": True, "outbox_id": failed.id, "requeued": True})
                    return ClaimResult(case.id, "queued", failed.id,
                                       f"Case {label} claimed; the portal is told with the "
                                       "next sync.")
            if case.portal_task_id is None:
                case.claim_state = "claimed"
                audit.record(s, self.actor, "case.claim", "case", case.id, {"portal": False})
                return ClaimResult(case.id, "local", None,
                                   f"Case {label} claimed (it is not from the portal).")
            case.claim_state = "pending"
            item = OutboxItem(
                kind=KIND_CLAIM,
                case_id=case.id,
                actor=self.actor.username,
                payload={
                    "task_id": case.portal_task_id,
                    "base_version": case.portal_task_version,
                    "status": "in-progress",
                    "owner_user": self.actor.username,
                },
                state="pending",
            )
            s.add(item)
            s.flush()
            audit.record(s, self.actor, "case.claim", "case", case.id,
                         {"portal": True, "outbox_id": item.id})
            return ClaimResult(case.id, "queued", item.id,
                               f"Case {label} claimed; the portal is told with the next sync.")

    def message_patient(self, case_ref: str, text: str) -> QueuedMessage:
        """Queue a message to the patient (a FHIR Communication) and show it as queued."""
        self.actor.require("case.edit")
        body = (text or "").strip()
        if not body:
            raise InputError("The message is empty.")
        if len(body) > MAX_MESSAGE_CHARS:
            raise InputError(f"The message is longer than {MAX_MESSAGE_CHARS} characters.")
        with self.ws.db.session() as s:
            case = self._case(s, case_ref)
            label = case.case_number or case.id[:8]
            if not case.portal_service_request_id or not case.patient.portal_id:
                raise InputError(
                    f"Case {label} did not come from the portal; there is no portal patient "
                    "to send a message to."
                )
            msg = Message(case=case, direction="outbound", text=body, sent_at=utcnow(),
                          delivery_state="queued", sender=self.actor.username)
            s.add(msg)
            s.flush()
            item = OutboxItem(kind=KIND_MESSAGE, case_id=case.id, actor=self.actor.username,
                              payload={"message_id": msg.id}, state="pending")
            s.add(item)
            s.flush()
            audit.record(s, self.actor, "message.queue", "case", case.id,
                         {"message_id": msg.id, "outbox_id": item.id})
            return QueuedMessage(case.id, msg.id, item.id)

    def retry(self, outbox_id: str) -> OutboxView:
        """Send a failed (or waiting) row again at the next sync; a failed claim is re-based
        on the portal version the workstation now holds (the clinician has seen it)."""
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            item = self._item(s, outbox_id)
            if item.state == "sent":
                raise InputError("This item was already sent; there is nothing to retry.")
            return self._requeue(s, item)

    def retry_message(self, message_id: str) -> OutboxView:
        """Send one failed (or waiting) message to the patient again at the next sync —
        only that message, not the case's other failed ones."""
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            msg = s.get(Message, message_id)
            if msg is None or msg.direction != "outbound":
                raise NotFoundError("That message is not one the clinic sent.")
            rows = s.scalars(select(OutboxItem).where(
                OutboxItem.kind == KIND_MESSAGE, OutboxItem.case_id == msg.case_id))
            item = next((i for i in rows if (i.payload or {}).get("message_id") == msg.id),
                        None)
            if item is None:
                raise NotFoundError("That message has nothing waiting in the outbox.")
            if item.state == "sent":
                raise InputError("This message was already sent; there is nothing to retry.")
            return self._requeue(s, item, {"message_id": msg.id})

    def _requeue(self, s: Session, item: OutboxItem,
                 detail: dict[str, Any] | None = None) -> OutboxView:
        """Put an unsent outbox row back in line (shared by :meth:`retry` and
        :meth:`retry_message`; the caller checked the permission)."""
        item.state = "pending"
        item.attempts = 0
        item.next_attempt_at = None
        if item.kind == KIND_CLAIM and item.case_id:
            case = s.get(Case, item.case_id)
            if case is not None:
                item.payload = {**item.payload, "base_version": case.portal_task_version}
                case.claim_state = "pending"
                case.portal_notice = None
        if item.kind == KIND_MESSAGE:
            msg = s.get(Message, item.payload.get("message_id"))
            if msg is not None:
                msg.delivery_state = "queued"
        audit.record(s, self.actor, "outbox.retry", "outbox", item.id, detail)
        return _view(item, s)

    def _item(self, s: Session, ref: str) -> OutboxItem:
        ref = ref.strip()
        item = s.get(OutboxItem, ref)
        if item is None and len(ref) >= 8:
            found = list(s.scalars(select(OutboxItem).where(
                OutboxItem.id.startswith(ref, autoescape=True)).limit(2)))
            item = found[0] if len(found) == 1 else None
        if item is None:
            raise NotFoundError(f"No outbox item '{ref}'. List them with: "
                                "derm-workstation outbox list")
        return item

    def outbox(self, states: tuple[str, ...] | None = None, limit: int = 500) -> list[OutboxView]:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            q = select(OutboxItem).order_by(OutboxItem.created_at.desc()).limit(limit)
            if states:
                q = q.where(OutboxItem.state.in_(states))
            return [_view(i, s) for i in s.scalars(q)]

    def outbox_counts(self) -> dict[str, int]:
        """Rows per state, e.g. for the status bar ("3 waiting to be sent")."""
        self.actor.require("case.list")
        with self.ws.db.session() as s:
            rows = s.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state))
            return {state: int(n) for state, n in rows}


def _view(item: OutboxItem, s: Session) -> OutboxView:
    number = None
    if item.case_id:
        number = s.scalar(select(Case.case_number).where(Case.id == item.case_id))
    return OutboxView(
        id=item.id, created_at=item.created_at, kind=item.kind, case_id=item.case_id,
        case_number=number, actor=item.actor, state=item.state, attempts=item.attempts,
        next_attempt_at=item.next_attempt_at, last_error=item.last_error,
        sent_at=item.sent_at, portal_id=item.portal_id,
    )


__all__ = [
    "KIND_CLAIM",
    "KIND_CREATE",
    "KIND_MESSAGE",
    "OUTBOX_KINDS",
    "OUTBOX_STATE_LABELS",
    "ClaimResult",
    "ClaimedElsewhereError",
    "OutboxView",
    "PortalActions",
    "QueuedMessage",
]
