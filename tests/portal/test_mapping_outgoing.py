"""Every resource the workstation sends is valid FHIR R4 (fhir.resources R4B models)
and carries what PORTAL_CONTRACT.md asks for."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from derm_workstation.portal import mapping as m

NOW = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
OUTBOX_ID = "6f1c2e4a-0b7d-4c55-9a51-1f0e8a7b2c3d"
DOC = m.practitioner_ref("dr.ade")


def validate(resource: dict[str, Any]) -> Any:
    """Validate with the R4B model of the resource's type (raises when invalid)."""
    rtype = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}")
    model = getattr(module, rtype)
    json.dumps(resource)  # JSON-ready, no Python objects
    return model.model_validate(resource)


def assert_outbox_identifier(resource: dict[str, Any]) -> None:
    assert {"system": m.OUTBOX_SYSTEM, "value": OUTBOX_ID} in resource["identifier"]


def test_the_validator_really_rejects_invalid_resources() -> None:
    with pytest.raises(ValidationError):
        validate({"resourceType": "Communication", "status": "completed", "payload": "x"})
    with pytest.raises(ValidationError):
        validate({"resourceType": "Task", "status": "in-progress", "intent": "order",
                  "owner": [{"reference": "Practitioner/1"}]})


def test_claim_task_update() -> None:
    current = {"resourceType": "Task", "id": "12", "meta": {"versionId": "3"},
               "identifier": [{"system": "urn:portal:case", "value": "TD-1"}],
               "status": "requested", "intent": "order", "priority": "urgent",
               "focus": {"reference": "ServiceRequest/7"}, "for": {"reference": "Patient/3"},
               "authoredOn": "2026-11-28T10:00:00Z",
               "extension": [{"url": "http://portal/ext", "valueString": "kept"}]}
    task = m.task_update(current, status="in-progress", owner=DOC,
                         business_status="Under review",
                         outputs=[{"type": {"text": "report"},
                                   "valueReference": {"reference": "DiagnosticReport/1"}}])
    validate(task)
    assert task["status"] == "in-progress" and task["owner"] == DOC
    assert task["businessStatus"] == {"text": "Under review"}
    assert task["extension"] == current["extension"]  # nothing of the portal's dropped
    assert current["status"] == "requested"  # the input is not modified
    for status in ("accepted", "on-hold", "completed"):
        validate(m.task_update(current, status=status, owner=None))
    with pytest.raises(ValueError):
        m.task_update(current, status="cancelled", owner=None)


def test_practitioner_references() -> None:
    validate({"resourceType": "Task", "status": "ready", "intent": "order", "owner": DOC})
    configured = m.practitioner_ref("dr.ade", "Practitioner/123")
    assert configured == {"reference": "Practitioner/123", "display": "dr.ade"}
    assert m.owner_key(configured) == "Practitioner/123"


def test_message_to_patient() -> None:
    c = m.communication_to_patient(OUTBOX_ID, service_request_id="7", patient_id="3",
                                   sender=DOC, text="Please send a closer photo.", sent=NOW)
    validate(c)
    assert_outbox_identifier(c)
    assert c["status"] == "completed"
    assert c["basedOn"] == [{"reference": "ServiceRequest/7"}]
    assert c["subject"] == {"reference": "Patient/3"}
    assert c["recipient"] == [{"reference": "Patient/3"}]
    assert c["payload"] == [{"contentString": "Please send a closer photo."}]
    assert c["sent"] == "2026-11-29T09:30:00Z"
    assert m.if_none_exist(OUTBOX_ID) == f"identifier={m.OUTBOX_SYSTEM}|{OUTBOX_ID}"


def test_consult_outcome_report() -> None:
    r = m.diagnostic_report(
        OUTBOX_ID, service_request_id="7", patient_id="3", performer=DOC, issued=NOW,
        conclusion="Seborrhoeic keratosis; no further action.",
        conclusion_codes=[m.CodeIn("Seborrhoeic keratosis", m.SNOMED, "201101007")],
        key_media_ids=["5", "6"], pdf_data_b64="JVBERi0xLjQK", pdf_title="Consult report")
    validate(r)
    assert_outbox_identifier(r)
    assert r["status"] == "final" and r["basedOn"] == [{"reference": "ServiceRequest/7"}]
    assert r["media"] == [{"link": {"reference": "Media/5"}}, {"link": {"reference": "Media/6"}}]
    assert r["presentedForm"][0]["contentType"] == "application/pdf"
    assert r["conclusionCode"][0]["coding"][0] == {
        "system": m.SNOMED, "code": "201101007", "display": "Seborrhoeic keratosis"}
    validate(m.diagnostic_report(OUTBOX_ID, service_request_id="7", patient_id="3",
                                 performer=DOC, issued=NOW, conclusion="x",
                                 pdf_url="Binary/99"))


