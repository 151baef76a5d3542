"""Malformed JSON and wrong resource types from the portal, through a lying proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from derm_workstation.core.models import Case
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync import state
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import FAST, ClientFactory, add_portal_case
from tests.sync.proxy import Exchange, FaultProxy, Reply

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def proxy(empty_portal: ReferencePortal) -> Iterator[FaultProxy]:
    with FaultProxy(empty_portal.origin) as p:
        yield p


def test_malformed_or_wrong_resources_make_an_incomplete_case_not_a_crash(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        proxy: FaultProxy) -> None:
    a = add_portal_case(empty_portal.store, n=1, photos=1)
    b = add_portal_case(empty_portal.store, n=2, photos=1)
    c = add_portal_case(empty_portal.store, n=3, photos=1)

    def lie(ex: Exchange) -> Reply | None:
        path = ex.path.split("?")[0]
        if path == f"/fhir/ServiceRequest/{a['service_request']}":
            return Reply(200, b'{"resourceType": "ServiceRequest", "id": "x", ', JSON)
        if path == f"/fhir/Patient/{b['patient']}":
            return Reply(200, json.dumps({"resourceType": "Practitioner", "id": "p"}).encode(),
                         JSON)
        if path == "/fhir/Media" and f"ServiceRequest%2F{c['service_request']}" in ex.path:
            body = json.loads(ex.resp_body)
            body["entry"].append({"resource": {"resourceType": "Observation", "id": "o"}})
            body["entry"].append({"resource": "not even an object"})
            return Reply(200, json.dumps(body).encode(), JSON)
        return None

    proxy.after = lie
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.cases_new == 3 and not summary.aborted
    with ws.db.session() as s:
        cases = {x.portal_task_id: x for x in s.scalars(select(Case))}
        ca, cb, cc = cases[a["task"]], cases[b["task"]], cases[c["task"]]
        assert "consult request could not be read" in ca.incomplete_reason
        assert "malformed JSON" in ca.incomplete_reason
        assert ca.photo_count == 1  # what could be read is there
        assert "patient record could not be read" in cb.incomplete_reason
        assert "Practitioner where a Patient was expected" in cb.incomplete_reason
        assert cb.chief_complaint == "Complaint 2"
        assert cc.incomplete_reason is None and cc.photo_count == 1
    # both were tried again before giving up (a lying network may fix itself)
    sr_reads = [e for e in proxy.log if e.path == f"/fhir/ServiceRequest/{a['service_request']}"]
    assert len(sr_reads) == FAST.data_tries


def test_a_malformed_search_page_stops_the_pull_without_moving_the_cursor(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        proxy: FaultProxy) -> None:
    for n in range(3):
        add_portal_case(empty_portal.store, n=n)
    proxy.after = lambda ex: Reply(200, b'{"resourceType": "Bundle", "entry": [',
                                   JSON) if ex.path.startswith("/fhir/Task?status=") else None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.aborted and not summary.completed
    assert "malformed JSON" in summary.errors[0]
    with ws.db.session() as s:
        assert state.get(s, state.CURSOR_OPEN) is None
        assert s.scalar(select(func.count()).select_from(Case)) == 0
    proxy.after = None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.completed and summary.cases_new == 3


def test_a_search_answering_with_another_resource_type_is_reported(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        proxy: FaultProxy) -> None:
    add_portal_case(empty_portal.store, n=1)
    proxy.after = lambda ex: Reply(200, json.dumps({"resourceType": "Patient"}).encode(),
                                   JSON) if ex.path.startswith("/fhir/Task?") else None
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.aborted and "Patient where a Bundle was expected" in summary.errors[0]


def test_a_task_without_an_id_is_reported_not_silently_dropped(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        proxy: FaultProxy) -> None:
    add_portal_case(empty_portal.store, n=1)

    def add_idless(ex: Exchange) -> Reply | None:
        if ex.path.startswith("/fhir/Task?status=requested"):
            body = json.loads(ex.resp_body)
            body["entry"].append({"resource": {"resourceType": "Task", "status": "requested"}})
            return Reply(200, json.dumps(body).encode(), JSON)
        return None

    proxy.after = add_idless
    summary = run_sync(ws, make_client(proxy.base_url))
    assert summary.cases_new == 1
    assert any("Task without an id" in e for e in summary.errors)
