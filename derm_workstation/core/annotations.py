"""Annotations on photos: kinds, geometry, measurement, storage and undoable editing.

Annotations are vectors in *image coordinates*: pixels of the photo as displayed
(after EXIF orientation), origin at the top-left corner, x to the right, y down.
They are stored in their own table and never burned into the original.

Geometry is ``{"points": [[x, y], ...]}`` with a fixed number of points per kind:

========== ================================================================
ruler      2 points (the two ends)
polyline   2 or more points (open)
angle      3 points; the angle is measured at the middle one
ellipse    2 points: opposite corners of its axis-aligned bounding box
freehand   3 or more points (closed outline)
polygon    3 or more points (closed outline)
bidirect.  4 points: long axis ends, then the perpendicular short axis ends
arrow      2 points: tail, then head (the point it shows); ``label`` is its text
marker     1 point; ``lesion_number`` follows one lesion across visits
========== ================================================================

Measurements are in millimetres when the photo has ``calibration_px_per_mm`` and
in pixels marked "uncalibrated" otherwise: a wrong number is worse than none.

Editing goes through :class:`AnnotationSet` and its commands on a
:class:`~derm_workstation.core.command_stack.CommandStack`; every change is handed
to a *sink* (the GUI runs it on the database lane, tests call the service directly).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from derm_workstation.core import audit
from derm_workstation.core.command_stack import Command
from derm_workstation.core.errors import InputError, NotFoundError
from derm_workstation.core.models import Annotation, Photo, new_id, utcnow
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace

KIND_LABELS: dict[str, str] = {
    "ruler": "Ruler",
    "polyline": "Polyline",
    "angle": "Angle",
    "ellipse": "Ellipse ROI",
    "freehand": "Freehand ROI",
    "polygon": "Polygon ROI",
    "bidirectional": "Bidirectional",
    "arrow": "Arrow with text",
    "marker": "Lesion marker",
}
KINDS: tuple[str, ...] = tuple(KIND_LABELS)

#: (minimum, maximum) number of points per kind; None = no maximum.
POINT_COUNTS: dict[str, tuple[int, int | None]] = {
    "ruler": (2, 2),
    "polyline": (2, None),
    "angle": (3, 3),
    "ellipse": (2, 2),
    "freehand": (3, None),
    "polygon": (3, None),
    "bidirectional": (4, 4),
    "arrow": (2, 2),
    "marker": (1, 1),
}
CLOSED_KINDS = frozenset({"polygon", "freehand"})
UNCALIBRATED = "uncalibrated"
EXPORT_FORMAT = "derm-workstation.annotations"

Point = tuple[float, float]


# -- geometry -------------------------------------------------------------------------------
def points_of(geometry: dict[str, Any]) -> list[Point]:
    return [(float(p[0]), float(p[1])) for p in geometry.get("points", [])]


def make_geometry(points: Iterable[Sequence[float]]) -> dict[str, Any]:
    return {"points": [[float(x), float(y)] for x, y in points]}


def validate(kind: str, geometry: dict[str, Any]) -> dict[str, Any]:
    """A clean copy of ``geometry`` for ``kind``, or :class:`InputError`."""
    if kind not in POINT_COUNTS:
        raise InputError(f"Unknown annotation kind '{kind}'. Known: {', '.join(KINDS)}.")
    raw = geometry.get("points") if isinstance(geometry, dict) else None
    if not isinstance(raw, list):
        raise InputError("An annotation needs a list of points.")
    pts: list[Point] = []
    for p in raw:
        if not (isinstance(p, (list, tuple)) and len(p) == 2):
            raise InputError("Each annotation point must be a pair [x, y].")
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError("Annotation points must be finite numbers.")
        pts.append((x, y))
    lo, hi = POINT_COUNTS[kind]
    if len(pts) < lo or (hi is not None and len(pts) > hi):
        want = str(lo) if lo == hi else f"at least {lo}"
        raise InputError(f"A {KIND_LABELS[kind].lower()} needs {want} points, got {len(pts)}.")
    return make_geometry(pts)


def distance(a: Point, b: Point) -> float:
    return math.hypot(b[0] - a[0], b[1] - a[1])


def path_length(pts: Sequence[Point], closed: bool = False) -> float:
    total = sum(distance(a, b) for a, b in pairwise(pts))
    if closed and len(pts) > 2:
        total += distance(pts[-1], pts[0])
    return total


def shoelace_area(pts: Sequence[Point]) -> float:
    """The area of a closed outline that does not cross itself (see :func:`outline_area`)."""
    n = len(pts)
    s = 0.0
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _edge_pairs(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64]
                ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Pairs (i < j) of edges p->q whose bounding boxes share a cell of a grid about
    two edges long: the only ones that can meet. A freehand stroke has thousands of
    short edges; testing every pair would take ~n²/2 of memory and time."""
    n = len(p)
    if n <= 64:
        i, j = np.triu_indices(n, k=1)
        return i, j
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    cell = max(2.0 * float(np.mean(np.hypot(*(q - p).T))), 1e-9)
    c0 = np.floor(lo / cell).astype(np.int64)
    c1 = np.floor(hi / cell).astype(np.int64)
    span = c1 - c0 + 1
    counts = span[:, 0] * span[:, 1]  # cells each edge's box covers
    edge = np.repeat(np.arange(n), counts)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = c0[edge, 0] + k % span[edge, 0]
    cy = c0[edge, 1] + k // span[edge, 0]
    order = np.lexsort((edge, cy, cx))
    cx, cy, edge = cx[order], cy[order], edge[order]
    starts = np.flatnonzero(np.r_[True, (cx[1:] != cx[:-1]) | (cy[1:] != cy[:-1])])
    ends = np.r_[starts[1:], len(edge)]
    pairs = [edge[s0:s1][np.array(np.triu_indices(s1 - s0, k=1))]
             for s0, s1 in zip(starts, ends, strict=True) if s1 - s0 > 1]
    if not pairs:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    both = np.unique(np.concatenate(pairs, axis=1), axis=1)
    return both[0], both[1]