def test_key_image_media() -> None:
    media = m.key_image_media(OUTBOX_ID, service_request_id="7", patient_id="3",
                              binary_id="99", content_type="image/png", size=2048,
                              sha1_b64="2jmj7l5rSw0yVb/vlWAYkK/YBwk=", title="Annotated",
                              body_site="Left forearm", taken=NOW, operator=DOC,
                              note="Arrow marks the irregular border")
    validate(media)
    assert_outbox_identifier(media)
    assert media["basedOn"] == [{"reference": "ServiceRequest/7"}]
    assert media["content"]["url"] == "Binary/99"
    assert media["content"]["size"] == 2048


def test_prescription() -> None:
    rx = m.medication_request(
        OUTBOX_ID, service_request_id="7", patient_id="3", requester=DOC, authored=NOW,
        medication=m.CodeIn("Hydrocortisone 1% cream", m.RXNORM, "106258"),
        dosage_text="Apply thinly twice a day for 7 days", quantity=30, quantity_unit="g",
        repeats=1)
    validate(rx)
    assert_outbox_identifier(rx)
    assert (rx["status"], rx["intent"]) == ("active", "order")
    assert rx["medicationCodeableConcept"]["coding"][0]["system"] == m.RXNORM
    assert rx["dispenseRequest"] == {"quantity": {"value": 30, "unit": "g"},
                                     "numberOfRepeatsAllowed": 1}
    assert rx["dosageInstruction"] == [{"text": "Apply thinly twice a day for 7 days"}]
    plain = m.medication_request(OUTBOX_ID, service_request_id="7", patient_id="3",
                                 requester=DOC, authored=NOW,
                                 medication=m.CodeIn("Emollient"), dosage_text="As needed")
    validate(plain)
    assert "coding" not in plain["medicationCodeableConcept"]


def test_in_person_referral() -> None:
    ref = m.referral_request(OUTBOX_ID, service_request_id="7", patient_id="3", requester=DOC,
                             what="Excision biopsy", priority="urgent",
                             reason="Changing pigmented lesion", authored=NOW)
    validate(ref)
    assert_outbox_identifier(ref)
    assert (ref["status"], ref["intent"], ref["priority"]) == ("active", "order", "urgent")
    assert ref["category"][0]["text"] == "referral"
    assert ref["code"] == {"text": "Excision biopsy"}
    assert ref["basedOn"] == [{"reference": "ServiceRequest/7"}]
    with pytest.raises(ValueError):
        m.referral_request(OUTBOX_ID, service_request_id="7", patient_id="3",
                           requester=DOC, what="x", priority="whenever")


def test_follow_up_appointment() -> None:
    appt = m.follow_up_appointment(OUTBOX_ID, service_request_id="7", patient_id="3",
                                   practitioner=DOC, service="video visit", start=NOW,
                                   end=NOW + timedelta(days=7), comment="Review in a week")
    validate(appt)
    assert_outbox_identifier(appt)
    assert appt["status"] == "proposed"
    assert appt["serviceType"] == [{"text": "video visit"}]
    assert [p["status"] for p in appt["participant"]] == ["needs-action", "needs-action"]
    assert appt["participant"][0]["actor"] == {"reference": "Patient/3"}


def test_score_observation() -> None:
    obs = m.score_observation(
        OUTBOX_ID, service_request_id="7", patient_id="3",
        code=m.CodeIn("POEM total score", m.LOINC, "89870-0"), value=14, effective=NOW,
        unit="{score}", performer=DOC,
        components=[m.ComponentIn(m.CodeIn("Itch nights"), 3)])
    validate(obs)
    assert_outbox_identifier(obs)
    assert obs["status"] == "final" and obs["code"]["coding"][0]["code"] == "89870-0"
    assert obs["valueQuantity"] == {"value": 14, "unit": "{score}"}
    assert obs["component"][0]["valueQuantity"] == {"value": 3}


def test_generic_create_gets_exactly_one_outbox_identifier() -> None:
    base = {"resourceType": "Communication", "status": "completed",
            "identifier": [{"system": "urn:other", "value": "1"},
                           {"system": m.OUTBOX_SYSTEM, "value": "stale"}]}
    out = m.with_outbox_identifier(base, OUTBOX_ID)
    validate(out)
    assert out["identifier"] == [{"system": "urn:other", "value": "1"},
                                 {"system": m.OUTBOX_SYSTEM, "value": OUTBOX_ID}]
    assert len(base["identifier"]) == 2 and base["identifier"][1]["value"] == "stale"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        m.format_instant(datetime(2026, 11, 29, 9, 30))
