"""Lesion analysis of stored photos: calibration, outline, metrics and export.

Real workspaces (SQLite in tmp), real synthetic photos of skin with a coin of known
size and a lesion with a known mask, decoded by the real pipeline.
"""

from __future__ import annotations

import io
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from derm_workstation.core import annotations as an
from derm_workstation.core import intake
from derm_workstation.core import lesion_analysis as la
from derm_workstation.core.audit import verify_chain
from derm_workstation.core.errors import InputError, NotFoundError, PermissionDeniedError
from derm_workstation.core.models import AuditEvent, Photo
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.imaging.calibration import NoReferenceFound
from derm_workstation.imaging.segmentation import NoLesionFound
from derm_workstation.imaging.synthetic import PhotoSpec, render_photo
from tests.core.helpers import add_case, add_patient

DOC = Actor("dr.smith", "dermatologist")
NURSE = Actor("n.joy", "nurse")
PPM = 9.0

COIN = render_photo(PhotoSpec(seed=21, kind="pigmented", fitzpatrick=3, severity=0.5,
                              width=720, height=540, px_per_mm=PPM, with_reference=True,
                              reference_mm=23.25, reference_name="€1"))


def _blank(w: int = 400, h: int = 300, gps: bool = False) -> bytes:
    arr = np.full((h, w, 3), (205, 160, 140), np.uint8)
    buf = io.BytesIO()
    kw = {}
    if gps:
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"
        exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.0)}
        kw["exif"] = exif
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.fixture
def ws(tmp_path: Path):
    w = Workspace.open(tmp_path / "data")
    yield w
    w.close()


def _photo(ws: Workspace, data: bytes, ppm: float | None = None) -> str:
    with ws.db.session() as s:
        p = add_patient(s, "Secret", "Name")
        c = add_case(s, p, datetime(2026, 1, 2, tzinfo=UTC))
        ph = intake.add_photo(s, ws.images, c, data)
        ph.calibration_px_per_mm = ppm
        return ph.id


def _events(ws: Workspace, action: str) -> list[AuditEvent]:
    with ws.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.id)))
        s.expunge_all()
        return rows


def _stored(ws: Workspace, pid: str) -> tuple[float | None, str | None]:
    with ws.db.session() as s:
        ph = s.get(Photo, pid)
        return ph.calibration_px_per_mm, ph.calibration_method


# -- references and words ----------------------------------------------------------------------
def test_reference_choices_cover_the_issue_list() -> None:
    got = {c.name: c.diameter_mm for c in la.reference_choices()}
    assert got["us-1c"] == 19.05 and got["us-5c"] == 21.21 and got["us-10c"] == 17.91
    assert got["us-25c"] == 24.26 and got["eur-1"] == 23.25 and got["eur-2"] == 25.75
    assert got["eur-1c"] == 16.25 and got["uk-1p"] == 20.3 and got["uk-2p"] == 25.9
    assert got["gbp-1"] == 23.43 and got["sticker-10mm"] == 10.0


def test_reference_method_and_labels() -> None:
    assert la.reference_method("eur-1", None) == ("reference:eur-1", 23.25)
    assert la.reference_method(None, 10) == ("custom:10mm", 10.0)
    assert la.reference_method("sticker-12mm", None) == ("reference:sticker-12mm", 12.0)
    with pytest.raises(InputError, match="Unknown reference"):
        la.reference_method("doubloon", None)
    with pytest.raises(InputError, match="between 1 and 200"):
        la.reference_method(None, 0.5)
    assert la.calibration_label("reference:eur-1") == "€1 coin"
    assert la.calibration_label("reference:us-1c") == "US 1¢ (penny) coin"
    assert la.calibration_label("reference:sticker-10mm") == "calibration sticker 10 mm"
    assert la.calibration_label("reference:sticker-12mm") == "calibration sticker 12 mm"
    assert la.calibration_label("custom:10mm") == "10 mm reference"
    assert la.calibration_label("ruler-line") == "ruler line"
    assert la.calibration_label(None) == ""


def test_calibration_state_describes_itself() -> None:
    s = la.CalibrationState("p", 12.44, "reference:eur-1", "dr.smith")
    assert s.describe() == "Calibrated: 12.4 px/mm (€1 coin, confirmed by dr.smith)"
    assert la.CalibrationState("p", None, None).describe() == (
        "Uncalibrated — measurements in pixels")
    assert la.CalibrationState("p", 5.0, None).describe() == "Calibrated: 5.0 px/mm"


