"""FHIR R4 ⇄ domain mapping (PORTAL_CONTRACT.md).

Incoming (portal → workstation) is tolerant: unknown fields are ignored, missing
optional fields are fine, values of the wrong JSON type are treated as missing.
Required parts that are missing or malformed never raise here: they are listed in
``problems`` so the sync stores the case flagged "incomplete from portal" with the
reason. The ``*In`` dataclasses are plain values; the questionnaire ones satisfy the
``QuestionLike``/``AnswerLike`` protocols of :mod:`derm_workstation.core.intake`.

Outgoing (workstation → portal) builders return JSON-ready dicts that are valid
FHIR R4 (the tests check each with the ``fhir.resources`` R4B models). Every
resource the workstation creates carries the outbox identifier
(:func:`outbox_identifier`) so a conditional create never duplicates it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from derm_workstation.core.vocabulary import CASE_STATUSES, PRIORITY_RANK
from derm_workstation.portal.client import AttachmentRef

OUTBOX_SYSTEM = "urn:derm-workstation:outbox"
USER_SYSTEM = "urn:derm-workstation:user"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: FHIR Task statuses outside the contract's list, mapped to the nearest case status.
_TASK_STATUS_FALLBACK = {
    "draft": "requested",
    "ready": "received",
    "rejected": "cancelled",
    "failed": "cancelled",
    "entered-in-error": "cancelled",
}
_SEXES = {"male": "male", "female": "female", "other": "other", "unknown": "unknown"}
#: Media that do not show a usable photo.
_SKIP_MEDIA_STATUS = {"entered-in-error", "not-done", "stopped"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/heic", "image/heif", "image/webp",
               "image/tiff")


# ----------------------------------------------------------------------------- helpers


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _texts(values: Any, key: str = "text") -> list[str]:
    return [t for t in (_str(_obj(v).get(key)) for v in _list(values)) if t]


def concept_text(cc: Any) -> str | None:
    """A CodeableConcept's text, else its first coding's display, else its code."""
    c = _obj(cc)
    text = _str(c.get("text"))
    if text:
        return text
    for coding in _list(c.get("coding")):
        disp = _str(_obj(coding).get("display"))
        if disp:
            return disp
    for coding in _list(c.get("coding")):
        code = _str(_obj(coding).get("code"))
        if code:
            return code
    return None


def concept_coding(cc: Any, system: str | None = None) -> tuple[str | None, str | None]:
    """(system, code) of the first coding (of ``system`` when given)."""
    for coding in _list(_obj(cc).get("coding")):
        co = _obj(coding)
        sys_, code = _str(co.get("system")), _str(co.get("code"))
        if code and (system is None or sys_ == system):
            return sys_, code
    return None, None


def parse_instant(value: Any) -> datetime | None:
    """A FHIR instant/dateTime (also partial: YYYY, YYYY-MM, YYYY-MM-DD) as aware UTC."""
    text = _str(value)
    if not text:
        return None
    try:
        if len(text) == 4 and text.isdigit():
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7 and text[4] == "-":
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_date(value: Any) -> date | None:
    text = _str(value)
    if not text:
        return None
    try:
        if len(text) == 4 and text.isdigit():
            return date(int(text), 1, 1)
        if len(text) == 7 and text[4] == "-":
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def format_instant(dt: datetime) -> str:
    """An aware datetime as a FHIR instant in UTC, e.g. ``2026-11-29T09:00:00Z``."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def reference_id(ref: Any, resource_type: str) -> str | None:
    """The id in a Reference to ``resource_type`` (relative, absolute or versioned)."""
    text = _str(_obj(ref).get("reference")) if isinstance(ref, dict) else _str(ref)
    if not text or text.startswith("#"):
        return None
    path = urlsplit(text).path if "://" in text else text
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def reference_text(ref: Any) -> str | None:
    """A comparable key for a Reference: its reference, else identifier, else display."""
    r = _obj(ref)
    text = _str(r.get("reference"))
    if text:
        return text
    ident = _obj(r.get("identifier"))
    value = _str(ident.get("value"))
    if value:
        system = _str(ident.get("system"))
        return f"{system}|{value}" if system else value
    return _str(r.get("display"))


def _identifier_value(res: dict[str, Any], skip_system: str | None = OUTBOX_SYSTEM) -> str | None:
    for ident in _list(res.get("identifier")):
        i = _obj(ident)
        if skip_system and _str(i.get("system")) == skip_system:
            continue
        v = _str(i.get("value"))
        if v:
            return v
    return None


