"""Shared builders for the core tests: real images, questionnaires, cases."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from derm_workstation.core import intake
from derm_workstation.core.models import Case, Patient
from derm_workstation.core.users import SYSTEM, Actor

REPO_ROOT = Path(__file__).resolve().parents[2]


def png_bytes(
    width: int = 16, height: int = 12, color: tuple[int, int, int] = (200, 80, 60)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(
    width: int = 40,
    height: int = 20,
    color: tuple[int, int, int] = (180, 120, 90),
    orientation: int | None = None,
) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (width, height), color)
    if orientation is None:
        im.save(buf, "JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@dataclass(frozen=True)
class Ans:
    """Satisfies intake.AnswerLike."""

    type: str
    value: Any
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Q:
    """Satisfies intake.QuestionLike."""

    link_id: str
    text: str
    answers: tuple[Ans, ...] = ()
    items: tuple[Q, ...] = field(default=())


def three_level_questionnaire() -> list[Q]:
    """A questionnaire nested three deep, with deliberately non-alphabetical order."""
    return [
        Q("zeta", "How long have you had it?", (Ans("string", "3 weeks"),)),
        Q(
            "history",
            "History",
            items=(
                Q(
                    "meds",
                    "Medications",
                    (Ans("boolean", True),),
                    items=(
                        Q("meds.name", "Which ones?", (Ans("string", "ibuprofen"),
                                                       Ans("string", "cetirizine"))),
                        Q("meds.dose", "Daily dose (mg)", (Ans("integer", 400),)),
                        Q("meds.since", "Since", (Ans("date", date(2024, 2, 29)),)),
                    ),
                ),
                Q("allergy", "Allergies", (Ans("boolean", False),)),
            ),
        ),
        Q("alpha", "Itch score", (Ans("decimal", 7.5),)),
        Q("coded", "Skin type", (Ans("coding", "Type II", "http://snomed.info/sct", "123"),)),
    ]


def add_patient(
    s: Session,
    family: str = "Smith",
    given: str = "Ann",
    *,
    identifier: str | None = None,
    birth_date: date | None = date(1980, 5, 17),
    sex: str = "female",
    portal_id: str | None = None,
) -> Patient:
    return intake.upsert_patient(
        s,
        identifier=identifier,
        family_name=family,
        given_name=given,
        birth_date=birth_date,
        sex=sex,
        portal_id=portal_id,
    )


def add_case(
    s: Session,
    patient: Patient,
    submitted_at: datetime,
    *,
    actor: Actor = SYSTEM,
    status: str = "requested",
    priority: str = "routine",
    complaint: str = "itchy rash",
    body_site: str = "left forearm",
    case_number: str | None = None,
    **extra: Any,
) -> Case:
    return intake.add_case(
        s,
        actor,
        patient,
        status=status,
        priority=priority,
        chief_complaint=complaint,
        body_site=body_site,
        description=extra.pop("description", "patient description"),
        submitted_at=submitted_at,
        case_number=case_number,
        **extra,
    )


def files_under(root: Path) -> list[Path]:
    """Every regular file below root, relative, sorted."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