# -- calibration -----------------------------------------------------------------------------
def test_detect_confirm_and_state_with_audit(ws: Workspace) -> None:
    pid = _photo(ws, COIN.jpeg)
    svc = la.LesionAnalysisService(ws, DOC)
    cal = svc.detect_reference(pid, "eur-1")
    assert cal.px_per_mm == pytest.approx(PPM, rel=0.02)
    assert cal.ellipse is not None
    assert cal.ellipse.cx == pytest.approx(COIN.reference.cx, abs=2)
    assert _stored(ws, pid) == (None, None)  # detection stores nothing
    state = svc.confirm_reference(pid, cal, "eur-1")
    assert state.px_per_mm == pytest.approx(cal.px_per_mm)
    assert state.method == "reference:eur-1" and state.confirmed_by == "dr.smith"
    assert state.describe().startswith("Calibrated: 9.0 px/mm (€1 coin, confirmed by dr.smith")
    [ev] = _events(ws, "photo.calibrate")
    assert ev.entity_id == pid and ev.detail["reference"] == "eur-1"
    assert ev.detail["confidence"] == pytest.approx(cal.confidence, abs=1e-3)
    assert set(ev.detail["ellipse"]) == {"cx", "cy", "rx", "ry", "angle"}
    assert ev.detail["previous_px_per_mm"] is None
    # another user reads who confirmed it
    again = la.LesionAnalysisService(ws, NURSE).calibration_state(pid)
    assert again.confirmed_by == "dr.smith" and again.confidence == pytest.approx(
        cal.confidence, abs=1e-3)
    with ws.db.session() as s:
        assert verify_chain(s) is None


def test_custom_diameter_and_lesion_far_away_warning(ws: Workspace) -> None:
    pid = _photo(ws, COIN.jpeg)
    svc = la.LesionAnalysisService(ws, DOC)
    # the coin said to be twice as large: the scale halves (the user chose it)
    cal = svc.detect_reference(pid, None, 46.5)
    assert cal.px_per_mm == pytest.approx(PPM / 2, rel=0.02)
    st = svc.confirm_reference(pid, cal, None, 46.5)
    assert st.method == "custom:46.5mm" and st.describe().startswith(
        "Calibrated: 4.5 px/mm (46.5 mm reference, confirmed by dr.smith)")


def test_no_reference_found_is_a_plain_input_error(ws: Workspace) -> None:
    pid = _photo(ws, _blank())
    svc = la.LesionAnalysisService(ws, DOC)
    with pytest.raises(NoReferenceFound) as err:
        svc.detect_reference(pid, "us-25c")
    assert err.value.exit_code == 2 and "coin" in err.value.message
    assert _stored(ws, pid) == (None, None)


