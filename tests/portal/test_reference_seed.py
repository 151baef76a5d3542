"""Reference portal seeding: the demo cases as valid FHIR R4, faithfully and quickly."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class

from derm_workstation.demo.dataset import build_demo_dataset
from derm_workstation.portal.reference.search import RESOURCE_TYPES
from derm_workstation.portal.reference.seed import CASE_NUMBER_SYSTEM, MRN_SYSTEM
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.test_reference_support import (
    FIXED_NOW,
    SEED_CASES,
    demo_cache,
    search_all,
    seeded_db,
)


@pytest.fixture(scope="module")
def seeded_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferencePortal]:
    """The session's 40-case demo portal, served for this module; read only."""
    with ReferencePortal.start(seeded_db(tmp_path_factory)) as p:
        yield p


@pytest.fixture(scope="module")
def everything(seeded_portal: ReferencePortal) -> dict[str, list[dict[str, Any]]]:
    """Every seeded resource, by type, as read over HTTP."""
    with requests.Session() as http:
        return {t: search_all(http, f"{seeded_portal.base_url}/{t}", {"_count": "200"})
                for t in RESOURCE_TYPES}


def test_every_seeded_resource_is_valid_fhir_r4(
        everything: dict[str, list[dict[str, Any]]]) -> None:
    counts = {t: len(v) for t, v in everything.items() if v}
    assert {"Patient", "Practitioner", "Task", "ServiceRequest", "Media", "Binary",
            "QuestionnaireResponse", "Communication", "AllergyIntolerance",
            "MedicationStatement"} <= counts.keys()
    for rtype, resources in everything.items():
        model = get_fhir_model_class(rtype)
        for res in resources:
            model.model_validate(res)  # raises on anything invalid


def test_seeded_cases_match_the_demo_dataset(
        seeded_portal: ReferencePortal, everything: dict[str, list[dict[str, Any]]]) -> None:
    ds = build_demo_dataset(seed=1729, n_cases=SEED_CASES, now=FIXED_NOW)
    tasks = {t["identifier"][0]["value"]: t for t in everything["Task"]}
    assert all(t["identifier"][0]["system"] == CASE_NUMBER_SYSTEM for t in tasks.values())
    assert set(tasks) == {c.portal_case_number for c in ds.cases}
    by_id = {(r["resourceType"], r["id"]): r for v in everything.values() for r in v}

    def deref(ref: dict[str, str]) -> dict[str, Any]:
        rtype, rid = ref["reference"].split("/")
        return by_id[(rtype, rid)]

    media_by_sr = Counter(m["basedOn"][0]["reference"] for m in everything["Media"])
    comms_by_sr = Counter(c["basedOn"][0]["reference"] for c in everything["Communication"])
    for case in ds.cases:
        t = tasks[case.portal_case_number]
        assert (t["status"], t["priority"], t["intent"]) == (case.status, case.priority, "order")
        assert t["businessStatus"]["text"]
        sr, patient = deref(t["focus"]), deref(t["for"])
        p = ds.patient(case.patient_key)
        assert patient["identifier"][0] == {**patient["identifier"][0], "system": MRN_SYSTEM,
                                            "value": p.mrn}
        assert patient["birthDate"] == p.birth_date.isoformat()
        assert patient["name"][0]["family"] == p.family_name
        assert sr["subject"] == t["for"]
        assert sr["reasonCode"][0]["text"] == case.chief_complaint
        assert sr["bodySite"][0]["text"] == case.body_site
        assert sr["note"][0]["text"] == case.description
        sr_ref = f"ServiceRequest/{sr['id']}"
        assert media_by_sr[sr_ref] == len(case.photos)
        assert comms_by_sr[sr_ref] == len(case.messages)
        if case.status in ("accepted", "in-progress"):
            assert deref(t["owner"])["resourceType"] == "Practitioner"
    # chronic patients: earlier, completed Tasks of the same Patient
    per_patient = Counter(t["for"]["reference"] for t in everything["Task"])
    repeat = [ref for ref, n in per_patient.items() if n > 1]
    assert repeat
    for ref in repeat:
        statuses = [t["status"] for t in everything["Task"] if t["for"]["reference"] == ref]
        assert "completed" in statuses
    assert len(everything["Patient"]) == len(ds.patients)
    assert seeded_portal.store.count("Task") == len(ds.cases)


def test_messages_questionnaires_and_allergies(
        everything: dict[str, list[dict[str, Any]]]) -> None:
    for c in everything["Communication"]:
        kinds = (c["sender"]["reference"].split("/")[0],
                 c["recipient"][0]["reference"].split("/")[0])
        assert kinds in (("Patient", "Practitioner"), ("Practitioner", "Patient"))
        assert c["payload"][0]["contentString"]
    value_types: set[str] = set()

    def walk(items: list[dict[str, Any]], depth: int) -> int:
        deepest = depth
        for it in items:
            assert it["linkId"] and it["text"]
            for a in it.get("answer", []):
                value_types.update(k for k in a if k.startswith("value"))
            deepest = max(deepest, walk(it.get("item", []), depth + 1))
        return deepest

    assert max(walk(q["item"], 1) for q in everything["QuestionnaireResponse"]) >= 2
    assert {"valueString", "valueBoolean", "valueInteger", "valueDate",
            "valueCoding"} <= value_types
    allergies = everything["AllergyIntolerance"]
    assert allergies and all(a["code"]["text"] != "No known allergy" for a in allergies)
    assert len({(a["patient"]["reference"], a["code"]["text"]) for a in allergies}) == \
        len(allergies)


def test_seeding_40_cases_takes_seconds_with_the_render_cache(
        seeded_portal: ReferencePortal, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # the session's seeded portal has rendered (and cached) these very photos
    t0 = time.perf_counter()
    with ReferencePortal.start(tmp_path / "p.sqlite3", seed_cases=SEED_CASES, now=FIXED_NOW,
                               cache_dir=demo_cache(tmp_path_factory)) as portal:
        elapsed = time.perf_counter() - t0
        assert portal.store.count() == seeded_portal.store.count()
    assert elapsed < 5.0, elapsed


def test_a_seeded_database_is_not_seeded_twice(tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    db = tmp_path / "p.sqlite3"
    cache = demo_cache(tmp_path_factory)
    with ReferencePortal.start(db, seed_cases=3, now=FIXED_NOW, cache_dir=cache) as portal:
        first = portal.store.count()
        assert portal.seed_summary is not None
    with ReferencePortal.start(db, seed_cases=3, now=FIXED_NOW, cache_dir=cache) as portal:
        assert portal.seed_summary is None
        assert portal.store.count() == first
