"""Use cases over a real workspace: case detail, audit trail, id resolution, permissions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import func, select, text

from derm_workstation.core import audit, intake, queue
from derm_workstation.core.errors import (
    ImageCorruptError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
)
from derm_workstation.core.models import AuditEvent, Case, Patient
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace

from .helpers import add_case, add_patient, jpeg_bytes, png_bytes, three_level_questionnaire

T0 = datetime(2025, 2, 1, 10, 0, tzinfo=UTC)
DOCTOR = Actor("dr.house", "dermatologist")
NURSE = Actor("nurse.joy", "nurse")
ADMIN = Actor("it.admin", "admin")


@dataclass
class Seeded:
    case_id: str
    patient_id: str
    earlier_ids: list[str]  # newest first
    png: bytes
    jpeg: bytes


@pytest.fixture
def seeded(workspace: Workspace) -> Seeded:
    png = png_bytes(16, 12)
    jpeg = jpeg_bytes(40, 20, orientation=6)  # stored 40x20, shown rotated: 20x40
    with workspace.db.session() as s:
        p = add_patient(s, "Nguyen", "Linh", identifier="MRN-1", birth_date=date(1990, 2, 3),
                        portal_id="pt-1")
        old1 = add_case(s, p, T0 - timedelta(days=300), status="completed",
                        complaint="old acne", case_number="DR-0001")
        old2 = add_case(s, p, T0 - timedelta(days=30), status="cancelled",
                        complaint="wart", case_number="DR-0002")
        c = add_case(s, p, T0, status="in-progress", priority="urgent",
                     complaint="changing mole", body_site="back", case_number="DR-0003",
                     portal_task_id="task-3")
        intake.add_photo(s, workspace.images, c, png, title="overview", taken_at=T0)
        intake.add_photo(s, workspace.images, c, jpeg, title="close-up")
        intake.add_questionnaire(s, c, three_level_questionnaire(), authored_at=T0)
        for minutes, direction, body in [(20, "outbound", "Please send a close-up"),
                                         (5, "inbound", "It got bigger"),
                                         (60, "inbound", "Sent it")]:
            intake.add_message(s, c, direction=direction, text=body,
                               sent_at=T0 + timedelta(minutes=minutes))
        other = add_patient(s, "Other", "Person", identifier="MRN-2")
        add_case(s, other, T0 - timedelta(days=1), complaint="unrelated")
        return Seeded(c.id, p.id, [old2.id, old1.id], png, jpeg)


def _events(ws: Workspace, action: str) -> list[AuditEvent]:
    with ws.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))


# ---------------------------------------------------------------- case detail


def test_case_detail_returns_the_whole_case(workspace: Workspace, seeded: Seeded) -> None:
    d = CaseService(workspace, DOCTOR).case_detail(seeded.case_id)

    assert d.id == seeded.case_id
    assert (d.case_number, d.status, d.priority) == ("DR-0003", "in-progress", "urgent")
    assert (d.status_label, d.priority_label) == ("In progress", "Urgent")
    assert (d.chief_complaint, d.body_site) == ("changing mole", "back")
    assert d.submitted_at == T0 and d.submitted_at.tzinfo is UTC
    assert d.portal_task_id == "task-3"

    p = d.patient
    assert (p.id, p.name, p.identifier, p.portal_id) == (
        seeded.patient_id, "Nguyen, Linh", "MRN-1", "pt-1",
    )
    assert p.birth_date == date(1990, 2, 3)
    assert p.age_years == queue.age_in_years(date(1990, 2, 3))

    first, second = d.photos
    assert first.sha256 == hashlib.sha256(seeded.png).hexdigest()
    assert (first.width, first.height, first.content_type) == (16, 12, "image/png")
    assert first.byte_size == len(seeded.png)
    assert (first.title, first.taken_at) == ("overview", T0)
    assert second.sha256 == hashlib.sha256(seeded.jpeg).hexdigest()
    assert (second.width, second.height, second.content_type) == (20, 40, "image/jpeg")
    assert second.calibration_px_per_mm is None

    assert [m.text for m in d.messages] == ["It got bigger", "Please send a close-up", "Sent it"]
    assert [m.delivery_state for m in d.messages] == ["received", "sent", "received"]

    assert [e.id for e in d.earlier_cases] == seeded.earlier_ids
    assert [e.chief_complaint for e in d.earlier_cases] == ["wart", "old acne"]


def test_case_detail_keeps_the_questionnaire_tree_and_order(
    workspace: Workspace, seeded: Seeded
) -> None:
    q = CaseService(workspace, DOCTOR).case_detail(seeded.case_id).questionnaire
    assert [i.link_id for i in q] == ["zeta", "history", "alpha", "coded"]
    assert q[0].answers == ("3 weeks",)
    history = q[1]
    assert history.answers == ()
    assert [i.link_id for i in history.items] == ["meds", "allergy"]
    meds, allergy = history.items
    assert meds.answers == ("Yes",)
    assert allergy.answers == ("No",) and allergy.items == ()
    assert [i.link_id for i in meds.items] == ["meds.name", "meds.dose", "meds.since"]
    assert meds.items[0].answers == ("ibuprofen", "cetirizine")
    assert meds.items[1].answers == ("400",)
    assert meds.items[2].answers == ("2024-02-29",)
    assert q[2].answers == ("7.5",)
    assert q[3].answers == ("Type II",)
    assert q[1].as_json()["items"][0]["items"][2] == {
        "link_id": "meds.since", "text": "Since", "answers": ["2024-02-29"], "items": [],
    }


def test_case_detail_json_is_serialisable(workspace: Workspace, seeded: Seeded) -> None:
    js = CaseService(workspace, DOCTOR).case_detail(seeded.case_id).as_json()
    round_tripped = json.loads(json.dumps(js))
    assert round_tripped["patient"]["birth_date"] == "1990-02-03"
    assert round_tripped["portal"]["task_id"] == "task-3"
    assert len(round_tripped["photos"]) == 2
    assert [e["id"] for e in round_tripped["earlier_cases"]] == seeded.earlier_ids


def test_a_case_without_parts_has_empty_detail(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = add_patient(s, "", "", birth_date=None)
        cid = add_case(s, p, T0).id
    d = CaseService(workspace, DOCTOR).case_detail(cid)
    assert d.photos == () and d.messages == () and d.questionnaire == ()
    assert d.earlier_cases == ()
    assert d.patient.name == "(no name)" and d.patient.age_years is None


# ---------------------------------------------------------------- audit


def test_viewing_a_case_is_audited(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, DOCTOR)
    svc.case_detail("DR-0003")
    views = _events(workspace, "case.view")
    assert len(views) == 1
    ev = views[0]
    assert (ev.actor, ev.entity_type, ev.entity_id) == ("dr.house", "case", seeded.case_id)
    assert ev.at.tzinfo is UTC
    assert "Nguyen" not in json.dumps(ev.detail)  # ids only, never names

    svc.case_detail(seeded.case_id, audit_view=False)
    assert len(_events(workspace, "case.view")) == 1


def test_creating_cases_is_audited(workspace: Workspace, seeded: Seeded) -> None:
    created = _events(workspace, "case.create")
    assert len(created) == 4
    assert seeded.case_id in {e.entity_id for e in created}
    assert {e.actor for e in created} == {"system"}


def _verify(ws: Workspace) -> int | None:
    with ws.db.session() as s:
        return audit.verify_chain(s)


def test_an_intact_audit_chain_verifies(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, DOCTOR)
    for _ in range(3):
        svc.case_detail(seeded.case_id)
    with workspace.db.session() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert len(events) == 7
    assert events[0].prev_hash == audit.GENESIS
    for before, after in pairwise(events):
        assert after.prev_hash == before.hash
    assert _verify(workspace) is None


def test_an_empty_audit_chain_verifies(workspace: Workspace) -> None:
    assert _verify(workspace) is None


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_events SET detail = '{\"field\": \"status\"}' WHERE id = :id",
        "UPDATE audit_events SET actor = 'someone-else' WHERE id = :id",
        "UPDATE audit_events SET at = '2020-01-01 00:00:00.000000' WHERE id = :id",
        "UPDATE audit_events SET entity_id = 'other-case' WHERE id = :id",
    ],
    ids=["detail", "actor", "time", "entity"],
)
def test_a_tampered_audit_row_is_found(workspace: Workspace, seeded: Seeded, sql: str) -> None:
    svc = CaseService(workspace, DOCTOR)
    svc.case_detail(seeded.case_id)
    svc.case_detail(seeded.case_id)
    with workspace.db.session() as s:
        ids = list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
    target = ids[2]
    with workspace.db.engine.begin() as conn:
        conn.execute(text(sql), {"id": target})
    assert _verify(workspace) == target


def test_a_deleted_audit_row_breaks_the_chain_at_its_successor(
    workspace: Workspace, seeded: Seeded
) -> None:
    with workspace.db.session() as s:
        ids = list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
    with workspace.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[1]})
    assert _verify(workspace) == ids[2]


def test_audit_records_chain_in_one_transaction(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        a = audit.record(s, DOCTOR, "test.a", "case", "x", {"fields": ["status"]})
        b = audit.record(s, DOCTOR, "test.b", "case", "x")
        assert b.prev_hash == a.hash
    assert _verify(workspace) is None


# ---------------------------------------------------------------- resolve_id


def test_resolve_id_accepts_id_prefix_and_case_number(
    workspace: Workspace, seeded: Seeded
) -> None:
    svc = CaseService(workspace, DOCTOR)
    cid = seeded.case_id
    with workspace.db.session() as s:
        assert svc.resolve_id(s, cid) == cid
        assert svc.resolve_id(s, f"  {cid}\n") == cid
        assert svc.resolve_id(s, cid[:8]) == cid
        assert svc.resolve_id(s, cid[:13]) == cid
        assert svc.resolve_id(s, "DR-0003") == cid
        assert svc.resolve_id(s, "DR-0001") == seeded.earlier_ids[1]


@pytest.mark.parametrize("ref", ["nope", "DR-9999", "", "00000000-0000"])
def test_resolve_id_unknown_is_not_found(
    workspace: Workspace, seeded: Seeded, ref: str
) -> None:
    svc = CaseService(workspace, DOCTOR)
    with workspace.db.session() as s, pytest.raises(NotFoundError) as err:
        svc.resolve_id(s, ref)
    assert err.value.exit_code == 2
    assert isinstance(err.value, InputError)


def test_resolve_id_needs_eight_characters_of_prefix(
    workspace: Workspace, seeded: Seeded
) -> None:
    svc = CaseService(workspace, DOCTOR)
    with workspace.db.session() as s, pytest.raises(NotFoundError):
        svc.resolve_id(s, seeded.case_id[:7])


def test_resolve_id_refuses_an_ambiguous_prefix(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = Patient(family_name="Twin")
        s.add_all([
            Case(id="abcdef12-0000-4000-8000-000000000001", patient=p, submitted_at=T0),
            Case(id="abcdef12-0000-4000-8000-000000000002", patient=p, submitted_at=T0),
        ])
    svc = CaseService(workspace, DOCTOR)
    with workspace.db.session() as s:
        with pytest.raises(NotFoundError):
            svc.resolve_id(s, "abcdef12")
        with pytest.raises(NotFoundError):  # still ambiguous one character before the end
            svc.resolve_id(s, "abcdef12-0000-4000-8000-00000000000")
        full = "abcdef12-0000-4000-8000-000000000002"
        assert svc.resolve_id(s, full) == full


def test_resolve_id_refuses_a_duplicated_case_number(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = add_patient(s)
        add_case(s, p, T0, case_number="DUP-1")
        add_case(s, p, T0, case_number="DUP-1")
    svc = CaseService(workspace, DOCTOR)
    with workspace.db.session() as s, pytest.raises(NotFoundError):
        svc.resolve_id(s, "DUP-1")


@pytest.mark.parametrize("ref", ["%%%%%%%%", "________"])
def test_resolve_id_treats_like_wildcards_literally(
    workspace: Workspace, seeded: Seeded, ref: str
) -> None:
    # Only one case matches a wildcard-only prefix if we delete the others.
    with workspace.db.session() as s:
        only = s.scalars(select(Case).where(Case.id != seeded.case_id)).all()
        for c in only:
            s.delete(c)
    svc = CaseService(workspace, DOCTOR)
    with workspace.db.session() as s:
        assert s.scalars(select(Case.id)).all() == [seeded.case_id]
        try:
            resolved: str | None = svc.resolve_id(s, ref)
        except NotFoundError:
            resolved = None
    assert resolved is None, f"{ref!r} resolved to {resolved}"


def test_case_detail_of_an_unknown_case(workspace: Workspace, seeded: Seeded) -> None:
    with pytest.raises(NotFoundError, match="No case with id 'zzz'"):
        CaseService(workspace, DOCTOR).case_detail("zzz")
    assert _events(workspace, "case.view") == []


# ---------------------------------------------------------------- permissions


def test_a_nurse_cannot_create_cases_and_nothing_is_written(workspace: Workspace) -> None:
    with pytest.raises(PermissionDeniedError, match=r"nurse.*case\.edit"), \
            workspace.db.session() as s:
        p = add_patient(s, "Would", "Be")
        add_case(s, p, T0, actor=NURSE)
    with workspace.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 0
        assert s.scalar(select(func.count()).select_from(Patient)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_a_nurse_may_view_and_list(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, NURSE)
    assert svc.case_detail(seeded.case_id).id == seeded.case_id
    assert seeded.case_id in svc.queue_ids(queue.QueueQuery())
    assert _events(workspace, "case.view")[0].actor == "nurse.joy"


def test_an_admin_may_list_but_not_view(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, ADMIN)
    ids = svc.queue_ids(queue.QueueQuery())
    assert [r.id for r in svc.queue_rows(ids)] == ids
    assert svc.counts().total == 4
    with pytest.raises(PermissionDeniedError):
        svc.case_detail(seeded.case_id)
    with pytest.raises(PermissionDeniedError):
        svc.photo_bytes(hashlib.sha256(seeded.png).hexdigest())
    assert _events(workspace, "case.view") == []


def test_an_unknown_role_may_do_nothing(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, Actor("mallory", "intern"))
    for call in (lambda: svc.queue_ids(queue.QueueQuery()), svc.counts,
                 lambda: svc.case_detail(seeded.case_id)):
        with pytest.raises(PermissionDeniedError):
            call()
    assert not Actor("x", "intern").can("case.list")
    assert SYSTEM.can("case.edit")


# ---------------------------------------------------------------- photos


def test_photo_bytes_are_verified(workspace: Workspace, seeded: Seeded) -> None:
    svc = CaseService(workspace, DOCTOR)
    sha = svc.case_detail(seeded.case_id).photos[0].sha256
    assert svc.photo_bytes(sha) == seeded.png

    path = workspace.images.path_for(sha)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageCorruptError, match="damaged") as err:
        svc.photo_bytes(sha)
    assert err.value.sha256 == sha

    path.unlink()
    with pytest.raises(ImageCorruptError, match="missing"):
        svc.photo_bytes(sha)


def test_the_same_photo_in_two_cases_is_stored_once(workspace: Workspace) -> None:
    data = png_bytes(8, 8)
    with workspace.db.session() as s:
        p = add_patient(s)
        c1 = add_case(s, p, T0)
        c2 = add_case(s, p, T0)
        a = intake.add_photo(s, workspace.images, c1, data)
        b = intake.add_photo(s, workspace.images, c2, data)
        intake.add_photo(s, workspace.images, c2, png_bytes(9, 9))
        assert a.sha256 == b.sha256
        assert (c1.photo_count, c2.photo_count) == (1, 2)
        assert [ph.position for ph in c2.photos] == [0, 1]
    stored = [f for f in workspace.images.root.rglob("*") if f.is_file()]
    assert len(stored) == 2


def test_a_file_that_is_not_an_image_is_refused_before_storing(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = add_patient(s)
        c = add_case(s, p, T0)
        with pytest.raises(InputError):
            intake.add_photo(s, workspace.images, c, b"%PDF-1.7 not a photo")
        with pytest.raises(InputError, match="empty"):
            intake.add_photo(s, workspace.images, c, b"")
        assert c.photo_count == 0
    assert [f for f in workspace.images.root.rglob("*") if f.is_file()] == []


# ---------------------------------------------------------------- intake


def test_upsert_patient_finds_by_portal_id_then_identifier(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        a = add_patient(s, "Doe", "Jane", identifier="MRN-5", portal_id="pt-5", sex="alien")
        assert a.sex == "unknown"
        b = add_patient(s, "Doe-Smith", "Jane", identifier="MRN-5b", portal_id="pt-5")
        c = add_patient(s, "Doe-Smith", "J.", identifier="MRN-5b")
        assert a.id == b.id == c.id
        assert (c.family_name, c.given_name, c.identifier) == ("Doe-Smith", "J.", "MRN-5b")
        assert s.scalar(select(func.count()).select_from(Patient)) == 1


def test_renaming_a_patient_keeps_their_cases_searchable(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = add_patient(s, "Smith", "Ann", identifier="MRN-9")
        cid = add_case(s, p, T0).id
    with workspace.db.session() as s:
        add_patient(s, "Jones", "Ann", identifier="MRN-9")  # a name correction
    svc = CaseService(workspace, DOCTOR)
    assert svc.queue_ids(queue.QueueQuery(text="jones")) == [cid]
    assert svc.queue_ids(queue.QueueQuery(text="smith")) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({"status": "open"}, "Unknown case status"), ({"priority": "high"}, "Unknown priority")],
)
def test_add_case_validates_status_and_priority(
    workspace: Workspace, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message), workspace.db.session() as s:
        add_case(s, add_patient(s), T0, **kwargs)


def test_add_message_validates_direction(workspace: Workspace) -> None:
    with pytest.raises(InputError, match="direction"), workspace.db.session() as s:
        c = add_case(s, add_patient(s), T0)
        intake.add_message(s, c, direction="sideways", text="hi", sent_at=T0)