def _crossings(pts: Sequence[Point]) -> list[Point]:
    """Where the closed outline ``pts`` crosses itself: the points where two of its
    edges that do not share a corner intersect (touching counts)."""
    n = len(pts)
    if n < 4:
        return []
    p = np.asarray(pts, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    d = q - p
    i, j = _edge_pairs(p, q)
    keep = (j - i >= 2) & ~((i == 0) & (j == n - 1))  # neighbours share a corner
    i, j = i[keep], j[keep]
    # solve p_i + t d_i = p_j + u d_j
    den = d[i, 0] * d[j, 1] - d[i, 1] * d[j, 0]
    w = p[j] - p[i]
    ok = np.abs(den) > 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[:, 0] * d[j, 1] - w[:, 1] * d[j, 0]) / den
        u = (w[:, 0] * d[i, 1] - w[:, 1] * d[i, 0]) / den
    hit = ok & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    at = p[i[hit]] + t[hit, None] * d[i[hit]]
    return [(float(x), float(y)) for x, y in at]


def self_intersects(pts: Sequence[Point]) -> bool:
    """Whether the closed outline ``pts`` crosses or touches itself."""
    return bool(_crossings(pts))


def outline_area(pts: Sequence[Point]) -> float:
    """The area enclosed by the closed outline ``pts``, exactly.

    For an outline that does not cross itself this is the shoelace formula. A
    freehand outline often does (the stroke overshoots where it started, or loops):
    the shoelace formula then subtracts the loops turning the other way, so the
    area counted is instead that of the region the outline encloses by the even-odd
    rule — the pixels :func:`~derm_workstation.core.lesion_analysis.roi_mask` fills
    and :func:`point_in_polygon` calls inside — integrated exactly between the
    heights of the corners and crossings (the inside width is linear in between).
    Remembers recent outlines: labels are re-measured at every repaint.
    """
    return _outline_area(tuple((float(x), float(y)) for x, y in pts))


