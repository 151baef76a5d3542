"""Reference portal: read and search over real HTTP (paging, filters, strictness)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.test_reference_support import OPEN, search_all, seeded_db, task


@pytest.fixture(scope="module")
def seeded_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferencePortal]:
    """The session's 40-case demo portal, served for this module; read only."""
    with ReferencePortal.start(seeded_db(tmp_path_factory)) as p:
        yield p

INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _fill(portal: ReferencePortal, n: int, status: str = "requested",
          **extra: Any) -> list[dict[str, Any]]:
    return [portal.store.create(task(status, **extra)) for _ in range(n)]


def _page(http: requests.Session, url: str, params: dict[str, str] | None = None
          ) -> dict[str, Any]:
    r = http.get(url, params=params, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    bundle: dict[str, Any] = r.json()
    return bundle


def _links(bundle: dict[str, Any]) -> dict[str, str]:
    return {ln["relation"]: ln["url"] for ln in bundle["link"]}


def _ms(instant: str) -> datetime:
    return datetime.fromisoformat(instant.replace("Z", "+00:00"))


def _error(r: requests.Response, status: int, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert needle.lower() in oo["issue"][0]["diagnostics"].lower()


def test_paging_over_more_than_50_tasks(portal: ReferencePortal,
                                        http: requests.Session) -> None:
    made = _fill(portal, 120) + _fill(portal, 7, "completed")
    url = f"{portal.base_url}/Task"
    params = {"status": OPEN, "_sort": "_lastUpdated", "_count": "50"}
    first = _page(http, url, params)
    assert first["total"] == 120 and len(first["entry"]) == 50
    nxt = _links(first)["next"]
    assert nxt.startswith(portal.base_url + "/Task?")  # absolute, to be followed verbatim
    second = _page(http, nxt)
    third = _page(http, _links(second)["next"])
    assert [len(b["entry"]) for b in (second, third)] == [50, 20]
    assert "next" not in _links(third) and third["total"] == 120
    got = [e["resource"] for b in (first, second, third) for e in b["entry"]]
    assert [t["id"] for t in got] == [t["id"] for t in made[:120]]
    stamps = [t["meta"]["lastUpdated"] for t in got]
    assert all(INSTANT.match(s) for s in stamps)
    assert all(_ms(a) < _ms(b) for a, b in itertools.pairwise(stamps))
    for b in (first, second, third):
        for e in b["entry"]:
            assert e["fullUrl"] == f"{portal.base_url}/Task/{e['resource']['id']}"
            assert e["search"]["mode"] == "match"
    # the default page size is 50, and _count=0 is the total alone
    assert len(_page(http, url)["entry"]) == 50
    only_total = _page(http, url, {"_count": "0"})
    assert only_total["total"] == 127 and "entry" not in only_total


def test_last_updated_gt_is_an_exact_changed_since_cursor(
        portal: ReferencePortal, http: requests.Session) -> None:
    made = _fill(portal, 30)
    cursor = made[19]["meta"]["lastUpdated"]
    later = search_all(http, f"{portal.base_url}/Task",
                       {"status": OPEN, "_lastUpdated": f"gt{cursor}", "_sort": "_lastUpdated",
                        "_count": "4"})
    assert [t["id"] for t in later] == [t["id"] for t in made[20:]]
    # an update moves a resource past the cursor, with a new version and time
    changed = dict(made[3], status="received")
    portal.store.put(changed)
    later = search_all(http, f"{portal.base_url}/Task",
                       {"_lastUpdated": f"gt{made[-1]['meta']['lastUpdated']}"})
    assert [(t["id"], t["meta"]["versionId"], t["status"]) for t in later] == \
        [(made[3]["id"], "2", "received")]
    # the same instant with an offset instead of Z, and ge/lt/le
    offset = _ms(cursor).astimezone(timezone(timedelta(hours=-5))).isoformat(
        timespec="milliseconds")
    assert len(search_all(http, f"{portal.base_url}/Task",
                          {"_lastUpdated": f"gt{offset}"})) == 11  # made[3] moved past it
    assert len(search_all(http, f"{portal.base_url}/Task",
                          {"_lastUpdated": f"ge{cursor}"})) == 12
    assert len(search_all(http, f"{portal.base_url}/Task",
                          {"_lastUpdated": f"le{cursor}"})) == 19  # made[3] moved on
    newest_first = _page(http, f"{portal.base_url}/Task", {"_sort": "-_lastUpdated"})
    assert newest_first["entry"][0]["resource"]["id"] == made[3]["id"]


def test_paging_never_skips_a_resource_changed_mid_way(
        portal: ReferencePortal, http: requests.Session) -> None:
    made = _fill(portal, 100)
    url = f"{portal.base_url}/Task"
    first = _page(http, url, {"status": OPEN, "_sort": "_lastUpdated", "_count": "40"})
    # while the client pages, someone changes one task it has seen and one it has not
    portal.store.put(dict(made[5], priority="urgent"))
    portal.store.put(dict(made[60], priority="urgent"))
    rest = search_all(http, _links(first)["next"])
    seen = [e["resource"]["id"] for e in first["entry"]] + [t["id"] for t in rest]
    assert set(seen) == {t["id"] for t in made}
    assert [t["id"] for t in rest[-2:]] == [made[5]["id"], made[60]["id"]]
    assert all(t["meta"]["versionId"] == "2" for t in rest[-2:])


def test_reference_and_token_parameters(portal: ReferencePortal, http: requests.Session) -> None:
    s = portal.store
    alice = s.create({"resourceType": "Patient",
                      "identifier": [{"system": "urn:mrn", "value": "A-1"}]})
    bob = s.create({"resourceType": "Patient",
                    "identifier": [{"system": "urn:other", "value": "A-1"}]})
    t1 = s.create(task(**{"for": {"reference": f"Patient/{alice['id']}"}}))
    t2 = s.create(task("completed", **{"for": {"reference": f"{portal.base_url}/Patient/"
                                                             f"{alice['id']}"}}))
    s.create(task(**{"for": {"reference": f"Patient/{bob['id']}"}}))
    url = f"{portal.base_url}/Task"
    expected = {t1["id"], t2["id"]}
    for form in (f"Patient/{alice['id']}", alice["id"], f"{portal.base_url}/Patient/{alice['id']}"):
        assert {t["id"] for t in search_all(http, url, {"patient": form})} == expected, form
        assert {t["id"] for t in search_all(http, url, {"subject": form})} == expected, form
    assert [t["id"] for t in search_all(
        http, url, {"patient": alice["id"], "status": "completed"})] == [t2["id"]]
    purl = f"{portal.base_url}/Patient"
    assert [p["id"] for p in search_all(http, purl, {"identifier": "urn:mrn|A-1"})] == \
        [alice["id"]]
    assert len(search_all(http, purl, {"identifier": "A-1"})) == 2
    assert len(search_all(http, purl, {"identifier": "urn:other|"})) == 1
    assert search_all(http, purl, {"identifier": "|A-1"}) == []
    assert len(search_all(http, purl, {"_id": f"{alice['id']},{bob['id']}"})) == 2


def test_contract_searches_find_the_seeded_case(seeded_portal: ReferencePortal,
                                               http: requests.Session) -> None:
    base = seeded_portal.base_url
    tasks = search_all(http, f"{base}/Task", {"status": OPEN, "_sort": "_lastUpdated",
                                              "_count": "50"})
    assert len(tasks) == 40
    t = tasks[0]
    sr = http.get(f"{base}/{t['focus']['reference']}", timeout=30).json()
    patient = http.get(f"{base}/{t['for']['reference']}", timeout=30).json()
    assert sr["resourceType"] == "ServiceRequest" and patient["resourceType"] == "Patient"
    based_on = {"based-on": f"ServiceRequest/{sr['id']}"}
    assert search_all(http, f"{base}/Media", based_on)
    assert len(search_all(http, f"{base}/QuestionnaireResponse", based_on)) == 1
    search_all(http, f"{base}/Communication", based_on)
    search_all(http, f"{base}/AllergyIntolerance", {"patient": f"Patient/{patient['id']}"})
    search_all(http, f"{base}/MedicationStatement", {"patient": f"Patient/{patient['id']}"})
    history = search_all(http, f"{base}/Task", {"patient": f"Patient/{patient['id']}"})
    assert t["id"] in {x["id"] for x in history}


@pytest.mark.parametrize(("query", "status", "needle"), [
    ("Task?colour=blue", 400, "unknown search parameter 'colour'"),
    ("Task?_include=Task:focus", 400, "_include"),
    ("MedicationRequest?based-on=ServiceRequest/1", 400, "based-on"),
    ("Task?status:not=completed", 400, "modifier"),
    ("Task?_lastUpdated=gt2026-11-29T09:00:00", 400, "time zone"),
    ("Task?_lastUpdated=gt2026-11-29T09:00:00.000+01:00", 400, "%2B"),  # '+' unencoded
    ("Task?_lastUpdated=gtyesterday", 400, "invalid date"),
    ("Task?_sort=status", 400, "_sort"),
    ("Task?_count=ten", 400, "_count"),
    ("Task?status=", 400, "empty"),
    ("Task?patient=Practitioner/1", 400, "patient"),
    ("Task?_pageToken=abc", 400, "_pageToken"),
    ("Task?_format=xml", 406, "json"),
    ("Widget?x=1", 404, "unknown resource type"),
    ("Task/1?foo=bar", 400, "not allowed on a read"),
    ("Task/no_underscores", 400, "invalid id"),
])
def test_bad_searches_are_refused_with_an_operation_outcome(
        portal: ReferencePortal, http: requests.Session, query: str, status: int,
        needle: str) -> None:
    portal.store.create(task())
    _error(http.get(f"{portal.base_url}/{query}", timeout=30), status, needle)


def test_read_etag_last_modified_304_404_410_and_vread(
        portal: ReferencePortal, http: requests.Session) -> None:
    t = portal.store.create(task())
    url = f"{portal.base_url}/Task/{t['id']}"
    r = http.get(url, timeout=30)
    assert r.status_code == 200 and r.json() == t
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Last-Modified"].endswith(" GMT")
    assert http.get(url, headers={"If-None-Match": 'W/"1"'}, timeout=30).status_code == 304
    portal.store.put(dict(t, status="received"))
    r = http.get(url, headers={"If-None-Match": 'W/"1"'}, timeout=30)
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
    old = http.get(f"{url}/_history/1", timeout=30).json()
    assert old["status"] == "requested" and old["meta"]["versionId"] == "1"
    _error(http.get(f"{portal.base_url}/Task/999999", timeout=30), 404, "does not exist")
    assert http.delete(url, timeout=30).status_code == 204
    _error(http.get(url, timeout=30), 410, "deleted")
    assert search_all(http, f"{portal.base_url}/Task") == []
    _error(http.get(f"{url}/_history/7", timeout=30), 404, "does not exist")


def test_metadata_is_a_valid_capability_statement(portal: ReferencePortal,
                                                  http: requests.Session) -> None:
    r = http.get(f"{portal.base_url}/metadata", timeout=30)
    assert r.status_code == 200
    cs = r.json()
    CapabilityStatement.model_validate(cs)
    assert cs["fhirVersion"] == "4.0.1"
    types = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert {"Task", "ServiceRequest", "Patient", "Media", "Binary",
            "QuestionnaireResponse", "Communication"} <= types.keys()
    assert {"status", "patient", "_lastUpdated"} <= {p["name"]
                                                      for p in types["Task"]["searchParam"]}
