"""Reference portal: create, conditional create, If-Match updates, over real HTTP."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from derm_workstation.core.errors import StorageError
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.test_reference_support import FHIR_JSON, search_all, task

OUTBOX = "urn:derm-workstation:outbox"
JSON_HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}


def _message(key: str) -> dict[str, Any]:
    return {"resourceType": "Communication", "status": "completed",
            "identifier": [{"system": OUTBOX, "value": key}],
            "payload": [{"contentString": "Please send one more photo."}]}


def _post(http: requests.Session, url: str, body: dict[str, Any],
          **headers: str) -> requests.Response:
    return http.post(url, data=json.dumps(body), headers={**JSON_HEADERS, **headers}, timeout=30)


def _put(http: requests.Session, url: str, body: dict[str, Any],
         **headers: str) -> requests.Response:
    return http.put(url, data=json.dumps(body), headers={**JSON_HEADERS, **headers}, timeout=30)


def _diagnostics(r: requests.Response) -> str:
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome", oo
    return str(oo["issue"][0]["diagnostics"])


def test_create_answers_201_with_location_etag_and_the_resource(
        portal: ReferencePortal, http: requests.Session) -> None:
    r = _post(http, f"{portal.base_url}/Task", task(id="client-chosen"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] != "client-chosen"  # the server assigns ids on create
    assert r.headers["Location"] == f"{portal.base_url}/Task/{body['id']}/_history/1"
    assert r.headers["ETag"] == 'W/"1"' and body["meta"]["versionId"] == "1"
    assert portal.store.get("Task", body["id"]) == body
    minimal = _post(http, f"{portal.base_url}/Task", task(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["Location"].endswith("/_history/1")


def test_conditional_create_never_makes_a_duplicate(portal: ReferencePortal,
                                                     http: requests.Session) -> None:
    key = str(uuid.uuid4())
    cond = {"If-None-Exist": f"identifier={OUTBOX}|{key}"}
    url = f"{portal.base_url}/Communication"
    first = _post(http, url, _message(key), **cond)
    assert first.status_code == 201
    again = _post(http, url, _message(key), **cond)  # a retry after a lost response
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert portal.store.count("Communication") == 1
    other = _post(http, url, _message(str(uuid.uuid4())),
                  **{"If-None-Exist": f"identifier={OUTBOX}|{uuid.uuid4()}"})
    assert other.status_code == 201 and portal.store.count("Communication") == 2
    # two resources already match: the server cannot tell which one is meant
    portal.store.create(_message(key))
    clash = _post(http, url, _message(key), **cond)
    assert clash.status_code == 412 and "matches 2" in _diagnostics(clash)
    bad = _post(http, url, _message(key), **{"If-None-Exist": "colour=blue"})
    assert bad.status_code == 400 and "colour" in _diagnostics(bad)


def test_concurrent_conditional_creates_make_exactly_one(tmp_path: Path) -> None:
    key = str(uuid.uuid4())
    results: list[int] = []

    def send(base: str) -> None:
        with requests.Session() as s:
            r = _post(s, f"{base}/Communication", _message(key),
                      **{"If-None-Exist": f"identifier={OUTBOX}|{key}"})
            results.append(r.status_code)

    with ReferencePortal.start(tmp_path / "p.sqlite3") as portal:
        threads = [threading.Thread(target=send, args=(portal.base_url,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [200] * 7 + [201]
        assert portal.store.count("Communication") == 1


def test_if_match_update_and_412_conflict(portal: ReferencePortal,
                                          http: requests.Session) -> None:
    t = portal.store.create(task())
    for who in ("me", "them"):
        portal.store.put({"resourceType": "Practitioner", "id": who})
    url = f"{portal.base_url}/Task/{t['id']}"
    claim = dict(t, status="in-progress", owner={"reference": "Practitioner/me"})
    r = _put(http, url, claim, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2" and r.headers["ETag"] == 'W/"2"'
    # another workstation still holds version 1 and tries to claim too
    theirs = dict(t, status="in-progress", owner={"reference": "Practitioner/them"})
    conflict = _put(http, url, theirs, **{"If-Match": 'W/"1"'})
    assert conflict.status_code == 412
    assert "current version is 2" in _diagnostics(conflict)
    stored = portal.store.get("Task", t["id"])
    assert stored["owner"] == {"reference": "Practitioner/me"}
    assert stored["meta"]["versionId"] == "2"
    # a strong ETag is accepted too; no If-Match means last writer wins
    assert _put(http, url, dict(claim, status="completed"),
                **{"If-Match": '"2"'}).status_code == 200
    assert _put(http, url, dict(claim, status="on-hold")).status_code == 200
    assert portal.store.get("Task", t["id"])["meta"]["versionId"] == "4"
    assert _put(http, url, claim, **{"If-Match": "2"}).status_code == 400
    assert len(portal.store.history("Task", t["id"])) == 4


def test_update_checks_the_body(portal: ReferencePortal, http: requests.Session) -> None:
    t = portal.store.create(task())
    url = f"{portal.base_url}/Task/{t['id']}"
    r = _put(http, url, dict(t, id="someone-else"))
    assert r.status_code == 400 and "must equal" in _diagnostics(r)
    r = _put(http, url, {k: v for k, v in t.items() if k != "id"})
    assert r.status_code == 400
    r = _put(http, url, dict(t, resourceType="Patient"))
    assert r.status_code == 400 and "not a Task" in _diagnostics(r)
    r = _put(http, f"{portal.base_url}/Task/new-one", dict(t, id="new-one"))
    assert r.status_code == 201  # update as create, with the client's id
    gone = portal.store.create(task())
    portal.store.delete("Task", gone["id"])
    r = _put(http, f"{portal.base_url}/Task/{gone['id']}", gone, **{"If-Match": 'W/"1"'})
    assert r.status_code == 410


@pytest.mark.parametrize(("body", "content_type", "status", "needle"), [
    (b"{not json", FHIR_JSON, 400, "not valid JSON"),
    (b"[1, 2]", FHIR_JSON, 400, "JSON object"),
    (b'{"resourceType": "Patient"}', FHIR_JSON, 400, "not a Task"),
    (b'{"resourceType": "Task"}', "text/plain", 415, "application/fhir+json"),
])
def test_malformed_creates_are_refused(portal: ReferencePortal, http: requests.Session,
                                       body: bytes, content_type: str, status: int,
                                       needle: str) -> None:
    r = http.post(f"{portal.base_url}/Task", data=body,
                  headers={"Content-Type": content_type}, timeout=30)
    assert r.status_code == status and needle in _diagnostics(r)
    assert portal.store.count() == 0


def test_validate_option_refuses_invalid_fhir(tmp_path: Path, http: requests.Session) -> None:
    with ReferencePortal.start(tmp_path / "p.sqlite3", validate=True) as portal:
        ok = _post(http, f"{portal.base_url}/Task", task())
        assert ok.status_code == 201
        bad = _post(http, f"{portal.base_url}/Task", task(colour="blue"))
        assert bad.status_code == 400 and "colour" in _diagnostics(bad)
        bad = _post(http, f"{portal.base_url}/Communication",
                    {"resourceType": "Communication", "status": "completed",
                     "payload": "not a list of payloads"})
        assert bad.status_code == 400
        assert portal.store.count() == 1


def test_concurrent_writes_keep_versions_and_times_strictly_increasing(
        portal: ReferencePortal) -> None:
    t = portal.store.create(task())
    stamps: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        with requests.Session() as s:
            for _ in range(n):
                r = _post(s, f"{portal.base_url}/Task", task())
                with lock:
                    stamps.append(r.json()["meta"]["lastUpdated"])
                cur = s.get(f"{portal.base_url}/Task/{t['id']}", timeout=30).json()
                _put(s, f"{portal.base_url}/Task/{t['id']}", cur)

    threads = [threading.Thread(target=writer, args=(15,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(set(stamps)) == 60
    versions = portal.store.history("Task", t["id"])
    assert [v["meta"]["versionId"] for v in versions] == [str(i) for i in range(1, 62)]
    times = [v["meta"]["lastUpdated"] for v in versions]
    assert times == sorted(times) and len(set(times)) == len(times)
    everything = search_all(requests.Session(), f"{portal.base_url}/Task",
                            {"_sort": "_lastUpdated", "_count": "17"})
    assert len(everything) == 61


def test_data_survives_a_restart_and_time_keeps_increasing(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite3"
    with ReferencePortal.start(db) as portal:
        made = [portal.store.create(task()) for _ in range(5)]
        portal.store.put(dict(made[0], status="received"))
        last = portal.store.get("Task", made[0]["id"])["meta"]["lastUpdated"]
    with ReferencePortal.start(db) as portal, requests.Session() as http:
        assert portal.store.count("Task") == 5
        assert portal.store.get("Task", made[0]["id"])["meta"]["versionId"] == "2"
        fresh = _post(http, f"{portal.base_url}/Task", task()).json()
        assert fresh["id"] not in {t["id"] for t in made}
        assert fresh["meta"]["lastUpdated"] > last


def test_references_must_exist_like_on_hapi(portal: ReferencePortal,
                                            http: requests.Session) -> None:
    patient = portal.store.create({"resourceType": "Patient"})
    url = f"{portal.base_url}/Communication"

    def message(**extra: Any) -> dict[str, Any]:
        return {"resourceType": "Communication", "status": "completed",
                "subject": {"reference": f"Patient/{patient['id']}"}, **extra}

    r = _post(http, url, message(sender={"reference": "Practitioner/nobody"}))
    assert r.status_code == 400
    assert "Communication.sender refers to Practitioner/nobody" in _diagnostics(r)
    r = _post(http, url, message(recipient=[{"reference": "Device/1"}]))
    assert r.status_code == 400 and "cannot hold" in _diagnostics(r)
    # identifier-only (logical) references, own-server absolute ones, contained ones and
    # other servers' resources are fine
    ok = [
        message(sender={"identifier": {"system": "urn:clinic:staff", "value": "dr-1"},
                        "display": "Dr One"}),
        message(subject={"reference": f"{portal.base_url}/Patient/{patient['id']}"}),
        message(contained=[{"resourceType": "Practitioner", "id": "p1"}],
                sender={"reference": "#p1"}),
        message(sender={"reference": "https://elsewhere.example/fhir/Practitioner/9"}),
    ]
    for body in ok:
        assert _post(http, url, body).status_code == 201, body
    portal.store.delete("Patient", patient["id"])
    assert _post(http, url, message()).status_code == 400
    assert portal.store.count("Communication") == len(ok)


def test_a_file_that_is_not_a_portal_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StorageError, match="not a reference portal database"):
        ReferencePortal.start(junk)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE cases (id TEXT)")
    conn.close()
    with pytest.raises(StorageError, match="not a reference portal database"):
        ReferencePortal.start(other)
    assert sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall() == \
        [("cases",)]
