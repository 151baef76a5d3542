"""Numbered lesions across visits: observations from ROIs and markers, change in mm."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from derm_workstation.core import intake
from derm_workstation.core import lesions as le
from derm_workstation.core.annotations import AnnotationService
from derm_workstation.core.errors import NotFoundError, PermissionDeniedError
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from tests.core.helpers import add_case, add_patient, jpeg_bytes

DOC = Actor("dr.house", "dermatologist")


def _visits(ws: Workspace, ppm: tuple[float | None, ...]) -> tuple[str, list[str]]:
    """One patient, one case per entry of ``ppm`` (a month apart), one photo each."""
    photos: list[str] = []
    with ws.db.session() as s:
        p = add_patient(s, "Secret", "Name")
        for i, cal in enumerate(ppm):
            c = add_case(s, p, datetime(2026, 1 + 2 * i, 5, tzinfo=UTC), body_site="back")
            ph = intake.add_photo(s, ws.images, c, jpeg_bytes())
            ph.calibration_px_per_mm = cal
            s.flush()
            photos.append(ph.id)
        pid = p.id
    return pid, photos


def _square(x: float, y: float, side: float) -> list[tuple[float, float]]:
    return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]


def test_roi_size_exact_for_square_and_ellipse() -> None:
    area, longest = le.roi_size("polygon", {"points": _square(0, 0, 10)})  # type: ignore[misc]
    assert area == pytest.approx(100.0)
    assert longest == pytest.approx(10 * math.sqrt(2))
    area, longest = le.roi_size("ellipse", {"points": [[0, 0], [40, 20]]})  # type: ignore[misc]
    assert area == pytest.approx(math.pi * 20 * 10)
    assert longest == pytest.approx(40.0)
    assert le.roi_size("ruler", {"points": [[0, 0], [3, 4]]}) is None


def test_roi_contains() -> None:
    sq = {"points": _square(0, 0, 10)}
    assert le.roi_contains("polygon", sq, (5, 5))
    assert not le.roi_contains("polygon", sq, (15, 5))
    ell = {"points": [[0, 0], [40, 20]]}
    assert le.roi_contains("ellipse", ell, (20, 10))
    assert not le.roi_contains("ellipse", ell, (1, 1))  # inside the box, outside the ellipse


def test_growth_between_calibrated_visits(workspace: Workspace) -> None:
    pid, (old, new) = _visits(workspace, (10.0, 20.0))
    svc = AnnotationService(workspace, DOC)
    # visit 1: 5 mm square at 10 px/mm, numbered directly
    svc.add(old, "polygon", _square(100, 100, 50), lesion_number=3)
    # visit 2: 6 mm square at 20 px/mm, unnumbered ROI around marker 3
    svc.add(new, "marker", [(260, 260)], lesion_number=3)
    svc.add(new, "polygon", _square(200, 200, 120))
    lesions = le.LesionService(workspace, DOC)
    obs = lesions.observations(pid)
    assert list(obs) == [3]
    assert [o.photo_id for o in obs[3]] == [old, new]
    assert obs[3][0].area_mm2 == pytest.approx(25.0)
    assert obs[3][1].area_mm2 == pytest.approx(36.0)
    ch = lesions.change_for(new, 3)
    assert ch is not None
    assert ch.d_area_mm2 == pytest.approx(11.0)
    assert ch.d_area_pct == pytest.approx(44.0)
    assert ch.d_longest_mm == pytest.approx(math.sqrt(2))
    assert ch.d_longest_pct == pytest.approx(20.0)
    assert ch.changed is True
    assert ch.warnings == ()
    assert "area +11.0 mm² (+44 %)" in ch.summary()
    assert lesions.changes(pid)[3].later.photo_id == new
    # nothing earlier than the first visit
    assert lesions.change_for(old, 3) is None


def test_stable_lesion_is_not_changed(workspace: Workspace) -> None:
    pid, (old, new) = _visits(workspace, (10.0, 10.0))
    svc = AnnotationService(workspace, DOC)
    svc.add(old, "ellipse", [(0, 0), (60, 40)], lesion_number=1)
    svc.add(new, "ellipse", [(0, 0), (61, 40)], lesion_number=1)
    ch = le.LesionService(workspace, DOC).changes(pid)[1]
    assert ch.changed is False
    assert "no clear change" in ch.summary()


def test_uncalibrated_photo_gives_no_mm_and_a_warning(workspace: Workspace) -> None:
    _pid, (old, new) = _visits(workspace, (None, 12.0))
    svc = AnnotationService(workspace, DOC)
    svc.add(old, "polygon", _square(0, 0, 50), lesion_number=2)
    svc.add(new, "polygon", _square(0, 0, 90), lesion_number=2)
    ch = le.LesionService(workspace, DOC).change_for(new, 2)
    assert ch is not None
    assert ch.d_area_mm2 is None and ch.d_longest_mm is None and ch.d_area_pct is None
    assert ch.changed is None
    assert "earlier photo uncalibrated" in ch.warnings
    assert "no mm comparison" in ch.summary()


def test_marker_only_is_observed_but_not_measured(workspace: Workspace) -> None:
    pid, (old, new) = _visits(workspace, (10.0, 10.0))
    svc = AnnotationService(workspace, DOC)
    svc.add(old, "polygon", _square(0, 0, 50), lesion_number=4)
    svc.add(new, "marker", [(500, 500)], lesion_number=4)
    svc.add(new, "polygon", _square(0, 0, 50))  # does not contain the marker
    lesions = le.LesionService(workspace, DOC)
    here = next(o for o in lesions.observations(pid)[4] if o.photo_id == new)
    assert here.annotation_id is None and not here.measured
    ch = lesions.change_for(new, 4)
    assert ch is not None and ch.changed is None
    assert "the lesion has no outline on this photo" in ch.warnings
    assert 4 not in lesions.changes(pid)  # measured only once


def test_other_patients_lesions_are_not_mixed(workspace: Workspace) -> None:
    pid_a, (a1,) = _visits(workspace, (10.0,))
    _pid_b, (b1,) = _visits(workspace, (10.0,))
    svc = AnnotationService(workspace, DOC)
    svc.add(a1, "polygon", _square(0, 0, 50), lesion_number=1)
    svc.add(b1, "polygon", _square(0, 0, 80), lesion_number=1)
    lesions = le.LesionService(workspace, DOC)
    assert [o.photo_id for o in lesions.observations(pid_a)[1]] == [a1]
    assert lesions.change_for(a1, 1) is None


def test_unknown_photo_and_permission(workspace: Workspace) -> None:
    with pytest.raises(NotFoundError):
        le.LesionService(workspace, DOC).change_for("nope", 1)
    with pytest.raises(PermissionDeniedError):
        le.LesionService(workspace, Actor("x", "nobody")).observations("p")
