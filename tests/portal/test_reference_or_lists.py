"""Reference portal: FHIR search OR-lists (comma-separated values) over real HTTP, and the
``or_lists`` fault that makes it answer like a minimal contract-only server."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from derm_workstation.portal.reference.faults import FaultSpec, FaultSpecError
from derm_workstation.portal.reference.server import ReferencePortal
from tests.sync.conftest import add_portal_case

FHIR_JSON = "application/fhir+json"



@pytest.fixture
def cases(portal: ReferencePortal) -> list[dict[str, str]]:
    """Three cases (two photos each); the third patient has an allergy."""
    made = [add_portal_case(portal.store, n=n, photos=2) for n in range(3)]
    portal.store.create({"resourceType": "AllergyIntolerance",
                         "patient": {"reference": f"Patient/{made[2]['patient']}"},
                         "code": {"text": "Latex"}})
    return made


def search(http: requests.Session, portal: ReferencePortal, rtype: str,
           params: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    """(status, every resource over every page) of one search."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{portal.base_url}/{rtype}"
    query: dict[str, str] | None = params
    while url:
        r = http.get(url, params=query, timeout=30)
        if r.status_code != 200:
            return r.status_code, []
        bundle = r.json()
        found += [e["resource"] for e in bundle.get("entry", [])]
        url = next((ln["url"] for ln in bundle["link"] if ln["relation"] == "next"), None)
        query = None
    return 200, found


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in resources}


def test_or_lists_on_ids_and_references_are_honoured_and_paged(
        portal: ReferencePortal, http: requests.Session, cases: list[dict[str, str]]) -> None:
    a, b, c = cases
    status, found = search(http, portal, "ServiceRequest",
                           {"_id": f"{a['service_request']},{c['service_request']}"})
    assert status == 200 and ids(found) == {a["service_request"], c["service_request"]}
    status, found = search(http, portal, "Patient", {"_id": f"{b['patient']},nope"})
    assert status == 200 and ids(found) == {b["patient"]}
    # paged (one Media a page): the next links carry the OR-list on
    srs = f"ServiceRequest/{a['service_request']},ServiceRequest/{b['service_request']}"
    status, found = search(http, portal, "Media", {"based-on": srs, "_count": "1"})
    assert status == 200
    assert ids(found) == {a["media0"], a["media1"], b["media0"], b["media1"]}
    status, found = search(http, portal, "AllergyIntolerance", {
        "patient": f"Patient/{a['patient']},Patient/{c['patient']}"})
    assert status == 200 and [r["code"]["text"] for r in found] == ["Latex"]
    status, found = search(http, portal, "Task", {
        "patient": f"Patient/{a['patient']},Patient/{b['patient']},Patient/{c['patient']}"})
    assert status == 200 and ids(found) == {x["task"] for x in cases}


@pytest.mark.parametrize("mode", ["literal", "reject"])
def test_a_contract_only_portal_does_not_apply_or_lists(
        portal: ReferencePortal, http: requests.Session, cases: list[dict[str, str]],
        mode: str) -> None:
    a, b, _ = cases
    portal.faults = FaultSpec(or_lists=mode)
    expected = 200 if mode == "literal" else 400
    for rtype, params in [
        ("ServiceRequest", {"_id": f"{a['service_request']},{b['service_request']}"}),
        ("Patient", {"_id": f"{a['patient']},{b['patient']}"}),
        ("Media", {"based-on": f"ServiceRequest/{a['service_request']},"
                               f"ServiceRequest/{b['service_request']}"}),
        ("Task", {"patient": f"Patient/{a['patient']},Patient/{b['patient']}"}),
    ]:
        status, found = search(http, portal, rtype, params)
        assert (status, found) == (expected, []), (rtype, status)
    if mode == "reject":
        r = http.get(f"{portal.base_url}/Media", params={
            "based-on": f"ServiceRequest/{a['service_request']},ServiceRequest/1"}, timeout=30)
        assert "not supported" in r.json()["issue"][0]["diagnostics"]
    # the contract's own searches still work: single values, and the status token list
    status, found = search(http, portal, "Media",
                           {"based-on": f"ServiceRequest/{a['service_request']}"})
    assert status == 200 and ids(found) == {a["media0"], a["media1"]}
    status, found = search(http, portal, "Patient", {"_id": a["patient"]})
    assert status == 200 and ids(found) == {a["patient"]}
    status, found = search(http, portal, "Task", {"status": "requested,received"})
    assert status == 200 and ids(found) == {x["task"] for x in cases}
    portal.faults = None
    status, found = search(http, portal, "Patient", {"_id": f"{a['patient']},{b['patient']}"})
    assert status == 200 and ids(found) == {a["patient"], b["patient"]}


def test_or_lists_fault_spec() -> None:
    spec = FaultSpec.parse("or_lists=literal,seed=4")
    assert spec == FaultSpec(seed=4, or_lists="literal") and spec.active
    assert FaultSpec.parse(str(spec)) == spec
    assert "or_lists" not in str(FaultSpec(seed=4))
    assert not FaultSpec().active
    with pytest.raises(FaultSpecError):
        FaultSpec.parse("or_lists=sometimes")