def outbox_id_of(res: dict[str, Any]) -> str | None:
    """The outbox uuid when the resource was created by a workstation."""
    for ident in _list(res.get("identifier")):
        i = _obj(ident)
        if _str(i.get("system")) == OUTBOX_SYSTEM:
            return _str(i.get("value"))
    return None


def _meta(res: dict[str, Any]) -> tuple[str | None, str | None]:
    m = _obj(res.get("meta"))
    return _str(m.get("versionId")), _str(m.get("lastUpdated"))


# ----------------------------------------------------------------------------- incoming


@dataclass(frozen=True)
class PatientIn:
    portal_id: str | None
    identifier: str | None
    family_name: str
    given_name: str
    birth_date: date | None
    sex: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskIn:
    portal_id: str
    version: str | None
    last_updated: str | None
    case_number: str | None
    status: str
    priority: str
    authored_on: datetime | None
    patient_id: str | None
    focus_id: str | None
    owner: str | None
    owner_display: str | None
    business_status: str | None
    note: str | None
    problems: tuple[str, ...] = ()

    @property
    def last_updated_at(self) -> datetime | None:
        return parse_instant(self.last_updated)


@dataclass(frozen=True)
class ServiceRequestIn:
    portal_id: str | None
    chief_complaint: str
    body_site: str
    body_site_code: str | None
    description: str
    authored_on: datetime | None
    patient_id: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class MediaIn:
    portal_id: str
    status: str | None
    attachment: AttachmentRef
    title: str
    body_site: str
    taken_at: datetime | None
    note: str


@dataclass(frozen=True)
class AnswerIn:
    type: str
    value: str | bool | int | float | date
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class QuestionIn:
    link_id: str
    text: str
    answers: tuple[AnswerIn, ...] = ()
    items: tuple[QuestionIn, ...] = ()


@dataclass(frozen=True)
class QuestionnaireIn:
    portal_id: str | None
    title: str
    authored_at: datetime | None
    items: tuple[QuestionIn, ...]


@dataclass(frozen=True)
class MessageIn:
    portal_id: str | None
    direction: str
    text: str
    sent_at: datetime | None
    sender: str | None
    outbox_id: str | None


@dataclass(frozen=True)
class AllergyIn:
    portal_id: str | None
    substance: str
    system: str | None
    code: str | None
    clinical_status: str | None
    criticality: str | None
    reaction: str
    recorded_at: datetime | None


def task_from_fhir(res: dict[str, Any]) -> TaskIn | None:
    """A Task; None only when it has no id (it cannot be stored or referred to)."""
    rid = _str(res.get("id"))
    if not rid:
        return None
    problems: list[str] = []
    version, last_updated = _meta(res)
    raw_status = _str(res.get("status"))
    if raw_status in CASE_STATUSES:
        status = raw_status
    elif raw_status in _TASK_STATUS_FALLBACK:
        status = _TASK_STATUS_FALLBACK[raw_status]
    else:
        status = "requested"
        problems.append(
            "the portal gave no valid status" if raw_status is None
            else f"the portal gave an unknown status '{raw_status[:40]}'"
        )
    priority = _str(res.get("priority"))
    if priority not in PRIORITY_RANK:
        priority = "routine"
    patient_id = reference_id(res.get("for"), "Patient")
    if patient_id is None:
        problems.append("the portal sent no patient for this case")
    focus_id = reference_id(res.get("focus"), "ServiceRequest")
    if focus_id is None:
        problems.append("the portal sent no consult request (ServiceRequest) for this case")
    owner = res.get("owner")
    business = concept_text(res.get("businessStatus"))
    notes = _texts(res.get("note"))
    return TaskIn(
        portal_id=rid,
        version=version,
        last_updated=last_updated,
        case_number=_identifier_value(res),
        status=status,
        priority=priority,
        authored_on=parse_instant(res.get("authoredOn")),
        patient_id=patient_id,
        focus_id=focus_id,
        owner=reference_text(owner) if isinstance(owner, dict) else None,
        owner_display=(_str(_obj(owner).get("display")) or reference_text(owner))
        if isinstance(owner, dict) else None,
        business_status=business,
        note="\n\n".join(notes) or None,
        problems=tuple(problems),
    )