@functools.lru_cache(maxsize=64)
def _outline_area(pts: tuple[Point, ...]) -> float:
    crossings = _crossings(pts)
    if not crossings:
        return shoelace_area(pts)
    p = np.asarray(pts, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    ys = np.unique(np.concatenate([p[:, 1], [c[1] for c in crossings]]))
    lo, hi = ys[:-1], ys[1:]
    y0, y1 = p[:, 1], q[:, 1]
    bottom, top = np.minimum(y0, y1), np.maximum(y0, y1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (q[:, 0] - p[:, 0]) / (y1 - y0)
    total = 0.0
    for start in range(0, len(lo), 256):  # 256 slabs at a time, with the edges they cut
        mid = (lo[start:start + 256] + hi[start:start + 256]) / 2.0
        e = np.flatnonzero((bottom < mid[-1]) & (top > mid[0]))
        spans = (bottom[e, None] < mid) & (mid < top[e, None])
        with np.errstate(invalid="ignore"):
            x = np.where(spans, p[e, 0, None] + (mid - y0[e, None]) * slope[e, None], np.inf)
        x.sort(axis=0)
        counts = spans.sum(axis=0)
        for k in range(len(mid)):
            xs = x[: counts[k], k]
            total += float((xs[1::2] - xs[0::2]).sum()) * float(hi[start + k] - lo[start + k])
    return total


def point_in_polygon(pt: Point, poly: Sequence[Point]) -> bool:
    """Whether ``pt`` lies inside the closed outline ``poly`` (even-odd rule)."""
    x, y = pt
    inside = False
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def angle_at(a: Point, vertex: Point, b: Point) -> float:
    """The angle a-vertex-b in degrees, 0..180."""
    ux, uy = a[0] - vertex[0], a[1] - vertex[1]
    vx, vy = b[0] - vertex[0], b[1] - vertex[1]
    if (ux == 0 and uy == 0) or (vx == 0 and vy == 0):
        return 0.0
    return math.degrees(abs(math.atan2(ux * vy - uy * vx, ux * vx + uy * vy)))


def ellipse_axes(pts: Sequence[Point]) -> tuple[Point, float, float]:
    """(centre, semi-axis x, semi-axis y) of the ellipse in the box of two corners."""
    (x0, y0), (x1, y1) = pts[0], pts[1]
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0), abs(x1 - x0) / 2.0, abs(y1 - y0) / 2.0


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation (relative error < 1e-9 below a 5:1 ratio)."""
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def perpendicular_short_axis(p0: Point, p1: Point, ratio: float = 0.5) -> tuple[Point, Point]:
    """Ends of a short axis through the middle of p0-p1, perpendicular, ``ratio`` as long."""
    mx, my = (p0[0] + p1[0]) / 2.0, (p0[1] + p1[1]) / 2.0
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    nx, ny = -dy * ratio / 2.0, dx * ratio / 2.0
    return (mx - nx, my - ny), (mx + nx, my + ny)


def translate(geometry: dict[str, Any], dx: float, dy: float) -> dict[str, Any]:
    return make_geometry((x + dx, y + dy) for x, y in points_of(geometry))


def with_point(kind: str, geometry: dict[str, Any], index: int, to: Point) -> dict[str, Any]:
    """``geometry`` with handle ``index`` moved to ``to``; a bidirectional keeps its
    short axis perpendicular through the long axis' middle."""
    pts = points_of(geometry)
    if kind == "bidirectional":
        p0, p1, s0, s1 = pts
        if index in (0, 1):
            ratio = distance(s0, s1) / max(distance(p0, p1), 1e-9)
            pts[index] = to
            pts[2], pts[3] = perpendicular_short_axis(pts[0], pts[1], ratio)
        else:
            # the short axis stays perpendicular: only its length follows the handle
            mx, my = (p0[0] + p1[0]) / 2.0, (p0[1] + p1[1]) / 2.0
            long_len = max(distance(p0, p1), 1e-9)
            half = abs((to[0] - mx) * -(p1[1] - p0[1]) + (to[1] - my) * (p1[0] - p0[0]))
            ratio = 2.0 * half / long_len / long_len
            pts[2], pts[3] = perpendicular_short_axis(p0, p1, ratio)
        return make_geometry(pts)
    pts[index] = to
    return make_geometry(pts)


# -- measurement ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """What an annotation measures. ``px`` always; ``mm`` when the photo is calibrated.

    Keys: ``length`` (ruler, polyline, arrow), ``area`` and ``perimeter`` (ROIs),
    ``width``/``height`` (ellipse diameters), ``long``/``short`` (bidirectional),
    ``angle`` (degrees; the same in both). Areas are px² / mm².
    """

    px: dict[str, float]
    mm: dict[str, float] | None
    text: str

    @property
    def calibrated(self) -> bool:
        return self.mm is not None


def _fmt_len(px: float, ppm: float | None) -> str:
    return f"{px / ppm:.1f} mm" if ppm else f"{px:.0f} px"


def _fmt_area(px2: float, ppm: float | None) -> str:
    return f"{px2 / (ppm * ppm):.1f} mm²" if ppm else f"{px2:.0f} px²"


def measure(kind: str, geometry: dict[str, Any], px_per_mm: float | None) -> Measurement:
    """Measure one annotation; ``px_per_mm`` None (or <= 0) means uncalibrated."""
    ppm = px_per_mm if px_per_mm and px_per_mm > 0 else None
    pts = points_of(geometry)
    px: dict[str, float] = {}
    parts: list[str] = []
    area_keys = {"area"}
    if kind in ("ruler", "polyline", "arrow") and len(pts) >= 2:
        px["length"] = path_length(pts)
        if kind != "arrow":
            parts.append(_fmt_len(px["length"], ppm))
    elif kind == "angle" and len(pts) == 3:
        px["angle"] = angle_at(pts[0], pts[1], pts[2])
        parts.append(f"{px['angle']:.1f}°")
    elif kind in CLOSED_KINDS and len(pts) >= 3:
        px["area"] = outline_area(pts)
        px["perimeter"] = path_length(pts, closed=True)
        parts += [_fmt_area(px["area"], ppm), f"perimeter {_fmt_len(px['perimeter'], ppm)}"]
    elif kind == "ellipse" and len(pts) == 2:
        _c, a, b = ellipse_axes(pts)
        px["area"] = math.pi * a * b
        px["perimeter"] = ellipse_perimeter(a, b)
        px["width"], px["height"] = 2 * a, 2 * b
        parts += [_fmt_area(px["area"], ppm),
                  f"{_fmt_len(px['width'], ppm)} × {_fmt_len(px['height'], ppm)}"]
    elif kind == "bidirectional" and len(pts) == 4:
        px["long"] = distance(pts[0], pts[1])
        px["short"] = distance(pts[2], pts[3])
        parts.append(f"{_fmt_len(px['long'], ppm)} × {_fmt_len(px['short'], ppm)}")
    mm: dict[str, float] | None = None
    if ppm:
        mm = {}
        for k, v in px.items():
            if k == "angle":
                mm[k] = v
            elif k in area_keys:
                mm[k] = v / (ppm * ppm)
            else:
                mm[k] = v / ppm
    text = " · ".join(parts)
    if text and not ppm and any(k != "angle" for k in px):
        text += f" ({UNCALIBRATED})"
    return Measurement(px=px, mm=mm, text=text)


# -- stored annotations ---------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotationView:
    """One annotation, detached from the database (safe to pass between threads)."""

    id: str
    photo_id: str
    kind: str
    geometry: dict[str, Any]
    label: str = ""
    lesion_number: int | None = None
    author: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def points(self) -> list[Point]:
        return points_of(self.geometry)

    def with_geometry(self, geometry: dict[str, Any]) -> AnnotationView:
        return replace(self, geometry=copy.deepcopy(geometry))


def _view(a: Annotation) -> AnnotationView:
    return AnnotationView(
        id=a.id, photo_id=a.photo_id, kind=a.kind, geometry=copy.deepcopy(a.geometry),
        label=a.label, lesion_number=a.lesion_number, author=a.author,
        created_at=a.created_at, updated_at=a.updated_at,
    )


def new_annotation(photo_id: str, kind: str, points: Iterable[Sequence[float]], author: str,
                   *, label: str = "", lesion_number: int | None = None) -> AnnotationView:
    """A new, not yet saved annotation with a fresh id (validated)."""
    now = utcnow()
    return AnnotationView(
        id=new_id(), photo_id=photo_id, kind=kind,
        geometry=validate(kind, make_geometry(points)), label=label,
        lesion_number=lesion_number, author=author, created_at=now, updated_at=now,
    )


class AnnotationService:
    """Reading and changing the annotations of photos: permission, change, audit.

    Audit details hold ids and the kind only, never label text.
    """

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor

    def calibration(self, photo_id: str) -> float | None:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            ph = s.get(Photo, photo_id)
            if ph is None:
                raise NotFoundError(f"No photo with id '{photo_id}'.")
            return ph.calibration_px_per_mm

    def list(self, photo_id: str) -> list[AnnotationView]:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            rows = s.scalars(
                select(Annotation).where(Annotation.photo_id == photo_id)
                .order_by(Annotation.created_at, Annotation.id)
            )
            return [_view(a) for a in rows]

    def add(self, photo_id: str, kind: str, points: Iterable[Sequence[float]], *,
            label: str = "", lesion_number: int | None = None) -> AnnotationView:
        """Create and store a new annotation by the acting user."""
        return self.save(new_annotation(photo_id, kind, points, self.actor.username,
                                        label=label, lesion_number=lesion_number))

    def save(self, view: AnnotationView) -> AnnotationView:
        """Insert ``view`` (keeping its id, author and creation time) or update it."""
        self.actor.require("case.edit")
        geometry = validate(view.kind, view.geometry)
        with self.ws.db.session() as s:
            if s.get(Photo, view.photo_id) is None:
                raise NotFoundError(f"No photo with id '{view.photo_id}'.")
            a = s.get(Annotation, view.id)
            action = "annotation.update"
            if a is None:
                action = "annotation.add"
                a = Annotation(id=view.id, photo_id=view.photo_id, kind=view.kind,
                               author=view.author or self.actor.username,
                               created_at=view.created_at or utcnow())
                s.add(a)
            elif a.photo_id != view.photo_id or a.kind != view.kind:
                raise InputError("An annotation cannot change its photo or kind.")
            a.geometry = geometry
            a.label = view.label
            a.lesion_number = view.lesion_number
            a.updated_at = utcnow()
            s.flush()
            audit.record(s, self.actor, action, "annotation", a.id,
                         {"photo_id": a.photo_id, "kind": a.kind})
            return _view(a)

    def update(self, annotation_id: str, *, geometry: dict[str, Any] | None = None,
               label: str | None = None, lesion_number: int | None = None) -> AnnotationView:
        current = self.get(annotation_id)
        return self.save(replace(
            current,
            geometry=geometry if geometry is not None else current.geometry,
            label=label if label is not None else current.label,
            lesion_number=lesion_number if lesion_number is not None else current.lesion_number,
        ))

    def get(self, annotation_id: str) -> AnnotationView:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            a = s.get(Annotation, annotation_id)
            if a is None:
                raise NotFoundError(f"No annotation with id '{annotation_id}'.")
            return _view(a)

    def delete(self, annotation_id: str) -> bool:
        """Delete for real; False when it was already gone (undo of an add, twice)."""
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            a = s.get(Annotation, annotation_id)
            if a is None:
                return False
            detail = {"photo_id": a.photo_id, "kind": a.kind}
            s.delete(a)
            s.flush()
            audit.record(s, self.actor, "annotation.delete", "annotation", annotation_id,
                         detail)
            return True

    def export_json(self, photo_id: str) -> dict[str, Any]:
        """The annotations of a photo with their measurements, as a JSON-ready dict."""
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            ph = s.get(Photo, photo_id)
            if ph is None:
                raise NotFoundError(f"No photo with id '{photo_id}'.")
            photo = {"id": ph.id, "sha256": ph.sha256, "width": ph.width,
                     "height": ph.height}
            ppm, method = ph.calibration_px_per_mm, ph.calibration_method
        return export_document(photo, ppm, method, self.list(photo_id))


def export_document(photo: dict[str, Any], px_per_mm: float | None, method: str | None,
                    annotations: Sequence[AnnotationView]) -> dict[str, Any]:
    items = []
    for a in annotations:
        m = measure(a.kind, a.geometry, px_per_mm)
        items.append({
            "id": a.id,
            "kind": a.kind,
            "geometry": copy.deepcopy(a.geometry),
            "label": a.label,
            "lesion_number": a.lesion_number,
            "author": a.author,
            "created_at": a.created_at.isoformat() if a.created_at else None,
            "updated_at": a.updated_at.isoformat() if a.updated_at else None,
            "measurement": {"calibrated": m.calibrated, "px": m.px, "mm": m.mm,
                            "text": m.text},
        })
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "photo": photo,
        "coordinates": "image pixels as displayed (after EXIF orientation), "
                       "origin top-left, x right, y down",
        "calibration": ({"px_per_mm": px_per_mm, "method": method} if px_per_mm
                        else None),
        "annotations": items,
    }


# -- undoable editing -----------------------------------------------------------------------
#: A change to persist: ("save", view) or ("delete", view).
Sink = Callable[[str, AnnotationView], None]


@dataclass
class AnnotationSet:
    """The annotations of one photo being edited, in drawing order.

    Commands change it; each change calls the listeners (to repaint) and the sink
    (to persist). ``px_per_mm`` gives the measurements their unit.
    """

    photo_id: str
    px_per_mm: float | None = None
    sink: Sink | None = None
    _items: dict[str, AnnotationView] = field(default_factory=dict)
    _listeners: list[Callable[[], None]] = field(default_factory=list)

    def load(self, views: Iterable[AnnotationView]) -> None:
        self._items = {v.id: v for v in views}
        self._notify()

    def subscribe(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def __iter__(self) -> Any:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, annotation_id: object) -> bool:
        return annotation_id in self._items

    def get(self, annotation_id: str) -> AnnotationView | None:
        return self._items.get(annotation_id)

    def next_lesion_number(self) -> int:
        used = [a.lesion_number for a in self._items.values() if a.lesion_number]
        return max(used, default=0) + 1

    def measure(self, view: AnnotationView) -> Measurement:
        return measure(view.kind, view.geometry, self.px_per_mm)

    def put(self, view: AnnotationView) -> None:
        self._items[view.id] = view
        if self.sink is not None:
            self.sink("save", view)
        self._notify()

    def remove(self, annotation_id: str) -> AnnotationView | None:
        view = self._items.pop(annotation_id, None)
        if view is not None:
            if self.sink is not None:
                self.sink("delete", view)
            self._notify()
        return view

    def _notify(self) -> None:
        for fn in list(self._listeners):
            fn()


class AddAnnotation(Command):
    def __init__(self, doc: AnnotationSet, view: AnnotationView) -> None:
        validate(view.kind, view.geometry)
        self.doc, self.view = doc, view
        self.text = f"Add {KIND_LABELS[view.kind].lower()}"

    def do(self) -> None:
        self.doc.put(self.view)

    def undo(self) -> None:
        self.doc.remove(self.view.id)


class DeleteAnnotation(Command):
    def __init__(self, doc: AnnotationSet, annotation_id: str) -> None:
        view = doc.get(annotation_id)
        if view is None:
            raise NotFoundError(f"No annotation with id '{annotation_id}'.")
        self.doc, self.view = doc, view
        self.text = f"Delete {KIND_LABELS[view.kind].lower()}"

    def do(self) -> None:
        self.doc.remove(self.view.id)

    def undo(self) -> None:
        self.doc.put(self.view)


class ChangeAnnotation(Command):
    """Move, reshape or relabel: ``before`` and ``after`` are whole views (same id)."""

    def __init__(self, doc: AnnotationSet, before: AnnotationView, after: AnnotationView,
                 text: str = "") -> None:
        if before.id != after.id:
            raise InputError("A change must keep the annotation's id.")
        validate(after.kind, after.geometry)
        self.doc, self.before, self.after = doc, before, after
        self.text = text or f"Edit {KIND_LABELS[after.kind].lower()}"

    def do(self) -> None:
        self.doc.put(replace(self.after, updated_at=utcnow()))

    def undo(self) -> None:
        self.doc.put(self.before)


def service_sink(service: AnnotationService) -> Sink:
    """A sink that persists changes synchronously (CLI, tests)."""

    def sink(op: str, view: AnnotationView) -> None:
        if op == "save":
            service.save(view)
        else:
            service.delete(view.id)

    return sink
