"""Claims and messages: the transactional outbox and its sender, over real loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from derm_workstation.core.errors import InputError, NotFoundError, PermissionDeniedError
from derm_workstation.core.models import AuditEvent, Case, Message, OutboxItem, utcnow
from derm_workstation.core.portal_actions import ClaimedElsewhereError, PortalActions
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.mapping import OUTBOX_SYSTEM, USER_SYSTEM
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import ClientFactory, add_portal_case
from tests.sync.proxy import Exchange, FaultProxy, Reply, refuse_messages

DOC = Actor("dr.ade", "dermatologist")
NURSE_NO_EDIT = Actor("sam", "nurse")


@pytest.fixture
def pulled(empty_portal: ReferencePortal, ws: Workspace,
           make_client: ClientFactory) -> dict[str, str]:
    """Two portal cases pulled into the workspace; returns task id -> local case id."""
    for n in (1, 2):
        add_portal_case(empty_portal.store, n=n)
    assert run_sync(ws, make_client(empty_portal.base_url)).completed
    with ws.db.session() as s:
        return {c.portal_task_id: c.id for c in s.scalars(select(Case))}


@pytest.fixture
def proxy(empty_portal: ReferencePortal) -> Iterator[FaultProxy]:
    with FaultProxy(empty_portal.origin) as p:
        yield p


def outbox_rows(ws: Workspace) -> list[OutboxItem]:
    with ws.db.session() as s:
        return list(s.scalars(select(OutboxItem).order_by(OutboxItem.created_at)))


def by_identifier(portal: ReferencePortal, rtype: str, outbox_id: str) -> list[dict]:
    return portal.store.search(rtype, identifier=f"{OUTBOX_SYSTEM}|{outbox_id}")


# ---------------------------------------------------------------- claiming


def test_claim_is_queued_with_the_local_change_then_sent_with_if_match(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str]) -> None:
    task_id, case_id = next(iter(pulled.items()))
    original = empty_portal.store.get("Task", task_id)
    result = PortalActions(ws, DOC).claim(case_id)
    assert result.state == "queued"
    with ws.db.session() as s:  # same transaction: both there, with the audit event
        case = s.get(Case, case_id)
        assert (case.status, case.assignee, case.claim_state) == ("in-progress", "dr.ade",
                                                                  "pending")
        item = s.get(OutboxItem, result.outbox_id)
        assert item.state == "pending" and item.payload["base_version"] == "1"
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "case.claim")) == 1
    assert empty_portal.store.get("Task", task_id).get("owner") is None  # offline so far

    empty_portal.clear_log()
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.outbox_sent == 1
    put = [r for r in empty_portal.request_log if r.method == "PUT"]
    assert put == [put[0]] and put[0].target == f"/fhir/Task/{task_id}" and put[0].status == 200
    task = empty_portal.store.get("Task", task_id)
    assert task["status"] == "in-progress"
    assert task["owner"]["identifier"] == {"system": USER_SYSTEM, "value": "dr.ade"}
    assert task["meta"]["versionId"] == "2"
    for key in ("identifier", "focus", "for", "authoredOn", "priority", "intent"):
        assert task[key] == original[key]  # the rest of the Task was kept
    with ws.db.session() as s:
        case = s.get(Case, case_id)
        assert case.claim_state == "claimed" and case.portal_task_version == "2"
        assert s.get(OutboxItem, result.outbox_id).state == "sent"
    # Our own change does not come back as "changed elsewhere", nor cost a refetch.
    empty_portal.clear_log()
    again = run_sync(ws, make_client(empty_portal.base_url))
    assert again.requests == 2 and again.cases_updated == 0 and not again.notices
    # Claiming again is a no-op.
    assert PortalActions(ws, DOC).claim(case_id).state == "already"
    assert len(outbox_rows(ws)) == 1


def test_claim_needs_permission_and_an_open_case(ws: Workspace, pulled: dict[str, str]) -> None:
    case_id = next(iter(pulled.values()))
    with pytest.raises(PermissionDeniedError):
        PortalActions(ws, NURSE_NO_EDIT).claim(case_id)
    with ws.db.session() as s:
        s.get(Case, case_id).status = "cancelled"
    with pytest.raises(InputError):
        PortalActions(ws, DOC).claim(case_id)
    assert outbox_rows(ws) == []


def test_a_case_claimed_by_someone_else_is_not_claimed(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str]) -> None:
    task_id, case_id = next(iter(pulled.items()))
    t = empty_portal.store.get("Task", task_id)
    t.update(status="in-progress", owner={"reference": "Practitioner/99", "display": "Dr Other"})
    empty_portal.store.put(t)
    assert run_sync(ws, make_client(empty_portal.base_url)).completed
    with pytest.raises(ClaimedElsewhereError) as err:
        PortalActions(ws, DOC).claim(case_id)
    assert "Dr Other" in err.value.message
    assert outbox_rows(ws) == []


def test_claimed_elsewhere_before_the_claim_was_sent_overwrites_nothing(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str]) -> None:
    task_id, case_id = next(iter(pulled.items()))
    PortalActions(ws, DOC).claim(case_id)  # offline: queued
    t = empty_portal.store.get("Task", task_id)
    t.update(status="in-progress", owner={"reference": "Practitioner/99", "display": "Dr Other"})
    empty_portal.store.put(t)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert not summary.completed and summary.outbox_failed == 1
    assert empty_portal.store.get("Task", task_id)["owner"]["display"] == "Dr Other"
    assert [r for r in empty_portal.request_log if r.method == "PUT"] == []
    [item] = outbox_rows(ws)
    assert item.state == "failed" and "already claimed on the portal by Dr Other" in item.last_error
    with ws.db.session() as s:
        case = s.get(Case, case_id)
        assert case.claim_state == "elsewhere" and case.assignee == "Dr Other"
        assert "Dr Other" in case.portal_notice


def test_412_conflict_rereads_and_overwrites_nothing_then_retry_succeeds(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    task_id, case_id = next(iter(pulled.items()))
    PortalActions(ws, DOC).claim(case_id)

    def change_first(ex: Exchange) -> Reply | None:
        if ex.method == "PUT" and proxy.before is change_first:
            proxy.before = None
            t = empty_portal.store.get("Task", task_id)  # someone else, just before our PUT
            t["businessStatus"] = {"text": "Patient sent more photos"}
            empty_portal.store.put(t)
        return None

    proxy.before = change_first
    summary = run_sync(ws, make_client(proxy.base_url))
    puts = [e for e in proxy.log if e.method == "PUT"]
    assert [e.status for e in puts] == [412]
    assert json.loads(puts[0].body)["owner"]["display"] == "dr.ade"
    task = empty_portal.store.get("Task", task_id)
    assert task.get("owner") is None and task["businessStatus"]["text"] == (
        "Patient sent more photos")  # nothing overwritten
    [item] = outbox_rows(ws)
    assert item.state == "failed" and "changed on the portal" in item.last_error
    assert not summary.completed
    with ws.db.session() as s:
        case = s.get(Case, case_id)
        assert case.claim_state == "conflict" and "changed on the portal" in case.portal_notice
        assert case.portal_task_version == task["meta"]["versionId"]  # re-read
        assert case.portal_business_status == "Patient sent more photos"
    # The clinician has seen it and retries: it goes through on the new version.
    PortalActions(ws, DOC).retry(item.id)
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.outbox_sent == 1
    task = empty_portal.store.get("Task", task_id)
    assert task["owner"]["display"] == "dr.ade"
    assert task["businessStatus"]["text"] == "Patient sent more photos"


def test_lost_response_to_the_claim_is_recognised_on_retry(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    task_id, case_id = next(iter(pulled.items()))
    PortalActions(ws, DOC).claim(case_id)
    dropped: list[int] = []

    def lose_put_answer(ex: Exchange) -> Reply | None:
        if ex.method == "PUT" and not dropped:
            dropped.append(ex.status)
            return Reply(0, drop=True)
        return None

    proxy.after = lose_put_answer
    summary = run_sync(ws, make_client(proxy.base_url))
    assert dropped == [200]  # the portal did the update; we never heard
    assert summary.completed and summary.outbox_sent == 1
    history = empty_portal.store.history("Task", task_id)
    assert len(history) == 2  # exactly one update
    with ws.db.session() as s:
        assert s.get(Case, case_id).claim_state == "claimed"


# ---------------------------------------------------------------- messages


def test_message_to_the_patient_is_one_valid_communication(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str]) -> None:
    task_id, case_id = next(iter(pulled.items()))
    queued = PortalActions(ws, DOC).message_patient(case_id, "Please send a closer photo.")
    with ws.db.session() as s:
        assert s.get(Message, queued.message_id).delivery_state == "queued"
        detail = s.get(AuditEvent, s.scalar(select(func.max(AuditEvent.id)))).detail
        assert "closer photo" not in json.dumps(detail)  # no message text in the audit
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.outbox_sent == 1
    [comm] = by_identifier(empty_portal, "Communication", queued.outbox_id)
    task = empty_portal.store.get("Task", task_id)
    assert comm["status"] == "completed"
    assert comm["basedOn"] == [task["focus"]]
    assert comm["subject"] == task["for"] and comm["recipient"] == [task["for"]]
    assert comm["payload"] == [{"contentString": "Please send a closer photo."}]
    assert comm["sender"]["identifier"] == {"system": USER_SYSTEM, "value": "dr.ade"}
    with ws.db.session() as s:
        msg = s.get(Message, queued.message_id)
        assert msg.delivery_state == "sent" and msg.portal_id == comm["id"]
    # A later pull of the case (the Task changed) does not double the message.
    task["businessStatus"] = {"text": "Waiting for the patient"}
    empty_portal.store.put(task)
    assert run_sync(ws, make_client(empty_portal.base_url)).cases_updated == 1
    with ws.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Message).where(
            Message.case_id == case_id, Message.direction == "outbound")) == 1


def test_lost_response_to_a_create_makes_exactly_one_resource(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    case_id = next(iter(pulled.values()))
    queued = PortalActions(ws, DOC).message_patient(case_id, "Your results are ready.")
    seen: list[int] = []

    def lose_first_post(ex: Exchange) -> Reply | None:
        if ex.method == "POST":
            seen.append(ex.status)
            if len(seen) == 1:
                return Reply(0, drop=True)
        return None

    proxy.after = lose_first_post
    summary = run_sync(ws, make_client(proxy.base_url))
    assert seen == [201, 200]  # created, answer lost; the retry found it (conditional)
    assert summary.completed and summary.outbox_sent == 1
    posts = [e for e in proxy.log if e.method == "POST"]
    assert all(e.headers["If-None-Exist"] == f"identifier={OUTBOX_SYSTEM}|{queued.outbox_id}"
               for e in posts)
    assert len(by_identifier(empty_portal, "Communication", queued.outbox_id)) == 1
    # and a whole second push of the same row (a crash before it was marked sent)
    with ws.db.session() as s:
        s.get(OutboxItem, queued.outbox_id).state = "pending"
    assert run_sync(ws, make_client(empty_portal.base_url)).outbox_sent == 1
    assert len(by_identifier(empty_portal, "Communication", queued.outbox_id)) == 1


def test_a_refused_message_fails_with_the_portals_words_and_can_be_retried(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    case_id = next(iter(pulled.values()))
    queued = PortalActions(ws, DOC).message_patient(case_id, "Hello")
    refusal = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "business-rule",
        "diagnostics": "Messages to this patient are disabled"}]}
    proxy.before = lambda ex: Reply(422, json.dumps(refusal).encode(),
                                    {"Content-Type": "application/fhir+json"}) \
        if ex.method == "POST" else None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert not summary.completed and summary.outbox_failed == 1
    assert any("Messages to this patient are disabled" in e for e in summary.errors)
    assert len([e for e in proxy.log if e.method == "POST"]) == 1  # a 4xx is not retried
    [item] = outbox_rows(ws)
    assert item.state == "failed" and "Messages to this patient are disabled" in item.last_error
    with ws.db.session() as s:
        assert s.get(Message, queued.message_id).delivery_state == "failed"
    PortalActions(ws, DOC).retry(item.id[:8])
    summary = run_sync(ws, make_client(empty_portal.base_url))
    assert summary.completed and summary.outbox_sent == 1
    assert len(by_identifier(empty_portal, "Communication", queued.outbox_id)) == 1


def test_portal_unreachable_keeps_the_item_pending_with_backoff(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    case_id = next(iter(pulled.values()))
    queued = PortalActions(ws, DOC).message_patient(case_id, "Hello")
    proxy.before = lambda ex: Reply(503, b"", {"Retry-After": "120"}) \
        if ex.method == "POST" else None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert not summary.completed and summary.outbox_pending == 1
    [item] = outbox_rows(ws)
    assert item.state == "pending" and item.attempts == 1 and "busy" in item.last_error
    assert item.next_attempt_at >= utcnow() + timedelta(seconds=100)  # the server's wait
    # not due yet: the next sync does not try it
    proxy.before = None
    assert run_sync(ws, make_client(proxy.base_url)).outbox_sent == 0
    with ws.db.session() as s:
        s.get(OutboxItem, queued.outbox_id).next_attempt_at = utcnow() - timedelta(seconds=1)
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.completed and summary.outbox_sent == 1
    assert outbox_rows(ws)[0].state == "sent"


def test_message_needs_a_portal_case(ws: Workspace) -> None:
    from tests.builders import populate

    ids = populate(ws)
    with pytest.raises(InputError, match="did not come from the portal"):
        PortalActions(ws, DOC).message_patient(ids["Okafor"], "Hello")
    assert PortalActions(ws, DOC).claim(ids["Okafor"]).state == "local"
    assert outbox_rows(ws) == []


def test_retry_message_requeues_only_that_message(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        pulled: dict[str, str], proxy: FaultProxy) -> None:
    _task_id, case_id = next(iter(pulled.items()))
    acts = PortalActions(ws, DOC)
    first = acts.message_patient(case_id, "Your results are ready.")
    second = acts.message_patient(case_id, "Please book a follow-up.")

    proxy.before = refuse_messages
    run_sync(ws, make_client(proxy.base_url))
    assert {i.state for i in outbox_rows(ws)} == {"failed"}
    with pytest.raises(PermissionDeniedError):
        PortalActions(ws, NURSE_NO_EDIT).retry_message(first.message_id)
    view = acts.retry_message(first.message_id)
    assert view.id == first.outbox_id and view.state == "pending"
    states = {i.id: i.state for i in outbox_rows(ws)}
    assert states == {first.outbox_id: "pending", second.outbox_id: "failed"}
    with ws.db.session() as s:
        assert s.get(Message, first.message_id).delivery_state == "queued"
        assert s.get(Message, second.message_id).delivery_state == "failed"
        [ev] = s.scalars(select(AuditEvent).where(AuditEvent.action == "outbox.retry"))
        assert ev.actor == "dr.ade" and ev.entity_id == first.outbox_id
        assert ev.detail == {"message_id": first.message_id}
    proxy.before = None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.outbox_sent == 1
    assert len(empty_portal.store.search("Communication")) == 1
    with pytest.raises(InputError, match="already sent"):
        acts.retry_message(first.message_id)
    with pytest.raises(NotFoundError):
        acts.retry_message("no-such-message")