def patient_from_fhir(res: dict[str, Any]) -> PatientIn:
    problems: list[str] = []
    names = [_obj(n) for n in _list(res.get("name"))]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    family = _str(name.get("family")) or ""
    given = " ".join(g for g in (_str(x) for x in _list(name.get("given"))) if g)
    if not family and not given:
        text = _str(name.get("text"))
        if text:
            family = text
        else:
            problems.append("the patient's name is missing")
    birth = parse_date(res.get("birthDate"))
    gender = _str(res.get("gender"))
    return PatientIn(
        portal_id=_str(res.get("id")),
        identifier=_identifier_value(res, skip_system=None),
        family_name=family[:200],
        given_name=given[:200],
        birth_date=birth,
        sex=_SEXES.get(gender or "", "unknown"),
        problems=tuple(problems),
    )


def service_request_from_fhir(res: dict[str, Any]) -> ServiceRequestIn:
    problems: list[str] = []
    reasons = [t for t in (concept_text(r) for r in _list(res.get("reasonCode"))) if t]
    if not reasons:
        problems.append("the portal sent no chief complaint")
    sites = _list(res.get("bodySite"))
    site = concept_text(sites[0]) if sites else None
    _, site_code = concept_coding(sites[0], SNOMED) if sites else (None, None)
    notes = _texts(res.get("note"))
    return ServiceRequestIn(
        portal_id=_str(res.get("id")),
        chief_complaint="; ".join(reasons)[:500],
        body_site=(site or "")[:200],
        body_site_code=site_code[:32] if site_code else None,
        description="\n\n".join(notes),
        authored_on=parse_instant(res.get("authoredOn")),
        patient_id=reference_id(res.get("subject"), "Patient"),
        problems=tuple(problems),
    )


def media_from_fhir(res: dict[str, Any]) -> tuple[MediaIn | None, str | None]:
    """(photo, None), or (None, why it is not a usable photo)."""
    rid = _str(res.get("id"))
    if not rid:
        return None, "a photo record without an id"
    status = _str(res.get("status"))
    if status in _SKIP_MEDIA_STATUS:
        return None, None  # withdrawn on the portal: not a problem, just not shown
    content = _obj(res.get("content"))
    ctype = (_str(content.get("contentType")) or "").lower().split(";")[0].strip() or None
    url = _str(content.get("url"))
    data = _str(content.get("data"))
    if not url and not data:
        return None, "a photo without a link to its image"
    if ctype and not ctype.startswith("image/"):
        return None, f"an attachment that is not a photo ({ctype[:40]})"
    size = content.get("size")
    if isinstance(size, str) and size.isdigit():  # R5 uses integer64, sent as a string
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    att = AttachmentRef(url=url, data=data, content_type=ctype, size=size,
                        sha1=_str(content.get("hash")))
    notes = _texts(res.get("note"))
    return MediaIn(
        portal_id=rid,
        status=status,
        attachment=att,
        title=(_str(content.get("title")) or "")[:200],
        body_site=(concept_text(res.get("bodySite")) or "")[:200],
        taken_at=parse_instant(res.get("createdDateTime"))
        or parse_instant(_obj(res.get("createdPeriod")).get("start"))
        or parse_instant(content.get("creation")),
        note="\n".join(notes),
    ), None


def _answer(a: dict[str, Any]) -> AnswerIn | None:
    if "valueBoolean" in a and isinstance(a["valueBoolean"], bool):
        return AnswerIn("boolean", a["valueBoolean"])
    if "valueInteger" in a and isinstance(a["valueInteger"], int) \
            and not isinstance(a["valueInteger"], bool):
        return AnswerIn("integer", a["valueInteger"])
    if "valueDecimal" in a and isinstance(a["valueDecimal"], int | float) \
            and not isinstance(a["valueDecimal"], bool):
        return AnswerIn("decimal", float(a["valueDecimal"]))
    if "valueDate" in a:
        d = parse_date(a["valueDate"])
        if d is not None:
            return AnswerIn("date", d)
    if "valueCoding" in a:
        co = _obj(a["valueCoding"])
        disp = _str(co.get("display")) or _str(co.get("code"))
        if disp:
            return AnswerIn("coding", disp, _str(co.get("system")), _str(co.get("code")))
    if "valueQuantity" in a:
        q = _obj(a["valueQuantity"])
        v = q.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool):
            unit = _str(q.get("unit")) or _str(q.get("code")) or ""
            return AnswerIn("string", f"{v:g} {unit}".strip())
    if "valueReference" in a:
        disp = _str(_obj(a["valueReference"]).get("display"))
        if disp:
            return AnswerIn("string", disp)
    if "valueAttachment" in a:
        title = _str(_obj(a["valueAttachment"]).get("title")) or "attachment"
        return AnswerIn("string", f"[{title}]")
    for key in ("valueString", "valueDateTime", "valueTime", "valueUri"):
        text = _str(a.get(key))
        if text:
            return AnswerIn("string", text)
    return None


