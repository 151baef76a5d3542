"""Filling the reference portal with the synthetic demo cases, as FHIR resources.

Each demo case becomes what a patient portal holds for one submission:

* ``Patient`` (one per demo patient: MRN identifier, name, birthDate, gender);
* ``ServiceRequest`` (the consult request: reasonCode text = chief complaint, bodySite
  text, note = the patient's own description, supportingInfo → the questionnaire);
* ``Task`` (identifier = portal case number, status, intent order, priority, focus →
  ServiceRequest, for → Patient, authoredOn, lastModified, businessStatus; accepted and
  in-progress Tasks are owned by a colleague ``Practitioner``, on-hold ones carry a note);
* one ``Binary`` and one ``Media`` per photo (content.url → the Binary, relative for
  odd photos and absolute for even ones, size, base64 SHA-1 hash, title);
* ``QuestionnaireResponse`` (the nested intake form);
* one ``Communication`` per message (from the Patient, or from the clinic team
  ``Practitioner``);
* ``AllergyIntolerance`` when the form names an allergy, and ``MedicationStatement``
  for the current treatment, once per patient.

Earlier, completed visits of chronic patients become completed Tasks of the same
Patient. Each case is written in one transaction, oldest change first, so
``_sort=_lastUpdated`` follows the cases' own activity. Photos are rendered on a
small thread pool through the demo render cache.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from derm_workstation.core.paths import default_cache_dir
from derm_workstation.demo.dataset import (
    DemoAnswer,
    DemoCase,
    DemoDataset,
    DemoPatient,
    DemoQuestion,
    build_demo_dataset,
)
from derm_workstation.demo.seed import render_jpeg
from derm_workstation.portal.reference.store import BASE_TOKEN, PortalStore

__all__ = [
    "CASE_NUMBER_SYSTEM",
    "MRN_SYSTEM",
    "PRACTITIONER_SYSTEM",
    "PortalSeedSummary",
    "seed_portal",
]

CASE_NUMBER_SYSTEM = "urn:derm-reference-portal:case-number"
MRN_SYSTEM = "urn:derm-reference-portal:mrn"
PRACTITIONER_SYSTEM = "urn:derm-reference-portal:practitioner"
QUESTIONNAIRE_URL = "urn:derm-reference-portal:questionnaire:skin-intake"
SNOMED = "http://snomed.info/sct"
_NO_ALLERGY = ("716186003", "No known allergy")
_NOT_MEDICINES = ("none", "sunscreen only")

_BUSINESS_STATUS = {
    "requested": "Submitted by the patient",
    "received": "Received by the clinic",
    "accepted": "Accepted for review",
    "in-progress": "Under review",
    "on-hold": "Waiting for more photos from the patient",
    "completed": "Review completed",
    "cancelled": "Withdrawn",
}


@dataclass(frozen=True)
class PortalSeedSummary:
    cases: int
    patients: int
    photos: int
    photo_bytes: int
    resources: int


def _dt(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _answer(a: DemoAnswer) -> dict[str, Any]:
    if a.type == "boolean":
        return {"valueBoolean": bool(a.value)}
    if a.type == "integer":
        assert isinstance(a.value, int)
        return {"valueInteger": a.value}
    if a.type == "date":
        assert isinstance(a.value, date)
        return {"valueDate": a.value.isoformat()}
    if a.type == "coding":
        coding = {"display": str(a.value)}
        if a.system:
            coding["system"] = a.system
        if a.code:
            coding["code"] = a.code
        return {"valueCoding": coding}
    return {"valueString": str(a.value)}


def _item(q: DemoQuestion) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": q.link_id, "text": q.text}
    if q.answers:
        item["answer"] = [_answer(a) for a in q.answers]
    if q.items:
        item["item"] = [_item(i) for i in q.items]
    return item


def _find(items: tuple[DemoQuestion, ...], link_id: str) -> DemoQuestion | None:
    for q in items:
        if q.link_id == link_id:
            return q
        found = _find(q.items, link_id)
        if found:
            return found
    return None


class _Seeder:
    def __init__(self, store: PortalStore, dataset: DemoDataset) -> None:
        self.store = store
        self.dataset = dataset
        self.patient_ids: dict[str, str] = {}
        self.allergies: set[tuple[str, str]] = set()
        self.medications: set[tuple[str, str]] = set()
        self.photo_no = 0
        self.resources = 0
        self.team = ""
        self.colleague = ""

    def put(self, resource: dict[str, Any], data: bytes | None = None) -> str:
        rid = resource.get("id") or self.store.new_id()
        self.store.write(resource["resourceType"], rid, resource, data=data)
        self.resources += 1
        return str(rid)

    def practitioners(self) -> None:
        with self.store.transaction():
            self.team = self.put({
                "resourceType": "Practitioner",
                "identifier": [{"system": PRACTITIONER_SYSTEM, "value": "clinic-team"}],
                "active": True,
                "name": [{"text": "Teledermatology clinic team", "family": "Clinic team"}],
            })
            self.colleague = self.put({
                "resourceType": "Practitioner",
                "identifier": [{"system": PRACTITIONER_SYSTEM, "value": "colleague"}],
                "active": True,
                "name": [{"family": "Colleague", "given": ["Demo"], "prefix": ["Dr"]}],
                "qualification": [{"code": {"text": "Dermatologist"}}],
            })

    def patient(self, p: DemoPatient) -> str:
        if p.key not in self.patient_ids:
            self.patient_ids[p.key] = self.put({
                "resourceType": "Patient",
                "identifier": [{
                    "use": "usual",
                    "type": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR"}], "text": "Medical record number"},
                    "system": MRN_SYSTEM, "value": p.mrn}],
                "active": True,
                "name": [{"use": "official", "family": p.family_name, "given": [p.given_name]}],
                "gender": p.sex if p.sex in ("male", "female", "other") else "unknown",
                "birthDate": p.birth_date.isoformat(),
            })
        return self.patient_ids[p.key]

    def case(self, case: DemoCase, jpegs: list[bytes]) -> int:
        """Write one case; returns the photo bytes stored."""
        p = self.dataset.patient(case.patient_key)
        stored = 0
        with self.store.transaction():
            pid = self.patient(p)
            patient = _ref("Patient", pid)
            sr_id = self.store.new_id()
            qr_id = self.store.new_id() if case.questionnaire else None
            done = case.status == "completed"
            sr: dict[str, Any] = {
                "resourceType": "ServiceRequest", "id": sr_id,
                "status": "completed" if done else "revoked" if case.status == "cancelled"
                else "active",
                "intent": "order",
                "category": [{"text": "Teledermatology"}],
                "code": {"text": "Teledermatology consultation"},
                "subject": patient,
                "authoredOn": _dt(case.submitted_at),
                "requester": patient,
                "reasonCode": [{"text": case.chief_complaint}],
                "bodySite": [{"text": case.body_site}],
                "note": [{"text": case.description, "time": _dt(case.submitted_at)}],
            }
            if qr_id:
                sr["supportingInfo"] = [_ref("QuestionnaireResponse", qr_id)]
            self.put(sr)
            for photo, data in zip(case.photos, jpegs, strict=True):
                self.photo_no += 1
                bid = self.put({"resourceType": "Binary", "contentType": "image/jpeg",
                                "securityContext": patient}, data)
                url = f"Binary/{bid}" if self.photo_no % 2 else f"{BASE_TOKEN}/Binary/{bid}"
                self.put({
                    "resourceType": "Media",
                    "status": "completed",
                    "type": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/media-type",
                        "code": "image", "display": "Image"}]},
                    "basedOn": [_ref("ServiceRequest", sr_id)],
                    "subject": patient,
                    "createdDateTime": _dt(photo.taken_at),
                    "bodySite": {"text": photo.body_site},
                    "content": {
                        "contentType": "image/jpeg",
                        "url": url,
                        "size": len(data),
                        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
                        "title": photo.title,
                        "creation": _dt(photo.taken_at),
                    },
                })
                stored += len(data)
            if qr_id:
                self.put({
                    "resourceType": "QuestionnaireResponse", "id": qr_id,
                    "questionnaire": QUESTIONNAIRE_URL,
                    "status": "completed",
                    "basedOn": [_ref("ServiceRequest", sr_id)],
                    "subject": patient,
                    "authored": _dt(case.submitted_at),
                    "author": patient,
                    "item": [_item(q) for q in case.questionnaire],
                })
            for m in case.messages:
                inbound = m.direction == "inbound"
                clinic = _ref("Practitioner", self.team)
                self.put({
                    "resourceType": "Communication",
                    "status": "completed",
                    "basedOn": [_ref("ServiceRequest", sr_id)],
                    "subject": patient,
                    "sent": _dt(m.sent_at),
                    "sender": patient if inbound else clinic,
                    "recipient": [clinic if inbound else patient],
                    "payload": [{"contentString": m.text}],
                })
            self._allergy(case, pid)
            self._medication(case, pid)
            task: dict[str, Any] = {
                "resourceType": "Task",
                "identifier": [{"system": CASE_NUMBER_SYSTEM, "value": case.portal_case_number}],
                "status": case.status,
                "businessStatus": {"text": _BUSINESS_STATUS.get(case.status, case.status)},
                "intent": "order",
                "priority": case.priority,
                "code": {"text": "Review teledermatology submission"},
                "focus": _ref("ServiceRequest", sr_id),
                "for": patient,
                "authoredOn": _dt(case.submitted_at),
                "lastModified": _dt(case.updated_at),
                "requester": patient,
            }
            if case.status in ("accepted", "in-progress", "completed"):
                task["owner"] = _ref("Practitioner", self.colleague)
            if case.status == "on-hold":
                task["note"] = [{"text": "Asked the patient for another close-up in daylight.",
                                 "time": _dt(case.updated_at)}]
            self.put(task)
        return stored

    def _allergy(self, case: DemoCase, pid: str) -> None:
        q = _find(case.questionnaire, "medications.allergies")
        for a in q.answers if q else ():
            label = str(a.value)
            if a.code == _NO_ALLERGY[0] or label == _NO_ALLERGY[1]:
                continue
            if (pid, label) in self.allergies:
                continue
            self.allergies.add((pid, label))
            code: dict[str, Any] = {"text": label}
            if a.code and a.system:
                code["coding"] = [{"system": a.system, "code": a.code, "display": label}]
            self.put({
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active"}]},
                "verificationStatus": {"coding": [{
                    "system":
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "unconfirmed"}]},
                "code": code,
                "patient": _ref("Patient", pid),
                "recordedDate": _dt(case.submitted_at),
                "recorder": _ref("Patient", pid),
                "note": [{"text": "Reported by the patient in the intake questionnaire."}],
            })

    def _medication(self, case: DemoCase, pid: str) -> None:
        q = _find(case.questionnaire, "medications.current")
        for a in q.answers if q else ():
            text = str(a.value)
            if text.strip().lower() in _NOT_MEDICINES or (pid, text) in self.medications:
                continue
            self.medications.add((pid, text))
            self.put({
                "resourceType": "MedicationStatement",
                "status": "active" if case.status != "completed" else "unknown",
                "medicationCodeableConcept": {"text": text},
                "subject": _ref("Patient", pid),
                "dateAsserted": _dt(case.submitted_at),
                "informationSource": _ref("Patient", pid),
            })


def seed_portal(store: PortalStore, *, n_cases: int = 40, seed: int = 1729,
                now: datetime | None = None, cache_dir: Path | None = None,
                workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> PortalSeedSummary:
    """Write the demo dataset into ``store`` (which should be empty)."""
    dataset = build_demo_dataset(seed=seed, n_cases=n_cases, now=now or datetime.now(UTC))
    cache = cache_dir if cache_dir is not None else default_cache_dir() / "demo-photos"
    cases = sorted(dataset.cases, key=lambda c: (c.updated_at, c.key))
    seeder = _Seeder(store, dataset)
    seeder.practitioners()
    total_bytes = photos = 0
    n_workers = workers or min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="portal-render") as pool:
        futures = [[pool.submit(render_jpeg, ph, cache) for ph in c.photos] for c in cases]
        for i, (case, futs) in enumerate(zip(cases, futures, strict=True), start=1):
            jpegs = [f.result() for f in futs]
            total_bytes += seeder.case(case, jpegs)
            photos += len(jpegs)
            if progress:
                progress(i, len(cases))
    store.set_setting("seeded", f"cases={len(cases)},seed={seed}")
    return PortalSeedSummary(cases=len(cases), patients=len(seeder.patient_ids),
                             photos=photos, photo_bytes=total_bytes,
                             resources=seeder.resources)
