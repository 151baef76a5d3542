"""Numbered lesions followed across visits: observations, and change over time.

A lesion is followed by its number (the numbered lesion marker of
:mod:`derm_workstation.core.annotations`). On one photo, the lesion is *observed* by

* a closed ROI (polygon, freehand, ellipse) that carries the lesion number, or
* an unnumbered closed ROI that contains the marker with that number, or
* only the marker (then there is nothing to measure: the sizes are None).

Sizes come from the ROI's vectors in image pixels and the photo's calibration. A change
between two visits is given in millimetres only when BOTH photos are calibrated — the
pixel sizes of two photos taken from different distances say nothing about growth, and a
wrong number is worse than none. Lesions are matched by number, not by pixel position, so
the photos need not be aligned for the figures (alignment matters to the viewer only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from derm_workstation.core.annotations import (
    CLOSED_KINDS,
    Point,
    ellipse_axes,
    outline_area,
    point_in_polygon,
    points_of,
)
from derm_workstation.core.errors import NotFoundError
from derm_workstation.core.models import Annotation, Case, Photo
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace

#: Closed ROIs whose size is a lesion's size.
ROI_KINDS = frozenset(CLOSED_KINDS | {"ellipse"})
#: A lesion "changed" when its longest diameter moved by at least this many mm …
CHANGED_MIN_MM = 1.0
#: … and by at least this share of its earlier longest diameter (large plaques), …
CHANGED_MIN_DIAMETER_SHARE = 0.10
#: … or when its area changed by at least this many per cent.
CHANGED_AREA_PCT = 20.0


@dataclass(frozen=True)
class LesionObservation:
    """One numbered lesion as seen on one photo."""

    lesion_number: int
    photo_id: str
    case_id: str
    annotation_id: str | None  # the ROI measured; None = only a marker
    marker_id: str | None
    taken_at: datetime | None
    body_site: str
    px_per_mm: float | None
    area_px2: float | None
    longest_px: float | None

    @property
    def calibrated(self) -> bool:
        return bool(self.px_per_mm and self.px_per_mm > 0)

    @property
    def measured(self) -> bool:
        return self.area_px2 is not None

    @property
    def area_mm2(self) -> float | None:
        if self.area_px2 is None or not self.calibrated:
            return None
        assert self.px_per_mm is not None
        return self.area_px2 / (self.px_per_mm * self.px_per_mm)

    @property
    def longest_mm(self) -> float | None:
        if self.longest_px is None or not self.calibrated:
            return None
        assert self.px_per_mm is not None
        return self.longest_px / self.px_per_mm


@dataclass(frozen=True)
class LesionChange:
    """The same lesion on an earlier and a later photo."""

    lesion_number: int
    earlier: LesionObservation
    later: LesionObservation
    d_area_mm2: float | None
    d_area_pct: float | None
    d_longest_mm: float | None
    d_longest_pct: float | None
    warnings: tuple[str, ...]
    changed: bool | None  # None = cannot tell (a photo is uncalibrated)

    def summary(self) -> str:
        """One line for a clinician, e.g. "Lesion 2 — since 2026-08-01: area +4.1 mm² …"."""
        when = self.earlier.taken_at.date().isoformat() if self.earlier.taken_at else "before"
        head = f"Lesion {self.lesion_number} — since {when}"
        if self.d_area_mm2 is None or self.d_longest_mm is None:
            return f"{head}: no mm comparison ({'; '.join(self.warnings)})"
        parts = [f"area {self.d_area_mm2:+.1f} mm²{_pct(self.d_area_pct)}",
                 f"longest diameter {self.d_longest_mm:+.1f} mm{_pct(self.d_longest_pct)}"]
        verdict = "changed" if self.changed else "no clear change"
        return f"{head}: " + ", ".join(parts) + f" — {verdict}"


def _pct(v: float | None) -> str:
    return f" ({v:+.0f} %)" if v is not None else ""


# -- geometry ---------------------------------------------------------------------------------
def roi_size(kind: str, geometry: dict[str, Any]) -> tuple[float, float] | None:
    """(area px², longest diameter px) of a closed ROI, or None for other kinds."""
    pts = points_of(geometry)
    if kind == "ellipse" and len(pts) == 2:
        _c, a, b = ellipse_axes(pts)
        return math.pi * a * b, 2.0 * max(a, b)
    if kind in CLOSED_KINDS and len(pts) >= 3:
        return outline_area(pts), _max_feret(pts)
    return None


def _max_feret(pts: Sequence[Point]) -> float:
    """The longest distance between two points of the outline (on its convex hull)."""
    hull = _convex_hull(pts)
    best = 0.0
    for i, (x0, y0) in enumerate(hull):
        for x1, y1 in hull[i + 1:]:
            d = (x1 - x0) ** 2 + (y1 - y0) ** 2
            if d > best:
                best = d
    return math.sqrt(best)


def _convex_hull(pts: Sequence[Point]) -> list[Point]:
    p = sorted(set(pts))
    if len(p) <= 2:
        return list(p)

    def cross(o: Point, a: Point, b: Point) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[Point] = []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    upper: list[Point] = []
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return lower[:-1] + upper[:-1]


def roi_contains(kind: str, geometry: dict[str, Any], point: Point) -> bool:
    """Whether ``point`` lies inside a closed ROI (even-odd rule for outlines)."""
    pts = points_of(geometry)
    x, y = point
    if kind == "ellipse" and len(pts) == 2:
        (cx, cy), a, b = ellipse_axes(pts)
        if a <= 0 or b <= 0:
            return False
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
    if kind not in CLOSED_KINDS or len(pts) < 3:
        return False
    return point_in_polygon(point, pts)


def observations_on_photo(photo: Photo, case: Case,
                          annotations: Sequence[Annotation]) -> list[LesionObservation]:
    """The numbered lesions observed on one photo (see the module docstring)."""
    markers = {a.lesion_number: a for a in annotations
               if a.kind == "marker" and a.lesion_number is not None}
    rois = [a for a in annotations if a.kind in ROI_KINDS]
    # newest first, so the latest outline of a lesion wins
    rois.sort(key=lambda a: (a.updated_at or a.created_at or datetime.min), reverse=True)
    by_number: dict[int, Annotation] = {}
    for a in rois:
        if a.lesion_number is not None:
            by_number.setdefault(a.lesion_number, a)
    for number, marker in markers.items():
        if number in by_number or number is None:
            continue
        pts = points_of(marker.geometry)
        if not pts:
            continue
        for a in rois:
            if a.lesion_number is None and roi_contains(a.kind, a.geometry, pts[0]):
                by_number[number] = a
                break
    out: list[LesionObservation] = []
    when = photo.taken_at or case.submitted_at
    for number in sorted(set(by_number) | {n for n in markers if n is not None}):
        roi: Annotation | None = by_number.get(number)
        size = roi_size(roi.kind, roi.geometry) if roi is not None else None
        mark = markers.get(number)
        out.append(LesionObservation(
            lesion_number=number, photo_id=photo.id, case_id=case.id,
            annotation_id=roi.id if roi is not None else None,
            marker_id=mark.id if mark is not None else None,
            taken_at=when, body_site=photo.body_site or case.body_site,
            px_per_mm=photo.calibration_px_per_mm,
            area_px2=size[0] if size else None, longest_px=size[1] if size else None,
        ))
    return out


def compare(earlier: LesionObservation, later: LesionObservation) -> LesionChange:
    """The change of one lesion between two observations (both should be measured)."""
    warnings: list[str] = []
    if not earlier.measured or not later.measured:
        warnings.append("the lesion has no outline on "
                        + ("the earlier photo" if not earlier.measured else "this photo"))
    if not earlier.calibrated:
        warnings.append("earlier photo uncalibrated")
    if not later.calibrated:
        warnings.append("this photo uncalibrated")
    a0, a1 = earlier.area_mm2, later.area_mm2
    l0, l1 = earlier.longest_mm, later.longest_mm
    if a0 is None or a1 is None or l0 is None or l1 is None:
        return LesionChange(earlier.lesion_number, earlier, later, None, None, None, None,
                            tuple(warnings), None)
    d_area, d_long = a1 - a0, l1 - l0
    area_pct = 100.0 * d_area / a0 if a0 > 0 else None
    long_pct = 100.0 * d_long / l0 if l0 > 0 else None
    changed = (abs(d_long) >= max(CHANGED_MIN_MM, CHANGED_MIN_DIAMETER_SHARE * l0)
               or (area_pct is not None and abs(area_pct) >= CHANGED_AREA_PCT))
    return LesionChange(earlier.lesion_number, earlier, later, d_area, area_pct, d_long,
                        long_pct, tuple(warnings), changed)


def _sort_key(o: LesionObservation) -> tuple[datetime, str]:
    return (o.taken_at or datetime.min, o.photo_id)


class LesionService:
    """Reading numbered lesions of a patient across visits (read-only; needs case.view)."""

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def observations(self, patient_id: str) -> dict[int, list[LesionObservation]]:
        """Every numbered lesion of the patient, its observations in date order."""
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            rows = s.execute(
                select(Photo, Case).join(Case, Photo.case_id == Case.id)
                .where(Case.patient_id == patient_id)
            ).all()
            if not rows:
                return {}
            photo_ids = [p.id for p, _c in rows]
            anns: dict[str, list[Annotation]] = {}
            for a in s.scalars(select(Annotation).where(Annotation.photo_id.in_(photo_ids))):
                anns.setdefault(a.photo_id, []).append(a)
            out: dict[int, list[LesionObservation]] = {}
            for photo, case in rows:
                for o in observations_on_photo(photo, case, anns.get(photo.id, [])):
                    out.setdefault(o.lesion_number, []).append(o)
        for obs in out.values():
            obs.sort(key=_sort_key)
        return dict(sorted(out.items()))

    def _patient_of_photo(self, photo_id: str) -> str:
        with self.ws.db.session() as s:
            row = s.execute(select(Case.patient_id).join(Photo, Photo.case_id == Case.id)
                            .where(Photo.id == photo_id)).first()
            if row is None:
                raise NotFoundError(f"No photo with id '{photo_id}'.")
            return str(row[0])

    def change_for(self, photo_id: str, lesion_number: int) -> LesionChange | None:
        """This photo's observation of the lesion against the latest earlier measured one.

        None when the lesion is not on this photo or was never measured before it.
        """
        obs = self.observations(self._patient_of_photo(photo_id)).get(lesion_number, [])
        here = next((o for o in obs if o.photo_id == photo_id), None)
        if here is None:
            return None
        key = _sort_key(here)
        earlier = [o for o in obs if o.photo_id != photo_id and o.measured
                   and _sort_key(o) < key]
        if not earlier:
            return None
        return compare(earlier[-1], here)

    def changes(self, patient_id: str) -> dict[int, LesionChange]:
        """For each lesion measured at least twice: its latest against the one before."""
        return latest_changes(self.observations(patient_id))


def latest_changes(observations: dict[int, list[LesionObservation]]
                   ) -> dict[int, LesionChange]:
    """For each lesion measured at least twice (observations in date order, as
    :meth:`LesionService.observations` gives them): its latest against the one before."""
    out: dict[int, LesionChange] = {}
    for number, obs in observations.items():
        measured = [o for o in obs if o.measured]
        if len(measured) >= 2:
            out[number] = compare(measured[-2], measured[-1])
    return out
