"""The outbox sender: delivers queued changes to the portal, idempotently.

Rows are written by :mod:`derm_workstation.core.portal_actions` in the same
transaction as the local change. For each due ``pending`` row, oldest first:

* ``task.claim`` — read the Task; if it already shows this clinician as owner with
  the target status, the claim is done (a retry after a lost response). If it is
  closed, owned by someone else, or its version is not the one the clinician saw,
  nothing is written: the row fails with the reason, the case gets the portal's
  state and a notice. Otherwise ``PUT Task/<id>`` with ``If-Match: W/"<version>"``;
  a 412 re-reads and is judged the same way — never overwritten.
* ``communication`` / ``create`` — conditional create with
  ``If-None-Exist: identifier=urn:derm-workstation:outbox|<row id>``, so a resend
  after a lost response finds the first one instead of making a second.

Network trouble and 5xx keep the row ``pending`` with exponential backoff (the server's
``Retry-After`` when it gave one); after ``max_attempts`` it becomes ``failed``.
A refusal (4xx, a conflict, unusable data) makes it ``failed`` at once with the
server's message. ``failed`` rows wait for a person (``PortalActions.retry``);
nothing is ever dropped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from derm_workstation.core import audit
from derm_workstation.core.models import Case, Message, OutboxItem, utcnow
from derm_workstation.core.portal_actions import KIND_CLAIM, KIND_CREATE, KIND_MESSAGE
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.client import PortalClient
from derm_workstation.portal.errors import (
    PortalAuthError,
    PortalConflictError,
    PortalDataError,
    PortalRequestError,
    PortalUnavailableError,
)
from derm_workstation.portal.mapping import (
    OUTBOX_SYSTEM,
    TaskIn,
    communication_to_patient,
    if_none_exist,
    owner_key,
    practitioner_ref,
    task_from_fhir,
    task_update,
    with_outbox_identifier,
)
from derm_workstation.sync.pull import apply_task_fields
from derm_workstation.sync.summary import SyncSummary

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


class _Refused(Exception):
    """The portal's state forbids the change; nothing was written."""

    def __init__(self, message: str, task: TaskIn | None = None,
                 claim_state: str = "conflict") -> None:
        super().__init__(message)
        self.message = message
        self.task = task
        self.claim_state = claim_state


@dataclass(frozen=True)
class _Sent:
    portal_id: str | None
    version: str | None = None
    task: TaskIn | None = None


@dataclass(frozen=True)
class _Item:
    """What the sender needs of a row, read before going to the network."""

    id: str
    kind: str
    payload: dict[str, Any]
    actor: str
    attempts: int
    case_id: str | None
    service_request_id: str | None
    patient_portal_id: str | None
    message_text: str | None
    message_sent_at: datetime | None


