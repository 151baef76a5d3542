"""The body map: site texts and codes to positions, a patient's pins across visits,
clinician-moved pins that persist, permissions, audit, and the 0004 migration."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select

from derm_workstation.core import body_map as bm
from derm_workstation.core import intake
from derm_workstation.core.annotations import AnnotationService
from derm_workstation.core.audit import verify_chain
from derm_workstation.core.body_map import BodyMapService, locate, on_body
from derm_workstation.core.db import Database, alembic_config
from derm_workstation.core.errors import InputError, NotFoundError, PermissionDeniedError
from derm_workstation.core.migrations import HEAD
from derm_workstation.core.models import AuditEvent, BodyMapPin, Case, Patient
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from tests.core.helpers import add_case, add_patient, jpeg_bytes

DOC = Actor("dr.grey", "dermatologist")
NURSE = Actor("nurse.joy", "nurse")
JAN = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
JUN = datetime(2026, 6, 12, 9, 0, tzinfo=UTC)


# -- placing a site -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "region", "side", "view"), [
    # the demo data's sites and how its patients say them
    ("Left upper back", "upper-back", "left", "back"),
    ("Between the shoulder blades", "between-scapulae", "", "back"),
    ("back, between the shoulder blades", "between-scapulae", "", "back"),
    ("Left forearm, extensor surface", "forearm", "left", "back"),
    ("left forearm", "forearm", "left", "front"),
    ("Right thigh, posterior", "thigh", "right", "back"),
    ("right thigh, at the back", "thigh", "right", "back"),
    ("Abdomen, left of umbilicus", "umbilicus", "left", "front"),
    ("tummy, next to the belly button", "umbilicus", "", "front"),
    ("Right elbow, extensor surface", "elbow", "right", "back"),
    ("Left knee, extensor surface", "knee", "left", "front"),
    ("Left antecubital fossa", "antecubital", "left", "front"),
    ("right elbow crease", "antecubital", "right", "front"),
    ("Right popliteal fossa", "popliteal", "right", "back"),
    ("right knee crease", "popliteal", "right", "back"),
    ("Neck, anterior", "neck", "", "front"),
    ("back of my neck", "neck", "", "back"),
    ("Left wrist, flexor surface", "wrist", "left", "front"),
    ("Left ankle, medial", "ankle", "left", "front"),
    ("Both cheeks", "cheek", "both", "front"),
    ("Chin and jawline", "chin", "", "front"),
    ("Back of the right hand", "hand", "right", "back"),
    ("Lower back, sacral area", "lower-back", "", "back"),
    ("Upper chest", "upper-chest", "", "front"),
    # other common wordings
    ("Scalp", "scalp", "", "front"),
    ("forehead", "forehead", "", "front"),
    ("nose", "nose", "", "front"),
    ("behind my left ear", "ear", "left", "back"),
    ("R forearm", "forearm", "right", "front"),
    ("lt shin", "shin", "left", "front"),
    ("left calf", "calf", "left", "back"),
    ("right palm", "palm", "right", "front"),
    ("thumbnail", "nail", "", "back"),
    ("nail of my big toe", "toe", "", "front"),
    ("sole of right foot", "sole", "right", "back"),
    ("top of my left foot", "foot", "left", "front"),
    ("right buttock", "buttock", "right", "back"),
    ("groin", "groin", "", "front"),
    ("genital area", "genital", "", "front"),
    ("left armpit", "axilla", "left", "front"),
    ("ingrown hair on my leg", "leg", "", "front"),
    ("hair loss patch", "scalp", "", "front"),
    ("my back", "back", "", "back"),
])
def test_site_texts_land_on_the_right_region_side_and_view(text: str, region: str, side: str,
                                                          view: str) -> None:
    where = locate(text)
    assert where is not None, text
    assert (where.region, where.side, where.view) == (region, side, view)
    assert on_body(where.x, where.y)


def test_the_patients_right_is_on_the_viewers_left_on_the_front_and_right_on_the_back() -> None:
    right_front, left_front = locate("right forearm"), locate("left forearm")
    right_back, left_back = locate("right elbow"), locate("left elbow")
    assert right_front and left_front and right_back and left_back
    assert right_front.x < 0.5 < left_front.x
    assert left_back.x < 0.5 < right_back.x
    # mirror images of each other
    assert right_front.x == pytest.approx(1 - left_front.x)
    assert right_front.y == left_front.y
    # a midline site with a side moves off the midline to that side
    up_left = locate("Left upper back")
    assert up_left is not None and up_left.x < 0.5  # back view: the left is on the left
    assert locate("Upper back") is not None and locate("Upper back").x == 0.5  # type: ignore[union-attr]


def test_head_sites_are_above_feet_sites() -> None:
    ys = [locate(t).y for t in ("scalp", "forehead", "chin", "neck", "chest", "abdomen",  # type: ignore[union-attr]
                                "groin", "thigh", "knee", "shin", "ankle", "toes")]
    assert ys == sorted(ys)


@pytest.mark.parametrize("text", ["", "   ", "whole body", "all over", "generalised rash",
                                  "it is hard to say", "xyz"])
def test_unknown_sites_are_not_placed(text: str) -> None:
    assert locate(text) is None


def test_every_region_lands_on_the_drawn_body_on_both_sides_and_views() -> None:
    for region in bm._REGIONS:
        for side in ("left", "right", "", "both"):
            for view in bm.VIEWS:
                if (region.front if view == "front" else region.back) is None:
                    continue
                where = bm._position(region, side, view)
                assert on_body(where.x, where.y), (region.key, side, view)
    # and the outline is a body, not the whole box
    assert not on_body(0.03, 0.5) and not on_body(0.5, 0.99) and not on_body(0.2, 0.8)
    assert on_body(0.5, 0.3) and on_body(0.5, 0.07)


def test_snomed_codes_place_a_site_when_the_text_does_not() -> None:
    for code, (region, side) in bm.SNOMED_REGIONS.items():
        where = locate("", code)
        assert where is not None and where.region == region, code
        if side:
            assert where.side == side
    forearm = locate("somewhere odd", "14975008")
    assert forearm is not None and forearm.region == "forearm"
    # the text's side applies to a code without one
    left = locate("left, the patient says", "14975008")
    assert left is not None and left.side == "left" and left.x > 0.5
    # text the map knows wins over the code; an unknown code places nothing
    assert locate("left knee", "14975008").region == "knee"  # type: ignore[union-attr]
    assert locate("", "999999999") is None
    assert locate("whole body", "38266002") is None  # "entire body" is no single place


def test_labels_say_the_side_and_view_in_plain_words() -> None:
    assert locate("Left forearm, extensor surface").label == "Left forearm, back view"  # type: ignore[union-attr]
    assert locate("Upper back").label == "Upper back, back view"  # type: ignore[union-attr]
    assert locate("Left upper back").label == "Upper back, left side, back view"  # type: ignore[union-attr]
    assert locate("cheeks").label == "Cheek (side not stated), front view"  # type: ignore[union-attr]


# -- a patient's pins ---------------------------------------------------------------------------
def _patient_with_two_visits(ws: Workspace) -> tuple[str, dict[str, str]]:
    """Returns (patient id, photo ids by name). The later visit is stored first."""
    ids: dict[str, str] = {}
    with ws.db.session() as s:
        p = add_patient(s, "Okafor", "Ada")
        other = add_patient(s, "Other", "Person", identifier="MRN-OTHER")
        later = add_case(s, p, JUN, body_site="Left forearm", case_number="V2")
        earlier = add_case(s, p, JAN, body_site="Left forearm", case_number="V1")
        for name, case, site, when in (
            ("jun_arm", later, "left forearm", JUN),
            ("jun_odd", later, "the spot under my watch strap", JUN),
            ("jan_arm", earlier, "Left forearm", JAN),
            ("jan_back", earlier, "Upper back", JAN),
        ):
            ph = intake.add_photo(s, ws.images, case, jpeg_bytes(color=(len(name) * 9, 80, 60)),
                                  body_site=site, title=name, taken_at=when)
            ph.calibration_px_per_mm = 10.0
            ids[name] = ph.id
        oc = add_case(s, other, JUN, body_site="Left forearm")
        ids["other"] = intake.add_photo(s, ws.images, oc, jpeg_bytes(), body_site="Left forearm",
                                        title="other").id
        pid = p.id
    notes = AnnotationService(ws, DOC)
    # lesion 1 outlined on both visits: 10 mm across in January, 14 mm in June
    for name, size in (("jan_arm", 100), ("jun_arm", 140)):
        notes.add(ids[name], "marker", [(60, 60)], lesion_number=1)
        notes.add(ids[name], "ellipse", [(10, 10), (10 + size, 10 + size)], lesion_number=1)
    # lesion 2 only marked once (nothing to compare)
    notes.add(ids["jan_back"], "marker", [(30, 30)], lesion_number=2)
    return pid, ids


def test_pins_group_photos_by_site_across_visits_in_date_order(workspace: Workspace) -> None:
    pid, ids = _patient_with_two_visits(workspace)
    m = BodyMapService(workspace, DOC).pins(pid)

    sites = m.site_pins()
    arm = next(p for p in sites if p.key == "forearm:left:front")
    assert arm.photo_ids == [ids["jan_arm"], ids["jun_arm"]]  # oldest first
    assert arm.placed and arm.view == "front" and arm.x is not None and arm.x > 0.5
    assert arm.dates_text == "2 photos, 10 Jan 2026 – 12 Jun 2026"
    back = next(p for p in sites if p.key == "upper-back:-:back")
    assert back.photo_ids == [ids["jan_back"]] and back.view == "back"
    odd = next(p for p in sites if not p.placed)
    assert odd.photo_ids == [ids["jun_odd"]]
    assert odd.note == "Site not on the map: the spot under my watch strap"
    assert [p.key for p in m.unplaced] == [odd.key]
    # the other patient's photo is on no pin
    assert ids["other"] not in {i for p in m.pins for i in p.photo_ids}

    lesions = m.lesion_pins()
    assert [p.lesion_number for p in lesions] == [1, 2]
    one, two = lesions
    assert one.label == "Lesion 1" and one.photo_ids == [ids["jan_arm"], ids["jun_arm"]]
    # a lesion sits at its photo's site
    assert (one.view, one.x, one.y) == (arm.view, arm.x, arm.y) and not one.adjusted
    assert one.changed is True and one.status == "changed"
    assert "+4.0 mm" in one.change_summary  # 10 mm -> 14 mm longest diameter
    assert "changed" in one.tooltip and "Site: Left forearm" in one.tooltip
    assert two.changed is None and two.status == "" and two.view == "back"


def test_a_lesion_that_did_not_change_says_so(workspace: Workspace) -> None:
    pid, ids = _patient_with_two_visits(workspace)
    notes = AnnotationService(workspace, DOC)
    jun = next(a for a in notes.list(ids["jun_arm"]) if a.kind == "ellipse")
    notes.update(jun.id, geometry={"points": [[10, 10], [111, 111]]})  # 10.1 mm: same
    one = BodyMapService(workspace, DOC).pins(pid).find("lesion", "1")
    assert one is not None and one.changed is False and one.status == "no clear change"


def test_a_case_site_code_places_photos_whose_text_is_unknown(workspace: Workspace) -> None:
    with workspace.db.session() as s:
        p = add_patient(s)
        c = add_case(s, p, JAN, body_site="where the strap rubs")
        c.body_site_code = "14975008"  # SNOMED CT: forearm, as the portal may send it
        ph = intake.add_photo(s, workspace.images, c, jpeg_bytes(), body_site="")
        pid, photo_id = p.id, ph.id
    pin = BodyMapService(workspace, DOC).pins(pid).site_pins()[0]
    assert pin.photo_ids == [photo_id] and pin.placed and pin.key.startswith("forearm:")
    assert pin.label == "where the strap rubs"


def test_unknown_patient_and_empty_patient(workspace: Workspace) -> None:
    svc = BodyMapService(workspace, DOC)
    with pytest.raises(NotFoundError):
        svc.pins("no-such-patient")
    with workspace.db.session() as s:
        pid = add_patient(s).id
    assert svc.pins(pid).pins == ()


# -- moving pins -----------------------------------------------------------------------------
def test_moved_and_reset_pins_persist_across_a_reopened_workspace(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "data")
    try:
        pid, _ids = _patient_with_two_visits(ws)
        svc = BodyMapService(ws, DOC)
        svc.move_pin(pid, "site", "forearm:left:front", "back", 0.21, 0.44)
        svc.move_pin(pid, "lesion", "1", "front", 0.8, 0.45)
        svc.move_pin(pid, "lesion", "1", "front", 0.79, 0.46)  # moved again: one row
        odd = svc.pins(pid).unplaced[0]
        svc.move_pin(pid, "site", odd.key, "front", 0.78, 0.5)  # placed by hand
    finally:
        ws.close()

    ws = Workspace.open(tmp_path / "data")
    try:
        svc = BodyMapService(ws, DOC)
        m = svc.pins(pid)
        arm = m.find("site", "forearm:left:front")
        assert arm is not None and arm.adjusted
        assert (arm.view, arm.x, arm.y) == ("back", 0.21, 0.44)
        one = m.find("lesion", "1")
        assert one is not None and (one.view, one.x, one.y) == ("front", 0.79, 0.46)
        assert "Position set by a clinician" in one.tooltip
        placed = m.find("site", odd.key)
        assert placed is not None and placed.placed and placed.note == ""
        assert m.unplaced == []
        with ws.db.session() as s:
            rows = list(s.scalars(select(BodyMapPin)))
            assert len(rows) == 3 and {r.moved_by for r in rows} == {"dr.grey"}
            events = list(s.scalars(select(AuditEvent).where(
                AuditEvent.action.like("body_map.%"))))
            assert [e.action for e in events] == ["body_map.move"] * 4
            assert verify_chain(s) is None
            # ids and keys only: the patient's free-text site is not in the audit trail
            assert all("watch strap" not in str(e.detail) for e in events)
            assert events[0].detail["site_key"] == "forearm:left:front"

        assert svc.reset_pin(pid, "site", "forearm:left:front") is True
        assert svc.reset_pin(pid, "site", "forearm:left:front") is False
        arm = svc.pins(pid).find("site", "forearm:left:front")
        assert arm is not None and not arm.adjusted and arm.view == "front"
    finally:
        ws.close()

    ws = Workspace.open(tmp_path / "data")
    try:
        arm = BodyMapService(ws, DOC).pins(pid).find("site", "forearm:left:front")
        assert arm is not None and not arm.adjusted and arm.view == "front"
        with ws.db.session() as s:
            assert s.scalar(select(AuditEvent.action).order_by(AuditEvent.id.desc())
                            .limit(1)) == "body_map.reset"
    finally:
        ws.close()


def test_a_nurse_sees_the_map_but_cannot_move_pins(workspace: Workspace) -> None:
    pid, _ids = _patient_with_two_visits(workspace)
    assert BodyMapService(workspace, NURSE).pins(pid).pins
    with pytest.raises(PermissionDeniedError):
        BodyMapService(workspace, NURSE).move_pin(pid, "lesion", "1", "front", 0.5, 0.5)
    with pytest.raises(PermissionDeniedError):
        BodyMapService(workspace, NURSE).reset_pin(pid, "lesion", "1")
    with pytest.raises(PermissionDeniedError):
        BodyMapService(workspace, Actor("admin", "admin")).pins(pid)


@pytest.mark.parametrize(("kind", "key", "view", "x", "y"), [
    ("site", "forearm:left:front", "side", 0.5, 0.5),
    ("site", "forearm:left:front", "front", 1.2, 0.5),
    ("site", "forearm:left:front", "front", 0.5, -0.1),
    ("site", "forearm:left:front", "front", float("nan"), 0.5),
    ("mole", "1", "front", 0.5, 0.5),
    ("lesion", "one", "front", 0.5, 0.5),
    ("site", "", "front", 0.5, 0.5),
])
def test_bad_moves_are_refused(workspace: Workspace, kind: str, key: str, view: str,
                               x: float, y: float) -> None:
    pid, _ids = _patient_with_two_visits(workspace)
    with pytest.raises(InputError):
        BodyMapService(workspace, DOC).move_pin(pid, kind, key, view, x, y)
    with workspace.db.session() as s:
        assert s.scalar(select(BodyMapPin.id)) is None


def test_moving_a_pin_of_an_unknown_patient_is_refused(workspace: Workspace) -> None:
    with pytest.raises(NotFoundError):
        BodyMapService(workspace, DOC).move_pin("nobody", "lesion", "1", "front", 0.5, 0.5)


def test_pins_go_when_the_patient_goes(workspace: Workspace) -> None:
    pid, _ids = _patient_with_two_visits(workspace)
    BodyMapService(workspace, DOC).move_pin(pid, "lesion", "1", "front", 0.5, 0.5)
    with workspace.db.session() as s:
        for c in s.scalars(select(Case).where(Case.patient_id == pid)):
            s.delete(c)
        s.flush()
        patient = s.get(Patient, pid)
        assert patient is not None
        s.delete(patient)
    with workspace.db.session() as s:  # the database cascades the patient's pins away
        assert s.scalar(select(BodyMapPin.id)) is None


# -- migration -------------------------------------------------------------------------------
def test_migration_0004_adds_the_pin_table_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    url = "sqlite:///" + path.as_posix()
    command.upgrade(alembic_config(url), "0003")
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "body_map_pins" not in tables and "annotations" in tables
    finally:
        con.close()

    db = Database.open(url, backups_dir=tmp_path / "backups")  # backs up, then migrates
    db.close()
    assert list((tmp_path / "backups").iterdir())
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        cols = [r[1] for r in con.execute("PRAGMA table_info(body_map_pins)")]
        assert cols == ["id", "patient_id", "target_kind", "target_key", "view", "x", "y",
                        "moved_by", "moved_at"]
        unique = [r for r in con.execute("PRAGMA index_list(body_map_pins)") if r[2] == 1]
        assert any(r[1] == "ix_body_map_pins_target" for r in unique)
    finally:
        con.close()

    command.downgrade(alembic_config(url), "0003")
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "body_map_pins" not in tables
    finally:
        con.close()


def test_a_lesion_follows_its_site_pin_until_it_is_moved_itself(workspace: Workspace) -> None:
    pid, _ids = _patient_with_two_visits(workspace)
    svc = BodyMapService(workspace, DOC)
    svc.move_pin(pid, "site", "forearm:left:front", "front", 0.8, 0.5)
    one = svc.pins(pid).find("lesion", "1")
    assert one is not None and (one.view, one.x, one.y) == ("front", 0.8, 0.5)
    assert not one.adjusted
    svc.move_pin(pid, "lesion", "1", "back", 0.3, 0.4)
    svc.move_pin(pid, "site", "forearm:left:front", "front", 0.7, 0.45)
    one = svc.pins(pid).find("lesion", "1")
    assert one is not None and (one.view, one.x, one.y) == ("back", 0.3, 0.4) and one.adjusted
