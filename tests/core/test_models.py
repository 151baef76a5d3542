"""The domain model on a real, migrated SQLite file: relationships, order, cascades, keys."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, SAWarning
from sqlalchemy.orm import Session

from derm_workstation.core.db import Database
from derm_workstation.core.models import (
    Case,
    Message,
    Patient,
    Photo,
    QuestionnaireAnswer,
    QuestionnaireItem,
    QuestionnaireResponse,
    new_id,
)

T0 = datetime(2025, 1, 15, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open("sqlite:///" + (tmp_path / "derm.sqlite3").as_posix())
    yield database
    database.close()


def _count(s: Session, model: type) -> int:
    return s.scalar(select(func.count()).select_from(model)) or 0


def _photo(position: int, sha_char: str) -> Photo:
    return Photo(
        position=position,
        sha256=sha_char * 64,
        content_type="image/jpeg",
        byte_size=1000 + position,
        width=640,
        height=480,
    )


def _build_case(s: Session) -> tuple[str, str]:
    """A patient with one full case; returns (patient_id, case_id)."""
    patient = Patient(
        family_name="Nguyen", given_name="Linh", birth_date=date(1990, 2, 3), sex="female",
        portal_id="pt-1", identifier="MRN-1",
    )
    case = Case(
        patient=patient,
        status="requested",
        priority="urgent",
        priority_rank=2,
        chief_complaint="changing mole",
        body_site="back",
        submitted_at=T0,
        portal_task_id="task-1",
    )
    # Photos added out of order: the relationship orders by position.
    case.photos = [_photo(2, "c"), _photo(0, "a"), _photo(1, "b")]

    qr = QuestionnaireResponse(case=case, title="Intake", authored_at=T0)
    s.add_all([patient, case, qr])
    s.flush()

    def item(pos: int, link: str, parent: QuestionnaireItem | None) -> QuestionnaireItem:
        # Fixed ids that sort parents before children (depth first in the id), so any
        # behaviour that depends on primary-key order is deterministic.
        depth = link.count(".")
        it = QuestionnaireItem(
            id=f"{depth}-{link}-{pos}".ljust(36, "0"),
            response_id=qr.id, parent_id=parent.id if parent else None, position=pos,
            link_id=link, text=f"Q {link}",
        )
        s.add(it)
        s.flush()
        return it

    # Inserted in a deliberately scrambled order so insertion order != position order.
    root_b = item(1, "b", None)
    root_a = item(0, "a", None)
    root_c = item(2, "c", None)
    child_b2 = item(1, "b.2", root_b)
    child_b1 = item(0, "b.1", root_b)
    item(2, "b.1.z", child_b1)
    item(0, "b.1.x", child_b1)
    item(1, "b.1.y", child_b1)
    s.add_all(
        [
            QuestionnaireAnswer(item=root_a, position=1, value_type="boolean",
                                value_boolean=False),
            QuestionnaireAnswer(item=root_a, position=0, value_type="string",
                                value_string="first"),
            QuestionnaireAnswer(item=child_b2, position=0, value_type="date",
                                value_date=date(2024, 12, 31)),
            QuestionnaireAnswer(item=root_c, position=0, value_type="integer",
                                value_integer=4),
        ]
    )
    # Messages inserted newest first; the relationship orders by time.
    for minutes, txt in [(30, "third"), (0, "first"), (10, "second")]:
        s.add(Message(case=case, direction="inbound", text=txt,
                      sent_at=T0 + timedelta(minutes=minutes)))
    s.flush()
    return patient.id, case.id


def test_full_case_reloads_with_everything_in_order(db: Database) -> None:
    with db.session() as s:
        patient_id, case_id = _build_case(s)

    with db.session() as s:  # a fresh session: nothing comes from the identity map
        case = s.get(Case, case_id)
        assert case is not None
        assert case.patient.id == patient_id
        assert case.patient.display_name == "Nguyen, Linh"
        assert [c.id for c in case.patient.cases] == [case_id]
        assert [p.position for p in case.photos] == [0, 1, 2]
        assert [p.sha256[0] for p in case.photos] == ["a", "b", "c"]
        assert [m.text for m in case.messages] == ["first", "second", "third"]
        assert all(m.sent_at.tzinfo is UTC for m in case.messages)

        (qr,) = case.questionnaires
        by_parent: dict[str | None, list[QuestionnaireItem]] = {}
        for it in qr.items:  # ordered by position within the whole response
            by_parent.setdefault(it.parent_id, []).append(it)
        positions = [it.position for it in qr.items]
        assert positions == sorted(positions)

        roots = by_parent[None]
        assert [r.link_id for r in roots] == ["a", "b", "c"]
        level2 = by_parent[roots[1].id]
        assert [i.link_id for i in level2] == ["b.1", "b.2"]
        level3 = by_parent[level2[0].id]
        assert [i.link_id for i in level3] == ["b.1.x", "b.1.y", "b.1.z"]
        assert by_parent.get(level3[0].id) is None  # three levels, no deeper

        assert [a.value for a in roots[0].answers] == ["first", False]
        assert [a.display for a in roots[0].answers] == ["first", "No"]
        assert [a.display for a in level2[1].answers] == ["2024-12-31"]
        assert [a.value for a in roots[2].answers] == [4]


ALL_PARTS = (Case, Photo, Message, QuestionnaireResponse, QuestionnaireItem, QuestionnaireAnswer)


def test_deleting_a_case_through_the_orm_cascades_to_its_parts(db: Database) -> None:
    with db.session() as s:
        patient_id, case_id = _build_case(s)
    with db.session() as s:
        assert _count(s, Photo) == 3
        assert _count(s, QuestionnaireItem) == 8
        assert _count(s, Message) == 3
        case = s.get(Case, case_id)
        assert case is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s.delete(case)
            s.flush()
    with db.session() as s:
        for model in ALL_PARTS:
            assert _count(s, model) == 0, model.__name__
        assert s.get(Patient, patient_id) is not None  # the patient stays
    # The ORM and the database cascade must not fight over the nested items.
    assert [str(w.message) for w in caught if issubclass(w.category, SAWarning)] == []


def test_database_level_cascade_without_the_orm(db: Database) -> None:
    """ON DELETE CASCADE in the schema itself (needs PRAGMA foreign_keys=ON)."""
    with db.session() as s:
        _, case_id = _build_case(s)
    with db.session() as s:
        s.execute(text("DELETE FROM cases WHERE id = :id"), {"id": case_id})
    with db.session() as s:
        for model in ALL_PARTS:
            assert _count(s, model) == 0, model.__name__


def test_deleting_a_parent_question_removes_its_subtree(db: Database) -> None:
    with db.session() as s:
        _build_case(s)
    with db.session() as s:
        s.execute(text("DELETE FROM questionnaire_items WHERE link_id = 'b'"))
    with db.session() as s:
        left = sorted(s.scalars(select(QuestionnaireItem.link_id)))
        assert left == ["a", "c"]
        assert _count(s, QuestionnaireAnswer) == 3  # b.2's answer went with it


def test_deleting_a_patient_with_cases_is_refused_in_sql(db: Database) -> None:
    with db.session() as s:
        patient_id, _ = _build_case(s)
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), db.session() as s:
        s.execute(text("DELETE FROM patients WHERE id = :id"), {"id": patient_id})
    with db.session() as s:
        assert s.get(Patient, patient_id) is not None
        assert _count(s, Case) == 1


def test_deleting_a_patient_with_cases_is_refused_through_the_orm(db: Database) -> None:
    with db.session() as s:
        patient_id, case_id = _build_case(s)
    with pytest.raises(IntegrityError), db.session() as s:
        patient = s.get(Patient, patient_id)
        s.delete(patient)
    with db.session() as s:
        case = s.get(Case, case_id)
        assert case is not None and case.patient_id == patient_id


def test_a_patient_without_cases_can_be_deleted(db: Database) -> None:
    with db.session() as s:
        p = Patient(family_name="Alone")
        s.add(p)
        s.flush()
        pid = p.id
    with db.session() as s:
        s.delete(s.get(Patient, pid))
    with db.session() as s:
        assert s.get(Patient, pid) is None


def test_patient_portal_ids_are_unique(db: Database) -> None:
    with db.session() as s:
        s.add(Patient(family_name="One", portal_id="pt-9"))
    with pytest.raises(IntegrityError, match="UNIQUE"), db.session() as s:
        s.add(Patient(family_name="Two", portal_id="pt-9"))
    with db.session() as s:
        # Many patients may have no portal id at all.
        s.add_all([Patient(family_name="Local1"), Patient(family_name="Local2")])
    with db.session() as s:
        assert _count(s, Patient) == 3


def test_case_portal_task_ids_are_unique(db: Database) -> None:
    with db.session() as s:
        _build_case(s)
    with pytest.raises(IntegrityError, match="UNIQUE"), db.session() as s:
        p = Patient(family_name="Other")
        s.add(Case(patient=p, submitted_at=T0, portal_task_id="task-1"))
    with db.session() as s:
        p = Patient(family_name="Other")
        s.add_all(
            [Case(patient=p, submitted_at=T0), Case(patient=p, submitted_at=T0)]
        )
    with db.session() as s:
        assert _count(s, Case) == 3


def test_defaults_and_ids(db: Database) -> None:
    with db.session() as s:
        p = Patient()
        c = Case(patient=p, submitted_at=T0)
        s.add(c)
        s.flush()
        ids = (p.id, c.id)
    with db.session() as s:
        p2 = s.get(Patient, ids[0])
        c2 = s.get(Case, ids[1])
        assert p2 is not None and c2 is not None
        assert len(p2.id) == 36 and p2.id != c2.id
        assert p2.sex == "unknown"
        assert p2.display_name == "(no name)"
        assert (c2.status, c2.priority, c2.priority_rank, c2.photo_count) == (
            "requested", "routine", 3, 0,
        )
        assert c2.created_at.tzinfo is UTC


def test_refresh_search_text_is_lowercased_and_covers_the_searchable_fields() -> None:
    p = Patient(family_name="Öztürk", given_name="Ayşe", identifier="MRN-77")
    c = Case(patient=p, case_number="DR-2025-001", chief_complaint="Itchy RASH",
             body_site="Left Shin")
    c.refresh_search_text()
    assert c.search_text == "öztürk ayşe mrn-77 dr-2025-001 itchy rash left shin"


def test_new_ids_are_random_version_4_uuids_and_unique() -> None:
    ids = [new_id() for _ in range(5000)]  # crosses several refills of the byte pool
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    new_id()  # the pool holds bytes the parent has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, ",".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split(",")
    os.waitpid(pid, 0)
    os.close(read)
    parent = [new_id() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent)