class OutboxSender:
    def __init__(self, ws: Workspace, client: PortalClient, summary: SyncSummary, *,
                 actor: Actor = SYSTEM, practitioner: str | None = None,
                 max_attempts: int = MAX_ATTEMPTS, backoff_base: float = 30.0,
                 backoff_max: float = 3600.0, rng: random.Random | None = None,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.ws = ws
        self.client = client
        self.summary = summary
        self.actor = actor
        self.practitioner = practitioner
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._now = now

    # ---------------------------------------------------------------- public

    def due_ids(self) -> list[str]:
        now = self._now()
        with self.ws.db.session() as s:
            return list(s.scalars(
                select(OutboxItem.id)
                .where(OutboxItem.state == "pending",
                       or_(OutboxItem.next_attempt_at.is_(None),
                           OutboxItem.next_attempt_at <= now))
                .order_by(OutboxItem.created_at, OutboxItem.id)
            ))

    def send_due(self) -> None:
        """Send every due row; stops early only when the portal is unreachable or
        rejects the credentials (then the rest wait for the next sync)."""
        for item_id in self.due_ids():
            state = self.send_one(item_id)
            if state == "stop":
                break
        self.count()

    def count(self) -> None:
        with self.ws.db.session() as s:
            rows = s.execute(select(OutboxItem.state, func.count())
                             .group_by(OutboxItem.state)).all()
            counts = {state: int(n) for state, n in rows}
        self.summary.outbox_pending = int(counts.get("pending", 0))
        self.summary.outbox_failed = int(counts.get("failed", 0))

    def send_one(self, item_id: str) -> str:
        """Send one row; returns its new state, or "stop" when sending should pause."""
        item = self._load(item_id)
        if item is None:
            return "gone"
        try:
            if item.kind == KIND_CLAIM:
                sent = self._send_claim(item)
            elif item.kind == KIND_MESSAGE:
                sent = self._send_message(item)
            elif item.kind == KIND_CREATE:
                sent = self._send_create(item)
            else:
                raise _Refused(f"This workstation cannot send '{item.kind}' items.")
        except PortalAuthError as exc:
            self._note(item, exc.message)
            self.summary.error(exc.message)
            return "stop"
        except PortalUnavailableError as exc:
            state = self._transient(item, exc)
            self.summary.error(f"Outbox: {exc.message} The change stays queued.")
            return "stop" if state == "pending" else state
        except _Refused as exc:
            self._failed(item, exc.message, exc)
            return "failed"
        except (PortalRequestError, PortalDataError) as exc:
            self._failed(item, exc.message, None)
            return "failed"
        self._sent(item, sent)
        return "sent"

    # ---------------------------------------------------------------- loading

    def _load(self, item_id: str) -> _Item | None:
        with self.ws.db.session() as s:
            row = s.get(OutboxItem, item_id)
            if row is None or row.state != "pending":
                return None
            case = s.get(Case, row.case_id) if row.case_id else None
            msg = None
            if row.kind == KIND_MESSAGE:
                msg = s.get(Message, (row.payload or {}).get("message_id"))
            return _Item(
                id=row.id, kind=row.kind, payload=dict(row.payload or {}), actor=row.actor,
                attempts=row.attempts, case_id=row.case_id,
                service_request_id=case.portal_service_request_id if case else None,
                patient_portal_id=case.patient.portal_id if case else None,
                message_text=msg.text if msg else None,
                message_sent_at=msg.sent_at if msg else None,
            )

    # ---------------------------------------------------------------- handlers

    def _owner(self, item: _Item) -> dict[str, Any]:
        user = str(item.payload.get("owner_user") or item.actor or self.actor.username)
        return practitioner_ref(user, self.practitioner)

    def _judge(self, t: TaskIn, item: _Item, target: str, our_key: str | None,
               base: str | None) -> _Sent | None:
        """Done already (a _Sent), refused (raises), or None: go ahead and write."""
        if t.owner == our_key and t.status == target:
            return _Sent(t.portal_id, t.version, t)
        if t.status in ("completed", "cancelled"):
            raise _Refused(f"The case is {t.status} on the portal; the claim was not sent.",
                           t, "elsewhere")
        if t.owner and t.owner != our_key:
            raise _Refused(
                f"The case is already claimed on the portal by {t.owner_display or t.owner}; "
                "nothing was overwritten.", t, "elsewhere")
        if base and t.version and t.version != base:
            raise _Refused(
                "The case changed on the portal since it was opened "
                f"(version {base} → {t.version}); nothing was overwritten. Review the case "
                "and claim it again.", t, "conflict")
        return None

    def _send_claim(self, item: _Item) -> _Sent:
        task_id = str(item.payload.get("task_id") or "")
        if not task_id:
            raise _Refused("The claim names no portal Task.")
        target = str(item.payload.get("status") or "in-progress")
        base = item.payload.get("base_version")
        owner = self._owner(item)
        our_key = owner_key(owner)
        current = self.client.read("Task", task_id)
        t = task_from_fhir(current)
        if t is None:
            raise _Refused("The portal's Task has no id.")
        done = self._judge(t, item, target, our_key, base)
        if done is not None:
            return done
        body = task_update(current, status=target, owner=owner)
        try:
            res = self.client.update(body, if_match=t.version or base)
        except PortalConflictError:
            again = task_from_fhir(self.client.read("Task", task_id))
            if again is None:
                raise _Refused("The portal's Task has no id.") from None
            done = self._judge(again, item, target, our_key, again.version)
            if done is not None:
                return done
            raise _Refused("The case changed on the portal while the claim was being sent; "
                           "nothing was overwritten. Review the case and claim it again.",
                           again, "conflict") from None
        new = task_from_fhir(res.resource) if res.resource else None
        return _Sent(task_id, res.version or (new.version if new else None), new)

    def _send_message(self, item: _Item) -> _Sent:
        if item.message_text is None or item.message_sent_at is None:
            raise _Refused("The message to send no longer exists on this workstation.")
        if not item.service_request_id or not item.patient_portal_id:
            raise _Refused("The case has no portal consult request or patient to send to.")
        resource = communication_to_patient(
            item.id, service_request_id=item.service_request_id,
            patient_id=item.patient_portal_id, sender=self._owner(item),
            text=item.message_text, sent=item.message_sent_at,
        )
        return self._create(resource, item.id)

    def _send_create(self, item: _Item) -> _Sent:
        resource = item.payload.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise _Refused("The queued item holds no FHIR resource.")
        return self._create(with_outbox_identifier(resource, item.id), item.id)

    def _create(self, resource: dict[str, Any], outbox_id: str) -> _Sent:
        res = self.client.create(resource, if_none_exist=if_none_exist(outbox_id))
        rid = res.id
        if rid is None:  # a server that answered without Location or body: look it up
            found = self.client.search_all(resource["resourceType"],
                                           {"identifier": f"{OUTBOX_SYSTEM}|{outbox_id}"})
            rid = next((r.get("id") for r in found if isinstance(r.get("id"), str)), None)
        return _Sent(rid, res.version)

    # ---------------------------------------------------------------- recording

    def _sent(self, item: _Item, sent: _Sent) -> None:
        with self.ws.db.session() as s:
            row = s.get(OutboxItem, item.id)
            if row is None:
                return
            row.state = "sent"
            row.attempts = item.attempts + 1
            row.sent_at = self._now()
            row.last_error = None
            row.next_attempt_at = None
            row.portal_id = sent.portal_id[:64] if sent.portal_id else None
            case = s.get(Case, item.case_id) if item.case_id else None
            if item.kind == KIND_CLAIM and case is not None:
                owner = self._owner(item)
                user = str(item.payload.get("owner_user") or item.actor)
                case.claim_state = "claimed"
                case.portal_owner = (owner_key(owner) or "")[:200] or None
                case.assignee = user[:200]
                case.status = str(item.payload.get("status") or "in-progress")
                case.portal_notice = None
                if sent.version:
                    case.portal_task_version = sent.version
            if item.kind == KIND_MESSAGE:
                msg = s.get(Message, item.payload.get("message_id"))
                if msg is not None:
                    msg.delivery_state = "sent"
                    msg.portal_id = row.portal_id
            audit.record(s, self.actor, "outbox.sent", "outbox", item.id,
                         {"kind": item.kind, "portal_id": row.portal_id})
        self.summary.outbox_sent += 1
        if item.case_id:
            self.summary.changed(item.case_id)
        log.info("outbox %s (%s) sent", item.id, item.kind)

    def _failed(self, item: _Item, message: str, refused: _Refused | None) -> None:
        with self.ws.db.session() as s:
            row = s.get(OutboxItem, item.id)
            if row is None:
                return
            row.state = "failed"
            row.attempts = item.attempts + 1
            row.last_error = message[:2000]
            row.next_attempt_at = None
            case = s.get(Case, item.case_id) if item.case_id else None
            if case is not None and item.kind == KIND_CLAIM:
                if refused is not None and refused.task is not None:
                    apply_task_fields(case, refused.task)  # show the portal's state
                case.claim_state = refused.claim_state if refused else "conflict"
                case.portal_notice = message[:2000]
                self.summary.notices.append((case.id, message))
            if item.kind == KIND_MESSAGE:
                msg = s.get(Message, item.payload.get("message_id"))
                if msg is not None:
                    msg.delivery_state = "failed"
            audit.record(s, self.actor, "outbox.failed", "outbox", item.id, {"kind": item.kind})
        self.summary.error(f"Outbox: {_what(item)} failed: {message}")
        if item.case_id:
            self.summary.changed(item.case_id)
        log.warning("outbox %s (%s) failed", item.id, item.kind)

    def _transient(self, item: _Item, exc: PortalUnavailableError) -> str:
        attempts = item.attempts + 1
        if attempts >= self.max_attempts:
            self._failed(item, f"Gave up after {attempts} tries: {exc.message}", None)
            return "failed"
        cap = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        with self.ws.db.session() as s:
            row = s.get(OutboxItem, item.id)
            if row is not None:
                row.attempts = attempts
                row.last_error = exc.message[:2000]
                row.next_attempt_at = self._now() + timedelta(seconds=delay)
        return "pending"

    def _note(self, item: _Item, message: str) -> None:
        with self.ws.db.session() as s:
            row = s.get(OutboxItem, item.id)
            if row is not None:
                row.last_error = message[:2000]


def _what(item: _Item) -> str:
    return {KIND_CLAIM: "claim", KIND_MESSAGE: "message to the patient",
            KIND_CREATE: "record"}.get(item.kind, item.kind)


__all__ = ["MAX_ATTEMPTS", "OutboxSender"]
