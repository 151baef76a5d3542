"""'No known allergies' only when the portal answered; a failed search stays 'not checked'."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from derm_workstation.core.models import Case
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.reference.server import ReferencePortal
from derm_workstation.sync.engine import run_sync
from tests.sync.conftest import ClientFactory, add_portal_case
from tests.sync.proxy import Exchange, FaultProxy, Reply

DOC = Actor("dr.house", "dermatologist")


@pytest.fixture
def proxy(empty_portal: ReferencePortal) -> Iterator[FaultProxy]:
    with FaultProxy(empty_portal.origin) as p:
        yield p


def _detail(ws: Workspace, task_id: str):  # type: ignore[no-untyped-def]
    with ws.db.session() as s:
        cid = s.scalar(select(Case.id).where(Case.portal_task_id == task_id))
    assert cid is not None
    return CaseService(ws, DOC).case_detail(cid, audit_view=False)


def test_allergy_states_follow_the_portals_answer(
        empty_portal: ReferencePortal, ws: Workspace, make_client: ClientFactory,
        proxy: FaultProxy) -> None:
    store = empty_portal.store
    none_known = add_portal_case(store, n=1)
    allergic = add_portal_case(store, n=2)
    unanswered = add_portal_case(store, n=3)
    store.create({"resourceType": "AllergyIntolerance",
                  "patient": {"reference": f"Patient/{allergic['patient']}"},
                  "code": {"text": "Penicillin"}, "criticality": "high"})

    def fail_one_allergy_search(ex: Exchange) -> Reply | None:
        if ex.path.startswith("/fhir/AllergyIntolerance") and unanswered["patient"] in ex.path:
            return Reply(400, b'{"resourceType": "OperationOutcome", "issue": []}',
                         {"Content-Type": "application/fhir+json"})
        return None

    proxy.before = fail_one_allergy_search
    summary = run_sync(ws, make_client(proxy.base_url))
    assert any("AllergyIntolerance" in e.path for e in proxy.log)
    d = _detail(ws, none_known["task"])
    assert d.allergies == () and d.allergies_checked is True
    d = _detail(ws, allergic["task"])
    assert [a.substance for a in d.allergies] == ["Penicillin"] and d.allergies_checked
    d = _detail(ws, unanswered["task"])
    assert d.allergies == () and d.allergies_checked is False
    assert d.as_json()["allergies_checked"] is False
    assert summary.cases_new == 3
