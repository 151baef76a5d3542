"""Annotations: geometry maths, measurement units, storage, undo/redo, export."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from derm_workstation.core import annotations as an
from derm_workstation.core import intake
from derm_workstation.core.audit import verify_chain
from derm_workstation.core.command_stack import CommandStack
from derm_workstation.core.errors import InputError, NotFoundError, PermissionDeniedError
from derm_workstation.core.models import AuditEvent, Photo
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from tests.core.helpers import add_case, add_patient, jpeg_bytes

DOC = Actor("dr.house", "dermatologist")


def _photo(ws: Workspace, px_per_mm: float | None = None) -> str:
    with ws.db.session() as s:
        p = add_patient(s, "Secret", "Name")
        c = add_case(s, p, datetime(2026, 1, 2, tzinfo=UTC))
        ph = intake.add_photo(s, ws.images, c, jpeg_bytes())
        ph.calibration_px_per_mm = px_per_mm
        ph.calibration_method = "ruler" if px_per_mm else None
        return ph.id


# -- maths on known geometry ----------------------------------------------------------------
def test_ruler_length_px_and_mm() -> None:
    g = an.make_geometry([(10, 10), (40, 50)])  # a 3-4-5 triangle: 50 px
    m = an.measure("ruler", g, None)
    assert m.px["length"] == pytest.approx(50.0)
    assert not m.calibrated and m.mm is None
    assert m.text == "50 px (uncalibrated)"
    m = an.measure("ruler", g, 10.0)
    assert m.mm == {"length": pytest.approx(5.0)}
    assert m.text == "5.0 mm"


def test_polygon_area_is_shoelace_and_perimeter_closed() -> None:
    # an L shape: 4x4 square minus a 2x2 corner = 12 px²; perimeter 16
    g = an.make_geometry([(0, 0), (4, 0), (4, 2), (2, 2), (2, 4), (0, 4)])
    m = an.measure("polygon", g, None)
    assert m.px["area"] == pytest.approx(12.0)
    assert m.px["perimeter"] == pytest.approx(16.0)
    # clockwise order gives the same area
    g2 = an.make_geometry(list(reversed(an.points_of(g))))
    assert an.measure("freehand", g2, None).px["area"] == pytest.approx(12.0)
    m = an.measure("polygon", g, 2.0)
    assert m.mm is not None
    assert m.mm["area"] == pytest.approx(3.0) and m.mm["perimeter"] == pytest.approx(8.0)
    assert "3.0 mm²" in m.text and "uncalibrated" not in m.text


def test_an_outline_that_crosses_itself_counts_what_it_encloses() -> None:
    # a bow tie: two triangles of 25 px² each, turning opposite ways (shoelace: 0)
    bow = [(0, 0), (10, 10), (10, 0), (0, 10)]
    assert an.shoelace_area(bow) == pytest.approx(0.0)
    assert an.self_intersects(bow)
    assert an.measure("freehand", an.make_geometry(bow), None).px["area"] == pytest.approx(50.0)
    # larger crossing outlines against the pixels the ROI fills (even-odd rule)
    from derm_workstation.core.lesion_analysis import roi_mask

    for pts in ([(0, 0), (2, 0), (6, 4), (6, 0), (2, 4)],  # loops of 800 and 400 (x 100)
                [(0, 0), (40, 0), (0, 40), (40, 40)],  # an hourglass
                [(0, 30), (60, 0), (60, 60), (0, 10), (30, 0), (30, 60)]):  # a knot
        f = 600 / max(max(p) for p in pts)
        scaled = [(x * f + 5, y * f + 5) for x, y in pts]
        raster = roi_mask("freehand", an.make_geometry(scaled), (700, 700)).sum()
        assert an.self_intersects(scaled)
        assert an.outline_area(scaled) == pytest.approx(raster, rel=0.01), pts
    two_loops = [(x * 10, y * 10) for x, y in [(0, 0), (2, 0), (6, 4), (6, 0), (2, 4)]]
    assert an.outline_area(two_loops) == pytest.approx(1200.0)  # by hand: 800 + 400
    # an hourglass whose level edges carry 50 corners each: over 64 corners, edges are
    # paired through a grid; its one crossing, if missed, would give an area of 0
    level = [40 * k / 49 for k in range(50)]
    hourglass = [(x, 0.0) for x in level] + [(x, 40.0) for x in level]
    assert len(hourglass) > 64 and an.outline_area(hourglass) == pytest.approx(800.0)
    # a scribble of 150 random corners: hundreds of crossings
    import random

    rng = random.Random(3)
    scribble = [(rng.uniform(5, 605), rng.uniform(5, 605)) for _ in range(150)]
    raster = roi_mask("freehand", an.make_geometry(scribble), (620, 620)).sum()
    assert an.outline_area(scribble) == pytest.approx(raster, rel=0.02)
    # a freehand circle whose stroke overshoots its start by a tenth of a turn
    turn = [2 * math.pi * 1.1 * k / 400 for k in range(401)]
    circle = [(200 + 100 * math.cos(t), 200 + 100 * math.sin(t)) for t in turn]
    assert an.self_intersects(circle)
    raster = roi_mask("freehand", an.make_geometry(circle), (400, 400)).sum()
    assert an.outline_area(circle) == pytest.approx(raster, rel=0.002)
    assert an.outline_area(circle) == pytest.approx(math.pi * 100 ** 2, rel=0.01)
    # outlines that do not cross: the shoelace formula, and no crossing reported
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert not an.self_intersects(square) and an.outline_area(square) == 100.0


def test_ellipse_area_pi_a_b() -> None:
    g = an.make_geometry([(100, 50), (40, 90)])  # a = 30, b = 20, corners in any order
    m = an.measure("ellipse", g, None)
    assert m.px["area"] == pytest.approx(math.pi * 30 * 20)
    assert m.px["width"] == pytest.approx(60) and m.px["height"] == pytest.approx(40)
    circle = an.measure("ellipse", an.make_geometry([(0, 0), (20, 20)]), 5.0)
    assert circle.px["perimeter"] == pytest.approx(2 * math.pi * 10)
    assert circle.mm is not None
    assert circle.mm["area"] == pytest.approx(math.pi * 4)  # r = 2 mm
    assert "12.6 mm²" in circle.text


@pytest.mark.parametrize(("a", "b", "deg"), [
    ((10, 0), (0, 10), 90.0),
    ((10, 0), (10, 10), 45.0),
    ((10, 0), (-10, 0), 180.0),
    ((10, 0), (5, 5 * math.sqrt(3)), 60.0),
])
def test_angle_degrees(a: tuple[float, float], b: tuple[float, float], deg: float) -> None:
    g = an.make_geometry([a, (0, 0), b])
    m = an.measure("angle", g, None)
    assert m.px["angle"] == pytest.approx(deg)
    assert "uncalibrated" not in m.text  # an angle needs no calibration
    assert an.measure("angle", g, 3.0).mm == {"angle": pytest.approx(deg)}


def test_bidirectional_short_axis_is_perpendicular_through_middle() -> None:
    p0, p1 = (10.0, 20.0), (70.0, 100.0)  # 100 px long
    s0, s1 = an.perpendicular_short_axis(p0, p1, 0.4)
    g = an.make_geometry([p0, p1, s0, s1])
    m = an.measure("bidirectional", g, 4.0)
    assert m.px["long"] == pytest.approx(100.0) and m.px["short"] == pytest.approx(40.0)
    assert m.mm == {"long": pytest.approx(25.0), "short": pytest.approx(10.0)}
    long_v = (p1[0] - p0[0], p1[1] - p0[1])
    short_v = (s1[0] - s0[0], s1[1] - s0[1])
    assert long_v[0] * short_v[0] + long_v[1] * short_v[1] == pytest.approx(0.0, abs=1e-9)
    assert ((s0[0] + s1[0]) / 2, (s0[1] + s1[1]) / 2) == pytest.approx((40.0, 60.0))
    # moving a long-axis end keeps the short axis perpendicular and its ratio
    moved = an.with_point("bidirectional", g, 1, (110.0, 20.0))
    q = an.points_of(moved)
    assert an.distance(q[2], q[3]) == pytest.approx(0.4 * an.distance(q[0], q[1]))
    assert (q[3][0] - q[2][0]) * (q[1][0] - q[0][0]) + (q[3][1] - q[2][1]) * (
        q[1][1] - q[0][1]) == pytest.approx(0.0, abs=1e-9)
    # dragging a short-axis end sets only its length
    stretched = an.with_point("bidirectional", g, 3, (40.0 + 24.0, 60.0 - 18.0))
    q = an.points_of(stretched)
    assert an.distance(q[2], q[3]) == pytest.approx(60.0)
    assert q[0] == p0 and q[1] == p1


def test_polyline_and_arrow_lengths() -> None:
    g = an.make_geometry([(0, 0), (3, 4), (3, 14)])
    assert an.measure("polyline", g, None).px["length"] == pytest.approx(15.0)
    assert an.measure("marker", an.make_geometry([(1, 1)]), None).text == ""


@pytest.mark.parametrize(("kind", "points"), [
    ("ruler", [(0, 0)]),
    ("ruler", [(0, 0), (1, 1), (2, 2)]),
    ("polygon", [(0, 0), (1, 1)]),
    ("marker", []),
    ("nonsense", [(0, 0)]),
    ("ruler", [(0, 0), (float("nan"), 1)]),
])
def test_invalid_geometry_is_an_input_error(kind: str,
                                            points: list[tuple[float, float]]) -> None:
    with pytest.raises(InputError):
        an.validate(kind, an.make_geometry(points))


# -- storage --------------------------------------------------------------------------------
def test_annotations_survive_restart_with_author_and_time(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "data")
    photo_id = _photo(ws, px_per_mm=8.0)
    svc = an.AnnotationService(ws, DOC)
    r = svc.add(photo_id, "ruler", [(0, 0), (80, 0)])
    mk = svc.add(photo_id, "marker", [(5, 5)], lesion_number=3)
    ar = svc.add(photo_id, "arrow", [(0, 0), (9, 9)], label="check this edge")
    ws.close()

    ws2 = Workspace.open(tmp_path / "data")
    try:
        svc2 = an.AnnotationService(ws2, DOC)
        got = svc2.list(photo_id)
        assert [a.id for a in got] == [r.id, mk.id, ar.id]
        assert got[0].geometry == {"points": [[0.0, 0.0], [80.0, 0.0]]}
        assert got[0].author == "dr.house"
        assert got[0].created_at is not None and got[0].created_at.tzinfo is not None
        assert got[1].lesion_number == 3
        assert got[2].label == "check this edge"
        assert svc2.calibration(photo_id) == 8.0
    finally:
        ws2.close()


def test_update_delete_and_audit_without_text(workspace: Workspace) -> None:
    photo_id = _photo(workspace)
    svc = an.AnnotationService(workspace, DOC)
    a = svc.add(photo_id, "arrow", [(0, 0), (10, 10)], label="Secret Name lesion")
    b = svc.update(a.id, geometry=an.translate(a.geometry, 5, 5), label="moved")
    assert b.points == [(5.0, 5.0), (15.0, 15.0)] and b.label == "moved"
    assert b.created_at == a.created_at
    assert svc.delete(a.id) is True
    assert svc.delete(a.id) is False
    assert svc.list(photo_id) == []
    with pytest.raises(NotFoundError):
        svc.get(a.id)
    with workspace.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.entity_type == "annotation")
                                .order_by(AuditEvent.id)))
        assert [e.action for e in events] == ["annotation.add", "annotation.update",
                                              "annotation.delete"]
        dumped = json.dumps([e.detail for e in events])
        assert "Secret" not in dumped and "moved" not in dumped
        assert verify_chain(s) is None


def test_cascade_when_photo_deleted(workspace: Workspace) -> None:
    photo_id = _photo(workspace)
    svc = an.AnnotationService(workspace, DOC)
    svc.add(photo_id, "marker", [(1, 2)], lesion_number=1)
    with workspace.db.session() as s:
        ph = s.get(Photo, photo_id)
        assert ph is not None
        s.delete(ph)
    assert svc.list(photo_id) == []


def test_permissions(workspace: Workspace) -> None:
    photo_id = _photo(workspace)
    a = an.AnnotationService(workspace, DOC).add(photo_id, "ruler", [(0, 0), (1, 1)])
    nurse = an.AnnotationService(workspace, Actor("n", "nurse"))
    assert [v.id for v in nurse.list(photo_id)] == [a.id]  # may look
    with pytest.raises(PermissionDeniedError):
        nurse.add(photo_id, "ruler", [(0, 0), (1, 1)])
    with pytest.raises(PermissionDeniedError):
        nurse.delete(a.id)
    admin = an.AnnotationService(workspace, Actor("a", "admin"))
    with pytest.raises(PermissionDeniedError):
        admin.list(photo_id)


def test_unknown_photo_and_kind_change(workspace: Workspace) -> None:
    photo_id = _photo(workspace)
    svc = an.AnnotationService(workspace, DOC)
    with pytest.raises(NotFoundError):
        svc.add("no-such-photo", "ruler", [(0, 0), (1, 1)])
    a = svc.add(photo_id, "ruler", [(0, 0), (1, 1)])
    from dataclasses import replace
    with pytest.raises(InputError):
        svc.save(replace(a, kind="polyline"))


# -- undo / redo through the command stack --------------------------------------------------
def test_undo_redo_persists_each_step(workspace: Workspace) -> None:
    photo_id = _photo(workspace, px_per_mm=4.0)
    svc = an.AnnotationService(workspace, DOC)
    doc = an.AnnotationSet(photo_id, svc.calibration(photo_id), sink=an.service_sink(svc))
    repaints: list[int] = []
    doc.subscribe(lambda: repaints.append(len(doc)))
    stack = CommandStack()

    ruler = an.new_annotation(photo_id, "ruler", [(0, 0), (40, 0)], DOC.username)
    stack.push(an.AddAnnotation(doc, ruler))
    assert doc.measure(ruler).text == "10.0 mm"
    moved = ruler.with_geometry(an.translate(ruler.geometry, 10, 20))
    stack.push(an.ChangeAnnotation(doc, ruler, moved, "Move ruler"))
    stack.push(an.DeleteAnnotation(doc, ruler.id))
    assert svc.list(photo_id) == []

    stack.undo()  # delete undone: back, moved
    assert [v.points for v in svc.list(photo_id)] == [[(10.0, 20.0), (50.0, 20.0)]]
    stack.undo()  # move undone
    assert [v.points for v in svc.list(photo_id)] == [[(0.0, 0.0), (40.0, 0.0)]]
    stack.undo()  # add undone
    assert svc.list(photo_id) == [] and len(doc) == 0
    stack.redo()
    stack.redo()
    assert [v.points for v in svc.list(photo_id)] == [[(10.0, 20.0), (50.0, 20.0)]]
    assert svc.list(photo_id)[0].author == "dr.house"
    assert repaints == [1, 1, 0, 1, 1, 0, 1, 1]

    with pytest.raises(NotFoundError):
        an.DeleteAnnotation(doc, "missing")
    assert doc.next_lesion_number() == 1


def test_json_export(workspace: Workspace, tmp_path: Path) -> None:
    cal = _photo(workspace, px_per_mm=10.0)
    svc = an.AnnotationService(workspace, DOC)
    svc.add(cal, "ellipse", [(0, 0), (40, 20)])
    svc.add(cal, "marker", [(3, 4)], lesion_number=2)
    doc = svc.export_json(cal)
    text = json.dumps(doc)  # serialisable as is
    back = json.loads(text)
    assert back["format"] == "derm-workstation.annotations"
    assert back["calibration"] == {"px_per_mm": 10.0, "method": "ruler"}
    assert back["photo"]["id"] == cal and back["photo"]["width"] > 0
    first = back["annotations"][0]
    assert first["kind"] == "ellipse" and first["author"] == "dr.house"
    assert first["measurement"]["calibrated"] is True
    assert first["measurement"]["mm"]["area"] == pytest.approx(math.pi * 2 * 1)
    assert back["annotations"][1]["lesion_number"] == 2

    with workspace.db.session() as s:
        p = add_patient(s, "Other", "Person")
        c = add_case(s, p, datetime(2026, 1, 3, tzinfo=UTC), actor=SYSTEM)
        unc = intake.add_photo(s, workspace.images, c, jpeg_bytes(color=(9, 9, 9))).id
    svc.add(unc, "ruler", [(0, 0), (0, 30)])
    out = svc.export_json(unc)
    assert out["calibration"] is None
    m = out["annotations"][0]["measurement"]
    assert m["calibrated"] is False and m["mm"] is None and "uncalibrated" in m["text"]
