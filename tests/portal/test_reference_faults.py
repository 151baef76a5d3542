"""Reference portal fault injection: every kind observable, reproducible, and harmless
to the stored data."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from derm_workstation.core.errors import InputError
from derm_workstation.portal.reference.faults import FaultSpec, FaultSpecError
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.test_reference_support import FHIR_JSON, task

JPEG_LIKE = bytes(range(256)) * 400  # 100 kB of "photo"
OUTBOX = "urn:derm-workstation:outbox"
# a reset before the headers arrive, or while the body is read
BROKEN = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[ReferencePortal]:
    """A small portal with one case; faults are switched on by each test."""
    with ReferencePortal.start(tmp_path / "p.sqlite3") as p:
        s = p.store
        patient = s.create({"resourceType": "Patient"})
        binary = s.put_binary(JPEG_LIKE, "image/jpeg")
        sr = s.create({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                       "subject": {"reference": f"Patient/{patient['id']}"}})
        for _ in range(3):
            s.create({"resourceType": "Media", "status": "completed",
                      "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
                      "content": {"contentType": "image/jpeg",
                                  "url": f"Binary/{binary['id']}", "size": len(JPEG_LIKE),
                                  "hash": base64.b64encode(
                                      hashlib.sha1(JPEG_LIKE).digest()).decode()}})
        s.create(task(focus={"reference": f"ServiceRequest/{sr['id']}"}))
        yield p


def _snapshot(portal: ReferencePortal) -> dict[str, Any]:
    s = portal.store
    out: dict[str, Any] = {t: s.search(t) for t in ("Patient", "ServiceRequest", "Media",
                                                    "Task", "Binary", "Communication")}
    out["bytes"] = {b["id"]: s.binary(b["id"]) for b in out["Binary"]}
    return out


def _statuses(portal: ReferencePortal, n: int) -> list[int | str]:
    out: list[int | str] = []
    with requests.Session() as http:
        for i in range(n):
            try:
                r = http.get(f"{portal.base_url}/Task", params={"_count": str(i % 3 + 1)},
                             timeout=30)
                out.append(r.status_code)
            except BROKEN:
                out.append("broken")
    return out


def test_parse() -> None:
    spec = FaultSpec.parse("latency=0.2,error_rate=0.1,drop=0.05,truncate=0.05,bad_hash=0.1,"
                           "seed=7")
    assert spec == FaultSpec(0.2, 0.1, 0.05, 0.05, 0.1, 7)
    assert FaultSpec.parse(str(spec)) == spec
    assert FaultSpec.parse("") == FaultSpec() and not FaultSpec().active
    assert FaultSpec.parse(" error-rate = 1 ").error_rate == 1.0
    for bad in ("colour=red", "latency", "drop=lots", "error_rate=1.5", "latency=-1"):
        with pytest.raises(FaultSpecError) as info:
            FaultSpec.parse(bad)
        assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_latency_delays_fhir_requests_but_not_metadata(faulty: ReferencePortal) -> None:
    faulty.faults = FaultSpec(latency=0.3)
    with requests.Session() as http:
        t0 = time.perf_counter()
        assert http.get(f"{faulty.base_url}/Task", timeout=30).status_code == 200
        slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert http.get(f"{faulty.base_url}/metadata", timeout=30).status_code == 200
        fast = time.perf_counter() - t0
    assert slow >= 0.3 and fast < 0.3


def test_errors_are_500_503_429_with_retry_after_and_write_nothing(
        faulty: ReferencePortal) -> None:
    faulty.faults = FaultSpec(error_rate=1.0, seed=3)
    before = _snapshot(faulty)
    seen: dict[int, requests.Response] = {}
    with requests.Session() as http:
        for i in range(30):
            r = http.post(f"{faulty.base_url}/Communication",
                          data=json.dumps({"resourceType": "Communication",
                                           "status": "completed", "note": [{"text": str(i)}]}),
                          headers={"Content-Type": FHIR_JSON}, timeout=30)
            seen.setdefault(r.status_code, r)
    assert set(seen) == {500, 503, 429}
    for status, r in seen.items():
        assert r.json()["resourceType"] == "OperationOutcome"
        assert (r.headers.get("Retry-After") == "1") == (status in (503, 429))
    assert _snapshot(faulty) == before
    assert {rec.fault for rec in faulty.request_log} == {"error"}


def test_dropped_connection_on_a_read(faulty: ReferencePortal) -> None:
    faulty.faults = FaultSpec(drop=1.0)
    with requests.Session() as http, pytest.raises(BROKEN):
        http.get(f"{faulty.base_url}/Task", timeout=30)
    assert faulty.request_log[-1].fault == "drop"


def test_dropped_response_to_a_write_then_retry_creates_exactly_one(
        faulty: ReferencePortal) -> None:
    key = str(uuid.uuid4())
    body = json.dumps({"resourceType": "Communication", "status": "completed",
                       "identifier": [{"system": OUTBOX, "value": key}]})
    headers = {"Content-Type": FHIR_JSON, "If-None-Exist": f"identifier={OUTBOX}|{key}"}
    faulty.faults = FaultSpec(drop=1.0)
    with requests.Session() as http:
        with pytest.raises(BROKEN):
            http.post(f"{faulty.base_url}/Communication", data=body, headers=headers,
                      timeout=30)
        # the change was committed although its answer was lost
        assert faulty.store.count("Communication") == 1
        with pytest.raises(BROKEN):
            http.post(f"{faulty.base_url}/Communication", data=body, headers=headers,
                      timeout=30)
        faulty.faults = None
        r = http.post(f"{faulty.base_url}/Communication", data=body, headers=headers,
                      timeout=30)
    assert r.status_code == 200
    assert faulty.store.count("Communication") == 1


def test_truncated_binary_body(faulty: ReferencePortal) -> None:
    faulty.faults = FaultSpec(truncate=1.0)
    bid = faulty.store.search("Binary")[0]["id"]
    url = f"{faulty.base_url}/Binary/{bid}"
    with requests.Session() as http:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            http.get(url, headers={"Accept": "image/jpeg"}, timeout=30)
        r = http.get(url, headers={"Accept": "image/jpeg"}, stream=True, timeout=30)
        declared = int(r.headers["Content-Length"])
        assert declared == len(JPEG_LIKE)
        got = b""
        with pytest.raises((urllib3.exceptions.ProtocolError,
                            urllib3.exceptions.IncompleteRead)):
            while chunk := r.raw.read(8192):
                got += chunk
        assert 0 < len(got) < declared
        # only Binary bodies are truncated
        assert http.get(f"{faulty.base_url}/Task", timeout=30).status_code == 200
    assert faulty.store.binary(bid) == JPEG_LIKE


def test_bad_hash_lies_in_responses_only(faulty: ReferencePortal) -> None:
    good = base64.b64encode(hashlib.sha1(JPEG_LIKE).digest()).decode()
    faulty.faults = FaultSpec(bad_hash=1.0)
    with requests.Session() as http:
        bundle = http.get(f"{faulty.base_url}/Media", timeout=30).json()
        hashes = [e["resource"]["content"]["hash"] for e in bundle["entry"]]
        assert len(hashes) == 3 and good not in hashes
        assert all(len(base64.b64decode(h)) == 20 for h in hashes)  # still SHA-1 shaped
        mid = bundle["entry"][0]["resource"]["id"]
        assert http.get(f"{faulty.base_url}/Media/{mid}",
                        timeout=30).json()["content"]["hash"] != good
        assert all(m["content"]["hash"] == good for m in faulty.store.search("Media"))
        faulty.faults = FaultSpec(bad_hash=0.5, seed=1)
        mixed = [e["resource"]["content"]["hash"] for _ in range(4)
                 for e in http.get(f"{faulty.base_url}/Media", timeout=30).json()["entry"]]
        assert good in mixed and any(h != good for h in mixed)
        faulty.faults = None
        clean = http.get(f"{faulty.base_url}/Media", timeout=30).json()
    assert all(e["resource"]["content"]["hash"] == good for e in clean["entry"])
    assert faulty.request_log[-2].fault == "bad_hash"


def test_faults_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> list[int | str]:
        spec = FaultSpec(error_rate=0.3, drop=0.3, seed=seed)
        with ReferencePortal.start(tmp_path / f"{name}.sqlite3", faults=spec) as p:
            p.store.create(task())
            return _statuses(p, 30)

    first = run("a", 7)
    assert first == run("b", 7)
    assert first != run("c", 8)
    kinds = set(first)
    assert 200 in kinds and kinds & {500, 503, 429} and "broken" in kinds


def test_mixed_faults_never_corrupt_the_store(faulty: ReferencePortal) -> None:
    before = _snapshot(faulty)
    faulty.faults = FaultSpec(error_rate=0.3, drop=0.2, truncate=0.3, bad_hash=0.5, seed=11)
    bid = before["Binary"][0]["id"]
    with requests.Session() as http:
        for i in range(40):
            url = (f"{faulty.base_url}/Binary/{bid}" if i % 2 else
                   f"{faulty.base_url}/Media?_count={i % 5 + 1}")
            with contextlib.suppress(requests.RequestException):
                http.get(url, headers={"Accept": "image/jpeg" if i % 2 else FHIR_JSON},
                         timeout=30)
    faults = {rec.fault for rec in faulty.request_log}
    assert {"error", "drop", "truncate", "bad_hash"} <= faults
    assert _snapshot(faulty) == before