def _questions(items: Any, depth: int = 0) -> tuple[QuestionIn, ...]:
    if depth > 20:
        return ()
    out: list[QuestionIn] = []
    for raw in _list(items):
        it = _obj(raw)
        if not it:
            continue
        answers: list[AnswerIn] = []
        nested: list[QuestionIn] = []
        for a in _list(it.get("answer")):
            ans = _answer(_obj(a))
            if ans is not None:
                answers.append(ans)
            nested.extend(_questions(_obj(a).get("item"), depth + 1))
        nested.extend(_questions(it.get("item"), depth + 1))
        link = _str(it.get("linkId")) or f"item-{len(out) + 1}"
        out.append(QuestionIn(link[:200], _str(it.get("text")) or link, tuple(answers),
                              tuple(nested)))
    return tuple(out)


def questionnaire_from_fhir(res: dict[str, Any]) -> QuestionnaireIn:
    title = "Intake questionnaire"
    q = res.get("questionnaire")
    if isinstance(q, str) and q.strip():
        name = q.rstrip("/").split("/")[-1].split("|")[0]
        if name and not name.isdigit():
            title = name.replace("-", " ").replace("_", " ").strip().capitalize()[:200]
    return QuestionnaireIn(
        portal_id=_str(res.get("id")),
        title=title,
        authored_at=parse_instant(res.get("authored")),
        items=_questions(res.get("item")),
    )


def communication_from_fhir(res: dict[str, Any]) -> MessageIn | None:
    """A message; None when it carries no text at all."""
    parts: list[str] = []
    for p in _list(res.get("payload")):
        po = _obj(p)
        text = _str(po.get("contentString"))
        if text:
            parts.append(text)
        elif "contentAttachment" in po:
            title = _str(_obj(po["contentAttachment"]).get("title")) or "attachment"
            parts.append(f"[{title}]")
        elif "contentReference" in po:
            disp = _str(_obj(po["contentReference"]).get("display"))
            parts.append(f"[{disp or 'reference'}]")
    if not parts:
        return None
    outbox_id = outbox_id_of(res)
    sender = res.get("sender")
    to_patient = any(reference_id(r, "Patient") for r in _list(res.get("recipient")))
    if outbox_id:
        direction = "outbound"  # sent by a workstation
    elif isinstance(sender, dict) and sender:
        from_patient = (reference_id(sender, "Patient") or reference_id(sender, "RelatedPerson")
                        or _str(sender.get("type")) in ("Patient", "RelatedPerson"))
        direction = "inbound" if from_patient else "outbound"
    else:
        direction = "outbound" if to_patient else "inbound"
    return MessageIn(
        portal_id=_str(res.get("id")),
        direction=direction,
        text="\n\n".join(parts),
        sent_at=parse_instant(res.get("sent")) or parse_instant(res.get("received")),
        sender=(_str(_obj(sender).get("display")) or reference_text(sender))
        if isinstance(sender, dict) else None,
        outbox_id=outbox_id,
    )


def allergy_from_fhir(res: dict[str, Any]) -> AllergyIn | None:
    substance = concept_text(res.get("code"))
    if not substance:
        return None
    system, code = concept_coding(res.get("code"))
    reactions: list[str] = []
    for r in _list(res.get("reaction")):
        ro = _obj(r)
        for m in _list(ro.get("manifestation")):
            t = concept_text(m)
            if t:
                reactions.append(t)
        d = _str(ro.get("description"))
        if d:
            reactions.append(d)
    _, clinical = concept_coding(res.get("clinicalStatus"))
    return AllergyIn(
        portal_id=_str(res.get("id")),
        substance=substance[:500],
        system=system[:200] if system else None,
        code=code[:100] if code else None,
        clinical_status=clinical[:32] if clinical else None,
        criticality=(_str(res.get("criticality")) or None),
        reaction="; ".join(reactions),
        recorded_at=parse_instant(res.get("recordedDate")),
    )


# ----------------------------------------------------------------------------- outgoing


def outbox_identifier(outbox_id: str) -> dict[str, str]:
    return {"system": OUTBOX_SYSTEM, "value": outbox_id}