def test_outlined_lesion_is_never_taken_for_the_reference(ws: Workspace) -> None:
    # a smooth dark oval and no coin: with the oval outlined, nothing is found
    y, x = np.mgrid[0:300, 0:400]
    arr = np.full((300, 400, 3), (205, 160, 140), np.uint8)
    inside = ((x - 200) / 70.0) ** 2 + ((y - 150) / 55.0) ** 2 < 1
    arr[inside] = (80, 50, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    pid = _photo(ws, buf.getvalue())
    svc = la.LesionAnalysisService(ws, DOC)
    roi = an.AnnotationService(ws, DOC).add(pid, "ellipse", [(130, 95), (270, 205)])
    with pytest.raises(NoReferenceFound):
        svc.detect_reference(pid, "us-25c", lesion_roi=roi)


def test_ruler_line_calibration_and_clear(ws: Workspace) -> None:
    pid = _photo(ws, _blank())
    svc = la.LesionAnalysisService(ws, DOC)
    st = svc.calibrate_by_line(pid, (10.0, 20.0), (310.0, 20.0), 15.0)
    assert st.px_per_mm == pytest.approx(20.0) and st.method == "ruler-line"
    assert st.describe() == "Calibrated: 20.0 px/mm (ruler line, confirmed by dr.smith)"
    assert _stored(ws, pid) == (pytest.approx(20.0), "ruler-line")
    short = svc.calibrate_by_line(pid, (10.0, 20.0), (40.0, 20.0), 1.0)
    assert short.warnings and "30 pixels" in short.warnings[0]
    with pytest.raises(InputError, match="too short"):
        svc.calibrate_by_line(pid, (10.0, 20.0), (12.0, 20.0), 1.0)
    with pytest.raises(InputError, match="on the photo"):
        svc.calibrate_by_line(pid, (10.0, 20.0), (900.0, 20.0), 10.0)
    with pytest.raises(InputError, match="ruler length"):
        svc.calibrate_by_line(pid, (10.0, 20.0), (300.0, 20.0), 0.0)
    st = svc.clear_calibration(pid)
    assert not st.calibrated and st.confirmed_by is None
    assert _stored(ws, pid) == (None, None)
    [clear] = _events(ws, "photo.calibration_clear")
    assert clear.detail["previous_method"] == "ruler-line"
    assert len(_events(ws, "photo.calibrate")) == 2


def test_confirm_validates_and_needs_edit_permission(ws: Workspace) -> None:
    pid = _photo(ws, _blank())
    svc = la.LesionAnalysisService(ws, DOC)
    with pytest.raises(InputError):
        svc.confirm_calibration(pid, -3.0, "manual")
    with pytest.raises(InputError):
        svc.confirm_calibration(pid, float("nan"), "manual")
    with pytest.raises(InputError):
        svc.confirm_calibration(pid, 3.0, "x" * 40)
    with pytest.raises(NotFoundError):
        svc.confirm_calibration("no-such-photo", 3.0, "manual")
    nurse = la.LesionAnalysisService(ws, NURSE)
    for call in (lambda: nurse.confirm_calibration(pid, 3.0, "manual"),
                 lambda: nurse.calibrate_by_line(pid, (0, 0), (100, 0), 10),
                 lambda: nurse.clear_calibration(pid)):
        with pytest.raises(PermissionDeniedError):
            call()
    assert _stored(ws, pid) == (None, None) and _events(ws, "photo.calibrate") == []
    outsider = la.LesionAnalysisService(ws, Actor("adm", "admin"))
    with pytest.raises(PermissionDeniedError):
        outsider.rgb(pid)


# -- outline and metrics -----------------------------------------------------------------------
def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_segment_proposes_an_editable_outline_with_the_marker_number(ws: Workspace) -> None:
    pid = _photo(ws, COIN.jpeg, PPM)
    svc = la.LesionAnalysisService(ws, DOC)
    ys, xs = np.nonzero(COIN.lesion_mask)
    centre = (float(np.median(xs)), float(np.median(ys)))
    anns = an.AnnotationService(ws, DOC)
    anns.add(pid, "marker", [(5, 5)], lesion_number=1)  # elsewhere
    anns.add(pid, "marker", [centre], lesion_number=3)
    t = time.perf_counter()
    p = svc.segment(pid)
    took = time.perf_counter() - t
    assert p.method == "automatic" and 0 < p.confidence <= 1 and p.lesion_number == 3
    assert 10 <= len(p.points) <= la.OUTLINE_POINTS + 1  # few handles for a small lesion
    mask = la.roi_mask("polygon", an.make_geometry(p.points), (720, 540))
    assert _jaccard(mask, COIN.lesion_mask) > 0.75
    assert took < 10  # generous: a shared, slow machine
    seeded = svc.segment(pid, centre)
    assert seeded.method == "seed" and seeded.lesion_number == 3
    # the proposal is valid as a polygon annotation
    an.validate("polygon", an.make_geometry(seeded.points))


def test_segment_on_bare_skin_says_no_lesion(ws: Workspace) -> None:
    pid = _photo(ws, _blank())
    with pytest.raises(NoLesionFound) as err:
        la.LesionAnalysisService(ws, DOC).segment(pid)
    assert "Draw the outline by hand" in err.value.message


def test_roi_masks_are_exact() -> None:
    sq = la.roi_mask("polygon", an.make_geometry([(10, 10), (110, 10), (110, 110), (10, 110)]),
                     (200, 150))
    assert sq.sum() == 100 * 100 and sq[10, 10] and not sq[9, 10] and sq[109, 109]
    ell = la.roi_mask("ellipse", an.make_geometry([(20, 20), (180, 120)]), (200, 150))
    assert ell.sum() == pytest.approx(math.pi * 80 * 50, rel=0.005)
    free = la.roi_mask("freehand", an.make_geometry([(0, 0), (40, 0), (0, 40)]), (50, 50))
    assert free.sum() == pytest.approx(800, rel=0.06)
    with pytest.raises(InputError, match="closed outline"):
        la.roi_mask("ruler", an.make_geometry([(0, 0), (4, 4)]), (10, 10))


def test_metrics_of_synthetic_shapes_are_exact(ws: Workspace) -> None:
    pid = _photo(ws, _blank(400, 300), 10.0)
    svc = la.LesionAnalysisService(ws, DOC)
    anns = an.AnnotationService(ws, DOC)
    square = anns.add(pid, "polygon", [(100, 100), (200, 100), (200, 200), (100, 200)])
    m = svc.metrics(pid, square.id)
    assert m.calibrated and m.area_mm2 == pytest.approx(100.0)
    # drawn outlines are measured on their vectors: exact, as their labels say
    assert m.perimeter_mm == pytest.approx(40.0)
    assert m.max_diameter_mm == pytest.approx(math.sqrt(2) * 10)
    assert m.min_diameter_mm == pytest.approx(10.0)
    assert m.border_irregularity == pytest.approx(4 / math.pi)
    assert max(m.asymmetry) < 0.02
    circle = anns.add(pid, "ellipse", [(150, 100), (250, 200)])
    c = svc.metrics(pid, circle)
    assert c.area_mm2 == pytest.approx(math.pi * 25)
    assert c.perimeter_mm == pytest.approx(math.pi * 10)
    assert c.max_diameter_mm == pytest.approx(10.0)
    assert c.border_irregularity == pytest.approx(1.0)
    oval = anns.add(pid, "ellipse", [(100, 120), (300, 180)])
    o = svc.metrics(pid, oval.id)
    assert o.max_diameter_mm == pytest.approx(20.0)
    assert o.min_diameter_mm == pytest.approx(6.0)
    # uncalibrated: pixels only, never a guessed mm
    svc.clear_calibration(pid)
    u = svc.metrics(svc.photo_facts(pid), square.id)
    assert not u.calibrated and u.area_mm2 is None and u.area_px == pytest.approx(10000)
    ruler = anns.add(pid, "ruler", [(0, 0), (10, 0)])
    with pytest.raises(InputError, match="no area"):
        svc.metrics(pid, ruler.id)
    off = anns.add(pid, "polygon", [(500, 500), (600, 500), (600, 600)])
    with pytest.raises(InputError, match="outside the photo"):
        svc.metrics(pid, off.id)


def test_metrics_say_what_the_label_and_the_change_over_time_say(ws: Workspace) -> None:
    from derm_workstation.core.lesions import roi_size

    pid = _photo(ws, _blank(400, 300), 10.0)
    svc = la.LesionAnalysisService(ws, DOC)
    anns = an.AnnotationService(ws, DOC)
    # a freehand circle whose stroke overshoots where it started (it crosses itself)
    turn = [2 * math.pi * 1.1 * k / 300 for k in range(301)]
    stroke = [(200 + 80 * math.cos(t), 150 + 60 * math.sin(t)) for t in turn]
    # the outline an automatic proposal gives: many corners along a wavy border
    wavy = [(200 + (70 + 6 * math.sin(7 * t)) * math.cos(t),
             150 + (50 + 6 * math.sin(7 * t)) * math.sin(t))
            for t in (2 * math.pi * k / 400 for k in range(400))]
    for kind, pts in (("freehand", stroke), ("polygon", wavy)):
        view = anns.add(pid, kind, pts)
        m = svc.metrics(pid, view.id)
        label = an.measure(kind, view.geometry, 10.0)
        assert label.mm is not None
        assert m.area_mm2 == pytest.approx(label.mm["area"], rel=1e-9)
        assert m.perimeter_mm == pytest.approx(label.mm["perimeter"], rel=1e-9)
        size = roi_size(kind, view.geometry)
        assert size is not None
        assert m.area_px == pytest.approx(size[0]) and m.max_diameter_px == pytest.approx(size[1])
        assert m.border_irregularity == pytest.approx(
            m.perimeter_px ** 2 / (4 * math.pi * m.area_px))
    # the overshooting stroke: the ellipse it encloses, not less
    m = svc.metrics(pid, anns.add(pid, "freehand", stroke).id)
    assert m.area_px == pytest.approx(math.pi * 80 * 60, rel=0.01)
    # an outline past the photo's edge: only the part on the photo is measured
    part = anns.add(pid, "polygon", [(300, 100), (500, 100), (500, 200), (300, 200)])
    m = svc.metrics(pid, part.id)
    assert m.area_px == pytest.approx(100 * 100)
    assert any("edge of the photo" in w for w in m.warnings)


def test_metrics_of_a_lesion_colours(ws: Workspace) -> None:
    pid = _photo(ws, COIN.jpeg, PPM)
    svc = la.LesionAnalysisService(ws, DOC)
    p = svc.segment(pid)
    view = an.new_annotation(pid, "polygon", p.points, "dr.smith")  # not stored: GUI doc
    t = time.perf_counter()
    m = svc.metrics(svc.photo_facts(pid), view)
    assert time.perf_counter() - t < 5
    assert m.area_mm2 == pytest.approx(COIN.lesion_mask.sum() / PPM ** 2, rel=0.2)
    assert set(m.colours_present) & {"dark brown", "light brown", "black"}
    assert m.mean_lab[0] < 60 and m.tds is None


# -- export -------------------------------------------------------------------------------------
def test_burn_in_draws_labels_and_a_scale_bar() -> None:
    img = Image.new("RGB", (800, 600), (200, 160, 140))
    views = [an.new_annotation("p", "ruler", [(100, 300), (500, 300)], "me"),
             an.new_annotation("p", "marker", [(600, 100)], "me", lesion_number=4),
             an.new_annotation("p", "arrow", [(100, 100), (200, 200)], "me", label="here")]
    out = la.burn_in(img, views, 10.0)
    a = np.asarray(out)
    assert img.getpixel((300, 300)) == (200, 160, 140)  # the original is untouched
    r, g, b = a[300, 300]
    assert r > 230 and g > 190 and b < 120  # the yellow ruler
    assert (a[560:585, 20:140] > 240).all(axis=2).sum() > 150  # the white scale bar
    assert la.scale_bar_mm(10.0, 800) == 20.0
    plain = np.asarray(la.burn_in(img, views, None))
    assert (plain[560:585, 20:140] > 240).all(axis=2).sum() == 0  # uncalibrated: no bar
    # drawn in the image's own pixels when the copy is smaller than the photo
    half = np.asarray(la.burn_in(img.resize((400, 300)), views, 10.0, (800, 600)))
    assert half[150, 150][0] > 230 and half[150, 150][2] < 120


def test_export_writes_new_files_without_metadata(ws: Workspace, tmp_path: Path) -> None:
    pid = _photo(ws, _blank(gps=True), 10.0)
    anns = an.AnnotationService(ws, DOC)
    anns.add(pid, "ruler", [(50, 100), (250, 100)])
    anns.add(pid, "polygon", [(100, 150), (200, 150), (200, 250)], lesion_number=1)
    svc = la.LesionAnalysisService(ws, DOC)
    res = svc.export(pid, image_out=tmp_path / "a.jpg", json_out=tmp_path / "a.json")
    assert res["image_format"] == "JPEG" and res["annotations"] == 2 and res["calibrated"]
    data = (tmp_path / "a.jpg").read_bytes()
    im = Image.open(io.BytesIO(data))
    assert im.size == (400, 300) and not im.getexif() and b"PhoneMaker" not in data
    assert "exif" not in im.info and "xmp" not in im.info
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["calibration"]["px_per_mm"] == 10.0
    assert doc["annotations"][0]["measurement"]["mm"]["length"] == pytest.approx(20.0)
    png = tmp_path / "b.png"
    assert svc.write_annotated(pid, png) == "PNG"
    pim = Image.open(png)
    assert pim.format == "PNG" and not pim.info.get("exif") and not pim.getexif()
    with pytest.raises(InputError, match=r"\.jpg"):
        svc.write_annotated(pid, tmp_path / "c.gif")
    with pytest.raises(InputError, match="does not exist"):
        svc.write_annotated(pid, tmp_path / "nope" / "c.jpg")
    with pytest.raises(InputError, match="--json-out"):
        svc.export(pid)
    assert [e.detail["what"] for e in _events(ws, "photo.export")] == [
        "annotations-json", "annotated-copy"]
    assert not list(tmp_path.glob(".export-*"))  # no temp files left behind


def test_resolve_photo_id(ws: Workspace) -> None:
    pid = _photo(ws, _blank())
    svc = la.LesionAnalysisService(ws, DOC)
    assert svc.resolve_photo_id(pid) == pid and svc.resolve_photo_id(pid[:8]) == pid
    with pytest.raises(NotFoundError):
        svc.resolve_photo_id("zzzzzzzz")
