"""FHIR → domain mapping: tolerant of unknown, missing and malformed input."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derm_workstation.portal import mapping as m


def test_task_fields() -> None:
    t = m.task_from_fhir({
        "resourceType": "Task", "id": "12", "meta": {"versionId": "4",
                                                     "lastUpdated": "2026-11-29T09:00:00.5Z"},
        "identifier": [{"system": m.OUTBOX_SYSTEM, "value": "x"},
                       {"system": "urn:portal:case", "value": "TD-1"}],
        "status": "on-hold", "intent": "order", "priority": "asap",
        "focus": {"reference": "https://portal.example.org/fhir/ServiceRequest/7/_history/2"},
        "for": {"reference": "Patient/3"}, "authoredOn": "2026-11-28T10:00:00+01:00",
        "owner": {"reference": "Practitioner/9", "display": "Dr Nine"},
        "businessStatus": {"text": "Waiting for photos"},
        "note": [{"text": "Asked for a closer photo"}, {"text": "  "}, "garbage"],
        "somethingNew": {"nested": [1, 2]},
    })
    assert t is not None
    assert (t.portal_id, t.version, t.case_number, t.status, t.priority) == (
        "12", "4", "TD-1", "on-hold", "asap")
    assert (t.patient_id, t.focus_id) == ("3", "7")
    assert t.authored_on == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert t.last_updated_at == datetime(2026, 11, 29, 9, 0, 0, 500000, tzinfo=UTC)
    assert (t.owner, t.owner_display) == ("Practitioner/9", "Dr Nine")
    assert t.business_status == "Waiting for photos" and t.note == "Asked for a closer photo"
    assert t.problems == ()


def test_task_missing_parts_are_problems_not_errors() -> None:
    t = m.task_from_fhir({"resourceType": "Task", "id": "1", "status": 5, "priority": "soon",
                          "for": {"reference": "Group/2"}, "focus": 17})
    assert t is not None
    assert t.status == "requested" and t.priority == "routine"
    assert t.patient_id is None and t.focus_id is None
    assert len(t.problems) == 3
    assert m.task_from_fhir({"resourceType": "Task"}) is None


@pytest.mark.parametrize("raw,expected", [
    ("draft", "requested"), ("ready", "received"), ("rejected", "cancelled"),
    ("failed", "cancelled"), ("entered-in-error", "cancelled"), ("in-progress", "in-progress"),
])
def test_task_status_fallbacks(raw: str, expected: str) -> None:
    t = m.task_from_fhir({"id": "1", "status": raw})
    assert t is not None and t.status == expected


def test_owner_with_only_an_identifier_or_display() -> None:
    t = m.task_from_fhir({"id": "1", "owner": {"identifier": {"system": m.USER_SYSTEM,
                                                              "value": "dr.ade"}}})
    assert t is not None and t.owner == f"{m.USER_SYSTEM}|dr.ade"
    assert t.owner == m.owner_key(m.practitioner_ref("dr.ade"))
    t = m.task_from_fhir({"id": "1", "owner": {"display": "Front desk"}})
    assert t is not None and t.owner == t.owner_display == "Front desk"


def test_patient_names_dates_and_gender() -> None:
    p = m.patient_from_fhir({
        "id": "3", "identifier": [{"system": "urn:mrn", "value": "MRN-1"}],
        "name": [{"use": "nickname", "given": ["Bobby"]},
                 {"use": "official", "family": "Okafor", "given": ["Ada", "Ngozi"]}],
        "birthDate": "1971-04", "gender": "female", "extension": [{"url": "x"}]})
    assert (p.family_name, p.given_name, p.identifier, p.sex) == ("Okafor", "Ada Ngozi",
                                                                 "MRN-1", "female")
    assert p.birth_date == date(1971, 4, 1)
    odd = m.patient_from_fhir({"id": "4", "name": "Bob", "gender": "robot",
                               "birthDate": "not a date"})
    assert odd.sex == "unknown" and odd.birth_date is None
    assert odd.problems == ("the patient's name is missing",)
    assert m.patient_from_fhir({"name": [{"text": "Ada Okafor"}]}).family_name == "Ada Okafor"


def test_service_request_complaint_site_and_description() -> None:
    sr = m.service_request_from_fhir({
        "id": "7", "subject": {"reference": "Patient/3"},
        "reasonCode": [{"text": "Changing mole"}, {"coding": [{"display": "Itch"}]}],
        "bodySite": [{"text": "Left forearm", "coding": [
            {"system": "http://other", "code": "x"},
            {"system": m.SNOMED, "code": "66480008", "display": "Left forearm"}]}],
        "note": [{"text": "It grew."}, {"text": "It itches at night."}],
        "authoredOn": "2026-11-20"})
    assert sr.chief_complaint == "Changing mole; Itch"
    assert (sr.body_site, sr.body_site_code) == ("Left forearm", "66480008")
    assert sr.description == "It grew.\n\nIt itches at night."
    assert sr.authored_on == datetime(2026, 11, 20, tzinfo=UTC)
    assert m.service_request_from_fhir({"id": "8"}).problems == (
        "the portal sent no chief complaint",)


def test_media_attachment() -> None:
    media, why = m.media_from_fhir({
        "id": "5", "status": "completed", "createdDateTime": "2026-11-20T09:00:00Z",
        "bodySite": {"text": "Forearm"}, "note": [{"text": "with ruler"}],
        "content": {"contentType": "image/jpeg; charset=binary", "url": "Binary/9",
                    "size": 1234, "hash": "abc=", "title": "Close-up"}})
    assert why is None and media is not None
    a = media.attachment
    assert (a.url, a.content_type, a.size, a.sha1) == ("Binary/9", "image/jpeg", 1234, "abc=")
    assert (media.title, media.body_site, media.note) == ("Close-up", "Forearm", "with ruler")
    assert media.taken_at == datetime(2026, 11, 20, 9, tzinfo=UTC)


@pytest.mark.parametrize("res,expected", [
    ({"id": "1", "status": "entered-in-error", "content": {"url": "Binary/1"}}, None),
    ({"id": "1", "content": {}}, "a photo without a link to its image"),
    ({"id": "1", "content": {"url": "Binary/1", "contentType": "application/pdf"}},
     "an attachment that is not a photo (application/pdf)"),
    ({"content": {"url": "Binary/1"}}, "a photo record without an id"),
])
def test_media_that_is_not_a_usable_photo(res: dict[str, Any], expected: str | None) -> None:
    media, why = m.media_from_fhir(res)
    assert media is None and why == expected


def test_media_size_tolerance() -> None:
    for size, expected in (("2048", 2048), (-1, None), (True, None), ("big", None)):
        media, _ = m.media_from_fhir({"id": "1", "content": {"url": "B/1", "size": size}})
        assert media is not None and media.attachment.size == expected


def test_questionnaire_nesting_and_answer_types() -> None:
    q = m.questionnaire_from_fhir({
        "id": "qr1", "authored": "2026-11-20T10:00:00Z",
        "questionnaire": "http://portal/Questionnaire/skin-intake|2",
        "item": [
            {"linkId": "g", "text": "History", "item": [
                {"linkId": "d", "text": "Duration", "answer": [{"valueString": "3 weeks"}]},
                {"linkId": "b", "text": "Bled?", "answer": [{"valueBoolean": False}]},
                {"linkId": "n", "text": "Itch", "answer": [{"valueInteger": 7}]},
                {"linkId": "w", "text": "Weight", "answer": [
                    {"valueQuantity": {"value": 71.5, "unit": "kg"}}]},
                {"linkId": "o", "text": "Onset", "answer": [{"valueDate": "2026-11-01"}]},
                {"linkId": "c", "text": "Type", "answer": [{"valueCoding": {
                    "system": m.SNOMED, "code": "1", "display": "Oily"}}]},
                {"linkId": "x", "text": "Other", "answer": [{"valueDateTime": "2026-11-02"}]},
            ]},
            {"linkId": "meds", "text": "Medicines?", "answer": [
                {"valueBoolean": True, "item": [
                    {"linkId": "meds.which", "text": "Which?", "answer": [
                        {"valueString": "Hydrocortisone"}]}]}]},
            {"text": "no link id", "answer": [{"valueSomethingNew": 1}]},
            "not an item",
        ]})
    assert q.portal_id == "qr1" and q.title == "Skin intake"
    group, meds, nolink = q.items
    types = [(i.link_id, i.answers[0].type, i.answers[0].value) for i in group.items]
    assert types == [("d", "string", "3 weeks"), ("b", "boolean", False),
                     ("n", "integer", 7), ("w", "string", "71.5 kg"),
                     ("o", "date", date(2026, 11, 1)), ("c", "coding", "Oily"),
                     ("x", "string", "2026-11-02")]
    assert group.items[5].answers[0].code == "1"
    assert meds.items[0].link_id == "meds.which"  # item nested under an answer
    assert nolink.link_id == "item-3" and nolink.answers == ()


def test_communication_direction_and_payload() -> None:
    inbound = m.communication_from_fhir({
        "id": "c1", "sender": {"reference": "Patient/3", "display": "Ada"},
        "sent": "2026-11-20T10:00:00Z",
        "payload": [{"contentString": "Here is a photo"},
                    {"contentAttachment": {"title": "ruler.jpg"}}]})
    assert inbound is not None and inbound.direction == "inbound"
    assert inbound.text == "Here is a photo\n\n[ruler.jpg]" and inbound.sender == "Ada"
    team = m.communication_from_fhir({"id": "c2", "sender": {"reference": "Practitioner/1"},
                                      "payload": [{"contentString": "Thanks"}]})
    assert team is not None and team.direction == "outbound" and team.sent_at is None
    ours = m.communication_from_fhir({"id": "c3", "identifier": [m.outbox_identifier("u-1")],
                                      "payload": [{"contentString": "x"}]})
    assert ours is not None and ours.outbox_id == "u-1" and ours.direction == "outbound"
    carer = m.communication_from_fhir({"sender": {"reference": "RelatedPerson/2"},
                                       "payload": [{"contentString": "x"}]})
    assert carer is not None and carer.direction == "inbound"
    assert m.communication_from_fhir({"id": "c4", "payload": []}) is None


def test_allergy() -> None:
    a = m.allergy_from_fhir({
        "id": "a1", "code": {"coding": [{"system": m.SNOMED, "code": "91936005",
                                         "display": "Penicillin allergy"}]},
        "clinicalStatus": {"coding": [{"code": "active"}]}, "criticality": "high",
        "reaction": [{"manifestation": [{"text": "Hives"}], "description": "after a dose"}],
        "recordedDate": "2020-01-01"})
    assert a is not None
    assert (a.substance, a.code, a.clinical_status, a.criticality) == (
        "Penicillin allergy", "91936005", "active", "high")
    assert a.reaction == "Hives; after a dose"
    assert m.allergy_from_fhir({"id": "a2"}) is None


@pytest.mark.parametrize("ref,rtype,expected", [
    ({"reference": "Patient/1"}, "Patient", "1"),
    ({"reference": "http://x/fhir/Patient/1/_history/3"}, "Patient", "1"),
    ({"reference": "Patient/1"}, "Task", None),
    ({"reference": "#contained"}, "Patient", None),
    ({"display": "Ada"}, "Patient", None),
    ("Patient/1", "Patient", "1"),
    (None, "Patient", None),
    (42, "Patient", None),
])
def test_reference_id(ref: Any, rtype: str, expected: str | None) -> None:
    assert m.reference_id(ref, rtype) == expected


def test_instants() -> None:
    assert m.parse_instant("2026") == datetime(2026, 1, 1, tzinfo=UTC)
    assert m.parse_instant("2026-11-29T10:00:00") == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert m.parse_instant("yesterday") is None and m.parse_instant(None) is None
    assert m.format_instant(datetime(2026, 11, 29, 10, 0, 5, 999, tzinfo=UTC)) == (
        "2026-11-29T10:00:05Z")


# ---------------------------------------------------------------- never a crash

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from([
        "id", "status", "meta", "versionId", "lastUpdated", "identifier", "value", "system",
        "reference", "display", "text", "coding", "code", "name", "family", "given",
        "birthDate", "gender", "reasonCode", "bodySite", "note", "content", "url", "size",
        "hash", "contentType", "data", "item", "linkId", "answer", "valueString",
        "valueBoolean", "valueInteger", "valueDate", "valueCoding", "valueQuantity",
        "payload", "contentString", "sender", "sent", "owner", "focus", "for", "priority",
        "authoredOn", "createdDateTime", "reaction", "manifestation", "clinicalStatus",
        "businessStatus", "recipient", "questionnaire", "authored"]), children, max_size=6),
    max_leaves=25)


@settings(max_examples=250, deadline=None)
@given(res=st.dictionaries(st.sampled_from(["id", "status", "meta", "identifier", "name",
                                            "content", "item", "payload", "sender", "owner",
                                            "focus", "for", "reasonCode", "bodySite", "code",
                                            "note", "birthDate", "reaction", "recipient"]),
                           json_values, max_size=8))
def test_mapping_never_raises_on_any_json(res: dict[str, Any]) -> None:
    m.task_from_fhir(res)
    m.patient_from_fhir(res)
    m.service_request_from_fhir(res)
    m.media_from_fhir(res)
    m.questionnaire_from_fhir(res)
    m.communication_from_fhir(res)
    m.allergy_from_fhir(res)