def if_none_exist(outbox_id: str) -> str:
    """The ``If-None-Exist`` header value for a resource created from an outbox row."""
    return f"identifier={OUTBOX_SYSTEM}|{outbox_id}"


def practitioner_ref(username: str, reference: str | None = None) -> dict[str, Any]:
    """A Reference to the clinician: the configured one, or a logical one by user name."""
    if reference:
        return {"reference": reference, "display": username}
    return {"type": "Practitioner",
            "identifier": {"system": USER_SYSTEM, "value": username},
            "display": username}


def owner_key(ref: dict[str, Any]) -> str | None:
    """How an owner Reference is compared (same as :func:`reference_text` of incoming)."""
    return reference_text(ref)


def _with_identifier(resource: dict[str, Any], outbox_id: str) -> dict[str, Any]:
    idents = [i for i in _list(resource.get("identifier"))
              if _obj(i).get("system") != OUTBOX_SYSTEM]
    resource["identifier"] = [*idents, outbox_identifier(outbox_id)]
    return resource


def task_update(current: dict[str, Any], *, status: str, owner: dict[str, Any] | None,
                business_status: str | None = None,
                outputs: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The portal's Task with a new status/owner/businessStatus; everything else kept."""
    if status not in ("accepted", "in-progress", "on-hold", "completed"):
        raise ValueError(f"the workstation does not set Task.status '{status}'")
    task = copy.deepcopy(current)
    task["status"] = status
    if owner is not None:
        task["owner"] = owner
    if business_status:
        task["businessStatus"] = {"text": business_status}
    if outputs:
        task["output"] = [*_list(task.get("output")), *outputs]
    task.setdefault("intent", "order")
    return task


def communication_to_patient(outbox_id: str, *, service_request_id: str, patient_id: str,
                             sender: dict[str, Any], text: str, sent: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "sender": sender,
        "recipient": [{"reference": f"Patient/{patient_id}"}],
        "payload": [{"contentString": text}],
        "sent": format_instant(sent),
    }


@dataclass(frozen=True)
class CodeIn:
    """A code for an outgoing CodeableConcept."""

    text: str
    system: str | None = None
    code: str | None = None
    display: str | None = None

    def concept(self) -> dict[str, Any]:
        cc: dict[str, Any] = {"text": self.text}
        if self.code:
            coding: dict[str, Any] = {"code": self.code}
            if self.system:
                coding["system"] = self.system
            coding["display"] = self.display or self.text
            cc["coding"] = [coding]
        return cc


def diagnostic_report(outbox_id: str, *, service_request_id: str, patient_id: str,
                      performer: dict[str, Any], issued: datetime, conclusion: str,
                      conclusion_codes: Sequence[CodeIn] = (),
                      key_media_ids: Sequence[str] = (),
                      pdf_url: str | None = None, pdf_data_b64: str | None = None,
                      pdf_title: str = "Consult report") -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "code": {"text": "Teledermatology consult"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "issued": format_instant(issued),
        "performer": [performer],
        "conclusion": conclusion,
    }
    if conclusion_codes:
        report["conclusionCode"] = [c.concept() for c in conclusion_codes]
    if key_media_ids:
        report["media"] = [{"link": {"reference": f"Media/{m}"}} for m in key_media_ids]
    if pdf_url or pdf_data_b64:
        form: dict[str, Any] = {"contentType": "application/pdf", "title": pdf_title}
        if pdf_url:
            form["url"] = pdf_url
        if pdf_data_b64:
            form["data"] = pdf_data_b64
        report["presentedForm"] = [form]
    return report


def key_image_media(outbox_id: str, *, service_request_id: str, patient_id: str,
                    binary_id: str, content_type: str, size: int, sha1_b64: str,
                    title: str = "", body_site: str | None = None,
                    taken: datetime | None = None, operator: dict[str, Any] | None = None,
                    note: str | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {
        "resourceType": "Media",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "completed",
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": {"contentType": content_type, "url": f"Binary/{binary_id}", "size": size,
                    "hash": sha1_b64},
    }
    if title:
        media["content"]["title"] = title
    if body_site:
        media["bodySite"] = {"text": body_site}
    if taken:
        media["createdDateTime"] = format_instant(taken)
    if operator:
        media["operator"] = operator
    if note:
        media["note"] = [{"text": note}]
    return media


def medication_request(outbox_id: str, *, service_request_id: str, patient_id: str,
                       requester: dict[str, Any], authored: datetime, medication: CodeIn,
                       dosage_text: str, quantity: float | None = None,
                       quantity_unit: str | None = None,
                       repeats: int | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": medication.concept(),
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": format_instant(authored),
        "requester": requester,
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "dosageInstruction": [{"text": dosage_text}],
    }
    dispense: dict[str, Any] = {}
    if quantity is not None:
        dispense["quantity"] = {"value": quantity, **({"unit": quantity_unit}
                                                        if quantity_unit else {})}
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    if dispense:
        req["dispenseRequest"] = dispense
    return req


def referral_request(outbox_id: str, *, service_request_id: str, patient_id: str,
                     requester: dict[str, Any], what: str, priority: str = "routine",
                     reason: str | None = None,
                     authored: datetime | None = None) -> dict[str, Any]:
    if priority not in PRIORITY_RANK:
        raise ValueError(f"unknown priority '{priority}'")
    req: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": "3457005",
                                  "display": "Patient referral"}], "text": "referral"}],
        "code": {"text": what},
        "priority": priority,
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": requester,
    }
    if reason:
        req["reasonCode"] = [{"text": reason}]
    if authored:
        req["authoredOn"] = format_instant(authored)
    return req


def follow_up_appointment(outbox_id: str, *, service_request_id: str, patient_id: str,
                          practitioner: dict[str, Any], service: str, start: datetime,
                          end: datetime, comment: str | None = None) -> dict[str, Any]:
    appt: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "proposed",
        "serviceType": [{"text": service}],
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "needs-action"},
            {"actor": practitioner, "status": "needs-action"},
        ],
        "requestedPeriod": [{"start": format_instant(start), "end": format_instant(end)}],
    }
    if comment:
        appt["comment"] = comment
    return appt


@dataclass(frozen=True)
class ComponentIn:
    code: CodeIn
    value: float
    unit: str | None = None


def score_observation(outbox_id: str, *, service_request_id: str, patient_id: str,
                      code: CodeIn, value: float, effective: datetime,
                      unit: str | None = None, performer: dict[str, Any] | None = None,
                      components: Sequence[ComponentIn] = ()) -> dict[str, Any]:
    def quantity(v: float, u: str | None) -> dict[str, Any]:
        q: dict[str, Any] = {"value": v}
        if u:
            q["unit"] = u
        return q

    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [outbox_identifier(outbox_id)],
        "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "code": code.concept(),
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": format_instant(effective),
        "valueQuantity": quantity(value, unit),
    }
    if performer:
        obs["performer"] = [performer]
    if components:
        obs["component"] = [{"code": c.code.concept(), "valueQuantity": quantity(c.value, c.unit)}
                            for c in components]
    return obs


def with_outbox_identifier(resource: dict[str, Any], outbox_id: str) -> dict[str, Any]:
    """A copy of ``resource`` carrying the outbox identifier (any earlier one replaced)."""
    return _with_identifier(copy.deepcopy(resource), outbox_id)


@dataclass
class Problems:
    """Reasons a case is incomplete, collected while mapping and fetching."""

    items: list[str] = field(default_factory=list)

    def add(self, *reasons: str) -> None:
        for r in reasons:
            if r and r not in self.items:
                self.items.append(r)

    def text(self) -> str | None:
        if not self.items:
            return None
        s = "; ".join(self.items)
        return s[0].upper() + s[1:] + "."


__all__ = [
    "IMAGE_TYPES",
    "LOINC",
    "OUTBOX_SYSTEM",
    "RXNORM",
    "SNOMED",
    "USER_SYSTEM",
    "AllergyIn",
    "AnswerIn",
    "CodeIn",
    "ComponentIn",
    "MediaIn",
    "MessageIn",
    "PatientIn",
    "Problems",
    "QuestionIn",
    "QuestionnaireIn",
    "ServiceRequestIn",
    "TaskIn",
    "allergy_from_fhir",
    "communication_from_fhir",
    "communication_to_patient",
    "concept_text",
    "diagnostic_report",
    "follow_up_appointment",
    "format_instant",
    "if_none_exist",
    "key_image_media",
    "media_from_fhir",
    "medication_request",
    "outbox_id_of",
    "outbox_identifier",
    "owner_key",
    "parse_date",
    "parse_instant",
    "patient_from_fhir",
    "practitioner_ref",
    "questionnaire_from_fhir",
    "reference_id",
    "reference_text",
    "referral_request",
    "score_observation",
    "service_request_from_fhir",
    "task_from_fhir",
    "task_update",
    "with_outbox_identifier",
]
