"""Lesion analysis of a stored photo: calibration, assisted outline, metrics, export.

:class:`LesionAnalysisService` joins the image analysis of :mod:`derm_workstation.imaging`
(reference detection, segmentation, metrics) to the store: it reads the photo *as
displayed* (after EXIF orientation) from the image store through the safe decoder,
checks the acting user's permission and writes an audit event for every change.

Calibration is kept on the photo (``calibration_px_per_mm`` and
``calibration_method``); no other column exists for it, so what the clinician
confirmed — the reference's name, the detector's confidence and the reference
ellipse, or the ruler line — goes into the audit event's detail, and the latest such
event says who confirmed it (:meth:`LesionAnalysisService.calibration_state`).
``calibration_method`` is one of ``"reference:<name>"`` (a built-in coin or sticker,
e.g. ``"reference:eur-1"``), ``"custom:<D>mm"`` (a circular reference of a custom
diameter), ``"ruler-line"`` (a line drawn over a ruler) or ``"metadata"``.

Work that only reads pixels can be handed a :class:`PhotoFacts` instead of a photo id,
so the GUI reads the database on its database lane once and then runs the heavy part
on its image pool without touching the database.

Exports (:meth:`LesionAnalysisService.render_annotated`, :func:`burn_in`) draw the
annotations with their measurement labels, and a scale bar when the photo is
calibrated, into a *new* image; the file written carries no EXIF, GPS or other
metadata of the original (a JPEG gets only an sRGB colour profile).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from derm_workstation.core import annotations as an
from derm_workstation.core import audit
from derm_workstation.core.errors import InputError, NotFoundError
from derm_workstation.core.models import Annotation, AuditEvent, Photo
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    from derm_workstation.imaging.calibration import Calibration
    from derm_workstation.imaging.metrics import LesionMetrics

__all__ = [
    "CALIBRATION_ACTIONS",
    "CalibrationState",
    "LesionAnalysisService",
    "OutlineFigures",
    "OutlineProposal",
    "PhotoFacts",
    "ReferenceChoice",
    "burn_in",
    "calibration_label",
    "lesion_number_inside",
    "outline_figures",
    "reference_choices",
    "reference_method",
    "roi_mask",
    "scale_bar_mm",
]

Point = tuple[float, float]
ROI_KINDS = frozenset({"polygon", "freehand", "ellipse"})
CALIBRATION_ACTIONS = ("photo.calibrate", "photo.calibration_clear")
EXPORT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
OUTLINE_POINTS = 120
"""At most this many corners in a proposed outline (each one is an editable handle)."""
OUTLINE_SPACING_PX = 10.0
"""About one corner per this many pixels of outline (at least 20 corners)."""
_METHOD_LEN = 32  # the width of photos.calibration_method


# -- references -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceChoice:
    """A reference the clinician can choose: CLI name, label for the chooser, diameter."""

    name: str
    label: str
    diameter_mm: float


def reference_choices() -> list[ReferenceChoice]:
    """The built-in coins and stickers, in the order of the issue's list."""
    from derm_workstation.imaging.calibration import REFERENCES

    out = []
    for r in REFERENCES.values():
        label = f"{r.label} — {r.diameter_mm:g} mm"
        if r.kind == "coin" and "coin" not in r.label:
            label = f"{r.label} coin — {r.diameter_mm:g} mm"
        out.append(ReferenceChoice(r.name, label, r.diameter_mm))
    return out


def reference_method(reference: str | None, diameter_mm: float | None) -> tuple[str, float]:
    """(calibration_method, diameter in mm) for a built-in reference name or a custom
    diameter; InputError for an unknown name or an impossible diameter."""
    from derm_workstation.imaging.calibration import reference_diameter

    if diameter_mm is not None:
        d = float(diameter_mm)
        if not (math.isfinite(d) and 1.0 <= d <= 200.0):
            raise InputError("A custom reference diameter must be between 1 and 200 mm.")
        return f"custom:{d:g}mm", d
    name = (reference or "sticker-10mm").strip().lower()
    return f"reference:{name}", reference_diameter(name)


def calibration_label(method: str | None) -> str:
    """Plain words for a ``calibration_method``: "€1 coin", "ruler line", …"""
    from derm_workstation.imaging.calibration import REFERENCES

    if not method:
        return ""
    if method.startswith("reference:"):
        name = method.split(":", 1)[1]
        ref = REFERENCES.get(name)
        if ref is None:
            if name.startswith("sticker-"):
                return f"calibration sticker {name[len('sticker-'):].replace('mm', ' mm')}"
            return name
        return ref.label if ref.kind == "sticker" or "coin" in ref.label else f"{ref.label} coin"
    if method.startswith("custom:"):
        return f"{method.split(':', 1)[1].replace('mm', ' mm')} reference"
    if method == "ruler-line":
        return "ruler line"
    if method == "metadata":
        return "device metadata"
    return method


# -- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhotoFacts:
    """What the pixel work needs to know about a stored photo (safe across threads)."""

    id: str
    sha256: str
    width: int
    height: int
    px_per_mm: float | None
    calibration_method: str | None


@dataclass(frozen=True)
class CalibrationState:
    """A photo's calibration and who confirmed it (from the audit trail)."""

    photo_id: str
    px_per_mm: float | None
    method: str | None
    confirmed_by: str | None = None
    confirmed_at: datetime | None = None
    confidence: float | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def calibrated(self) -> bool:
        return self.px_per_mm is not None

    def describe(self) -> str:
        """"Calibrated: 12.4 px/mm (€1 coin, confirmed by dr.smith)" or
        "Uncalibrated — measurements in pixels"."""
        if self.px_per_mm is None:
            return "Uncalibrated — measurements in pixels"
        parts = [p for p in (calibration_label(self.method),
                             f"confirmed by {self.confirmed_by}" if self.confirmed_by else "")
                 if p]
        how = f" ({', '.join(parts)})" if parts else ""
        return f"Calibrated: {self.px_per_mm:.1f} px/mm{how}"


@dataclass(frozen=True)
class OutlineProposal:
    """A proposed lesion outline, ready to become an editable polygon annotation."""

    photo_id: str
    points: tuple[Point, ...]
    confidence: float
    method: str  # "automatic" or "seed"
    dermoscopic: bool
    area_px: int
    warnings: tuple[str, ...] = field(default=())
    lesion_number: int | None = None


# -- geometry helpers -----------------------------------------------------------------------
def lesion_number_inside(outline: Sequence[Point],
                         views: Iterable[an.AnnotationView]) -> int | None:
    """The lesion number of a numbered marker inside ``outline`` (the lowest if several)."""
    numbers = [v.lesion_number for v in views
               if v.kind == "marker" and v.lesion_number and v.points
               and an.point_in_polygon(v.points[0], outline)]
    return min(n for n in numbers if n is not None) if numbers else None


def roi_mask(kind: str, geometry: dict[str, Any], size: tuple[int, int],
             offset: tuple[int, int] = (0, 0)) -> npt.NDArray[np.bool_]:
    """The pixels of a closed ROI as an HxW mask (``size`` is (width, height)); the
    mask's pixel (0, 0) is the image's pixel ``offset`` (x, y) — for a crop.

    A pixel belongs to the ROI when its centre lies inside the outline (pixel
    (c, r) covers ``[c, c+1) x [r, r+1)``, so its centre is ``(c + 0.5, r + 0.5)``).
    """
    import numpy as np
    from skimage.draw import polygon as fill_polygon

    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    ox, oy = offset
    pts = [(x - ox, y - oy) for x, y in an.points_of(geometry)]
    if kind == "ellipse" and len(pts) == 2:
        (cx, cy), a, b = an.ellipse_axes(pts)
        if a <= 0 or b <= 0:
            return mask
        r0, r1 = max(math.floor(cy - b), 0), min(math.ceil(cy + b) + 1, h)
        c0, c1 = max(math.floor(cx - a), 0), min(math.ceil(cx + a) + 1, w)
        if r0 >= r1 or c0 >= c1:
            return mask
        yy, xx = np.ogrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] = ((xx + 0.5 - cx) / a) ** 2 + ((yy + 0.5 - cy) / b) ** 2 <= 1.0
        return mask
    if kind in an.CLOSED_KINDS and len(pts) >= 3:
        xs = np.array([p[0] for p in pts]) - 0.5
        ys = np.array([p[1] for p in pts]) - 0.5
        rr, cc = fill_polygon(ys, xs, shape=(h, w))
        mask[rr, cc] = True
        return mask
    raise InputError("Metrics need a closed outline: a polygon, freehand or ellipse region.")


@dataclass(frozen=True)
class OutlineFigures:
    """Size and shape of a drawn outline, in pixels (see :func:`outline_figures`)."""

    area_px: float
    perimeter_px: float
    max_diameter_px: float
    min_diameter_px: float
    border_irregularity: float


def outline_figures(kind: str, geometry: dict[str, Any]) -> OutlineFigures:
    """Area, perimeter, longest and shortest Feret diameter (pixels) and border
    irregularity of a closed ROI drawn as vectors, computed from the outline itself.

    These are exact for the outline as drawn (an ellipse's perimeter by Ramanujan's
    approximation), and the same figures the annotation's label shows; the pixel mask
    of the same outline gives them only to within about a per cent.
    """
    import numpy as np

    from derm_workstation.imaging.metrics import feret_diameters

    pts = an.points_of(geometry)
    size = an.measure(kind, geometry, None).px
    if "area" not in size:
        raise InputError("Metrics need a closed outline: a polygon, freehand or ellipse region.")
    area, perimeter = size["area"], size["perimeter"]
    if kind == "ellipse":
        longest, shortest = max(size["width"], size["height"]), min(size["width"], size["height"])
    else:
        longest, shortest = feret_diameters(np.asarray(pts, dtype=np.float64))
    return OutlineFigures(area, perimeter, longest, shortest,
                          perimeter ** 2 / (4 * math.pi * area) if area > 0 else 0.0)


def scale_bar_mm(px_per_mm: float, image_width: int) -> float:
    """A round length (mm) whose bar is about a fifth of the image's width."""
    target = 0.2 * image_width / px_per_mm
    best = 1.0
    for mm in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500):
        if mm <= target * 1.25:
            best = float(mm)
    return best


# -- burned-in copy -------------------------------------------------------------------------
_YELLOW = (255, 213, 79)
_SHADOW = (0, 0, 0)
_CHIP = (16, 18, 20)


#: Bold sans fonts with "²" and "×", tried in order (Linux, Windows, macOS).
FONT_CANDIDATES = ("DejaVuSans-Bold.ttf", "arialbd.ttf", "segoeuib.ttf",
                   "/System/Library/Fonts/Supplemental/Arial Bold.ttf",
                   "/Library/Fonts/Arial Bold.ttf", "/System/Library/Fonts/Helvetica.ttc",
                   "DejaVuSans.ttf", "arial.ttf")
#: Pillow's built-in font lacks these: the plain-ASCII stand-ins used with it.
_ASCII = str.maketrans({"²": "2", "×": "x"})


def _font(size: int) -> tuple[Any, bool]:
    """(font, whether it has the full character set)."""
    from PIL import ImageFont

    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), False
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default(), False


def burn_in(image: Image.Image, views: Sequence[an.AnnotationView],
            px_per_mm: float | None, full_size: tuple[int, int] | None = None
            ) -> Image.Image:
    """A new RGB image: ``image`` (the photo as displayed) with the annotations, their
    measurement labels and — when calibrated — a scale bar drawn in.

    ``full_size`` is the photo's displayed (width, height) the annotation coordinates
    refer to, when ``image`` is a reduced copy. ``image`` itself is not changed.
    """
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    out.info = {}
    fw, fh = full_size or out.size
    sx, sy = out.width / fw, out.height / fh
    k = max(1.0, max(out.size) / 1600.0)  # lines and labels grow with the picture
    font, full_charset = _font(round(15 * k))
    line_w = max(2, round(2 * k))
    shadow_w = line_w + max(2, round(2.5 * k))
    d = ImageDraw.Draw(out)

    def P(x: float, y: float) -> tuple[float, float]:
        return x * sx, y * sy

    def stroke(points: list[tuple[float, float]], closed: bool = False) -> None:
        pts = [*points, points[0]] if closed else points
        d.line(pts, fill=_SHADOW, width=shadow_w, joint="curve")
        d.line(pts, fill=_YELLOW, width=line_w, joint="curve")

    def chip(text: str, at: tuple[float, float]) -> None:
        if not full_charset:
            text = text.translate(_ASCII)
        box = d.textbbox((0, 0), text, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        pad = 4 * k
        x = min(max(at[0], 0.0), out.width - tw - 2 * pad)
        y = min(max(at[1] - th - 2 * pad, 0.0), out.height - th - 2 * pad)
        d.rounded_rectangle((x, y, x + tw + 2 * pad, y + th + 2 * pad), radius=4 * k,
                            fill=_CHIP)
        d.text((x + pad - box[0], y + pad - box[1]), text, fill=(255, 255, 255), font=font)

    for v in views:
        pts = [P(x, y) for x, y in v.points]
        if not pts:
            continue
        text = an.measure(v.kind, v.geometry, px_per_mm).text
        label_at = (min(p[0] for p in pts), min(p[1] for p in pts) - 4 * k)
        if v.kind == "marker":
            c = pts[0]
            r = 13 * k
            d.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=_CHIP, outline=_YELLOW,
                      width=max(2, round(2.5 * k)))
            num = str(v.lesion_number or "?")
            box = d.textbbox((0, 0), num, font=font)
            d.text((c[0] - (box[0] + box[2]) / 2, c[1] - (box[1] + box[3]) / 2), num,
                   fill=_YELLOW, font=font)
            if v.label and v.label != f"Lesion {v.lesion_number}":
                chip(v.label, (c[0] + r + 4 * k, c[1] + r))
            continue
        if v.kind == "ellipse":
            (x0, y0), (x1, y1) = pts
            box4 = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            d.ellipse(box4, outline=_SHADOW, width=shadow_w)
            d.ellipse(box4, outline=_YELLOW, width=line_w)
        elif v.kind == "bidirectional":
            stroke(pts[:2])
            stroke(pts[2:])
        elif v.kind in an.CLOSED_KINDS:
            stroke(pts, closed=True)
        else:
            stroke(pts)
            if v.kind == "arrow" and len(pts) == 2:
                (tx, ty), (hx, hy) = pts
                ang = math.atan2(ty - hy, tx - hx)
                for turn in (0.44, -0.44):
                    stroke([(hx, hy), (hx + 14 * k * math.cos(ang + turn),
                                       hy + 14 * k * math.sin(ang + turn))])
                text = v.label
                label_at = (tx + 6 * k, ty + 10 * k)
        if text:
            chip(text, label_at)
    if px_per_mm:
        mm = scale_bar_mm(px_per_mm * sx, out.width)
        length = mm * px_per_mm * sx
        x0, y0 = 24 * k, out.height - 24 * k
        d.rectangle((x0 - 3 * k, y0 - 8 * k, x0 + length + 3 * k, y0 + 3 * k), fill=_SHADOW)
        d.rectangle((x0, y0 - 5 * k, x0 + length, y0), fill=(255, 255, 255))
        chip(f"{mm:g} mm", (x0, y0 - 12 * k))
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    from derm_workstation.imaging.decode import encode_jpeg, strip_identifying_metadata

    if fmt == "JPEG":
        return encode_jpeg(img, quality=92)
    clean = strip_identifying_metadata(img)
    buf = io.BytesIO()
    clean.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def export_format(path: Path, fmt: str | None = None) -> str:
    """"JPEG" or "PNG" from ``fmt`` or the file's extension; InputError otherwise."""
    if fmt:
        f = fmt.strip().upper().replace("JPG", "JPEG")
        if f not in ("JPEG", "PNG"):
            raise InputError(f"Exports are JPEG or PNG, not '{fmt}'.")
        return f
    f2 = EXPORT_FORMATS.get(path.suffix.lower())
    if f2 is None:
        raise InputError(f"Choose a file name ending in .jpg, .jpeg or .png, not "
                         f"'{path.name}'.")
    return f2


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder (no half files)."""
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"The folder does not exist: {folder}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".export-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise InputError(f"The file cannot be written to {path} "
                         f"({exc.strerror or exc}).") from exc


# -- the service ----------------------------------------------------------------------------
class LesionAnalysisService:
    """Calibrate, outline and measure lesions on stored photos (see the module docstring).

    Reading needs ``case.view``; confirming or clearing a calibration needs
    ``case.edit``. Audit details hold ids, numbers and reference names only.
    """

    def __init__(self, workspace: Workspace, actor: Actor) -> None:
        self.ws = workspace
        self.actor = actor
        self._lock = threading.Lock()
        self._cache: tuple[str, Any] | None = None  # (sha256, HxWx3 uint8 array)

    # -- reading ------------------------------------------------------------------------
    def resolve_photo_id(self, ref: str) -> str:
        """A photo's id from its full id or its first 8 or more characters."""
        self.actor.require("case.view")
        ref = (ref or "").strip()
        with self.ws.db.session() as s:
            if s.get(Photo, ref) is not None:
                return ref
            if len(ref) >= 8:
                ids = list(s.scalars(select(Photo.id).where(Photo.id.startswith(ref,
                                                                                 autoescape=True))
                                     .limit(2)))
                if len(ids) == 1:
                    return ids[0]
                if len(ids) > 1:
                    raise InputError(f"'{ref}' matches several photos; give more of the id.")
        raise NotFoundError(f"No photo with id '{ref}'.")

    def photo_facts(self, photo_id: str) -> PhotoFacts:
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            return self._facts_of(self._photo(s, photo_id))

    @staticmethod
    def _facts_of(ph: Photo) -> PhotoFacts:
        return PhotoFacts(ph.id, ph.sha256, ph.width, ph.height, ph.calibration_px_per_mm,
                          ph.calibration_method)

    @staticmethod
    def _photo(s: Any, photo_id: str) -> Photo:
        ph = s.get(Photo, photo_id)
        if ph is None:
            raise NotFoundError(f"No photo with id '{photo_id}'.")
        assert isinstance(ph, Photo)
        return ph

    def _facts(self, photo: str | PhotoFacts) -> PhotoFacts:
        return photo if isinstance(photo, PhotoFacts) else self.photo_facts(photo)

    def rgb(self, photo: str | PhotoFacts) -> npt.NDArray[np.uint8]:
        """The photo as displayed, full resolution, HxWx3 uint8 (read-only array)."""
        import numpy as np

        from derm_workstation.imaging.decode import decode_image

        self.actor.require("case.view")
        facts = self._facts(photo)
        with self._lock:
            if self._cache is not None and self._cache[0] == facts.sha256:
                cached: npt.NDArray[np.uint8] = self._cache[1]
                return cached
        data = self.ws.images.read_bytes(facts.sha256)
        arr = np.asarray(decode_image(data), dtype=np.uint8)
        arr.setflags(write=False)
        with self._lock:
            self._cache = (facts.sha256, arr)
        return arr

    def calibration_state(self, photo_id: str) -> CalibrationState:
        """The photo's calibration, and who confirmed it when (the latest audit event)."""
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            ph = self._photo(s, photo_id)
            ev = s.scalars(
                select(AuditEvent)
                .where(AuditEvent.entity_type == "photo", AuditEvent.entity_id == photo_id,
                       AuditEvent.action.in_(CALIBRATION_ACTIONS))
                .order_by(AuditEvent.id.desc()).limit(1)).first()
            by = at = conf = None
            if ev is not None and ev.action == "photo.calibrate" and ph.calibration_px_per_mm:
                by, at = ev.actor, ev.at
                c = (ev.detail or {}).get("confidence")
                conf = float(c) if isinstance(c, (int, float)) else None
            return CalibrationState(ph.id, ph.calibration_px_per_mm, ph.calibration_method,
                                    by, at, conf)

    # -- calibration --------------------------------------------------------------------
    def detect_reference(self, photo: str | PhotoFacts, reference: str | None = None,
                         diameter_mm: float | None = None, *,
                         lesion_xy: Point | None = None,
                         lesion_roi: an.AnnotationView | None = None) -> Calibration:
        """Find a coin or sticker (``reference``, a built-in name) or a disc of
        ``diameter_mm`` on the photo as displayed. Nothing is stored: the clinician
        confirms with :meth:`confirm_reference`. The lesion — a closed ROI
        (``lesion_roi``) or a point (``lesion_xy``, image pixels) — is never taken for
        the reference (ROI only) and adds the "far from the lesion in a wide shot"
        check. Raises NoReferenceFound."""
        from derm_workstation.imaging.calibration import detect_reference

        _method, diameter = reference_method(reference, diameter_mm)
        rgb = self.rgb(photo)
        lesion: Any = lesion_xy
        if lesion_roi is not None and lesion_roi.kind in ROI_KINDS:
            h, w = rgb.shape[:2]
            mask = roi_mask(lesion_roi.kind, lesion_roi.geometry, (w, h))
            if mask.any():
                lesion = mask
        return detect_reference(rgb, diameter, lesion=lesion)

    def confirm_calibration(self, photo_id: str, px_per_mm: float, method: str,
                            detail: dict[str, Any] | None = None) -> CalibrationState:
        """Store a calibration the clinician confirmed; audited with ``detail``
        (e.g. the reference's name, confidence and ellipse)."""
        self.actor.require("case.edit")
        ppm = float(px_per_mm)
        if not (math.isfinite(ppm) and 0.01 <= ppm <= 10_000):
            raise InputError("The calibration must be a positive number of pixels per mm.")
        method = (method or "").strip()
        if not method or len(method) > _METHOD_LEN:
            raise InputError(f"The calibration method must be 1 to {_METHOD_LEN} characters.")
        clean = json.loads(json.dumps(detail or {}, default=str))
        with self.ws.db.session() as s:
            ph = self._photo(s, photo_id)
            before = ph.calibration_px_per_mm
            ph.calibration_px_per_mm = ppm
            ph.calibration_method = method
            s.flush()
            audit.record(s, self.actor, "photo.calibrate", "photo", ph.id,
                         {**clean, "px_per_mm": round(ppm, 6), "method": method,
                          "previous_px_per_mm": before})
        return self.calibration_state(photo_id)

    def confirm_reference(self, photo_id: str, cal: Calibration, reference: str | None,
                          diameter_mm: float | None = None) -> CalibrationState:
        """Confirm a detected reference: stores it with its name, confidence and ellipse."""
        method, diameter = reference_method(reference, diameter_mm)
        detail: dict[str, Any] = {
            "source": "reference", "reference": method.split(":", 1)[1],
            "reference_mm": diameter, "confidence": round(cal.confidence, 3),
            "ellipse": cal.ellipse.as_json() if cal.ellipse is not None else None,
            "warnings": list(cal.warnings)}
        return self.confirm_calibration(photo_id, cal.px_per_mm, method, detail)

    def calibrate_by_line(self, photo_id: str, p0: Point, p1: Point,
                          length_mm: float) -> CalibrationState:
        """Calibrate from a line drawn over a ruler in the photo, ``length_mm`` long."""
        from derm_workstation.imaging.calibration import from_ruler_line

        self.actor.require("case.edit")
        facts = self.photo_facts(photo_id)
        for x, y in (p0, p1):
            if not (-1 <= x <= facts.width + 1 and -1 <= y <= facts.height + 1):
                raise InputError("The ruler line must lie on the photo.")
        if not (math.isfinite(length_mm) and 0.1 <= length_mm <= 2000):
            raise InputError("The ruler length must be between 0.1 and 2000 millimetres.")
        cal = from_ruler_line(p0, p1, float(length_mm))
        state = self.confirm_calibration(
            photo_id, cal.px_per_mm, "ruler-line",
            {"source": "ruler-line", "p0": [round(p0[0], 2), round(p0[1], 2)],
             "p1": [round(p1[0], 2), round(p1[1], 2)], "length_mm": float(length_mm),
             "confidence": cal.confidence, "warnings": list(cal.warnings)})
        return replace(state, warnings=cal.warnings)

    def clear_calibration(self, photo_id: str) -> CalibrationState:
        """Forget the photo's calibration (measurements go back to pixels)."""
        self.actor.require("case.edit")
        with self.ws.db.session() as s:
            ph = self._photo(s, photo_id)
            before, method = ph.calibration_px_per_mm, ph.calibration_method
            ph.calibration_px_per_mm = None
            ph.calibration_method = None
            s.flush()
            audit.record(s, self.actor, "photo.calibration_clear", "photo", ph.id,
                         {"previous_px_per_mm": before, "previous_method": method})
        return self.calibration_state(photo_id)

    # -- outline and metrics -------------------------------------------------------------
    def segment(self, photo: str | PhotoFacts, seed: Point | None = None, *,
                markers: Iterable[an.AnnotationView] | None = None) -> OutlineProposal:
        """Propose the lesion's outline (automatically, or from a point inside it) as
        polygon corners in image pixels. ``markers``: the photo's annotations to look
        for a numbered lesion marker inside the outline (read from the store when
        ``photo`` is an id and none are given). Raises NoLesionFound."""
        from derm_workstation.imaging.segmentation import mask_to_polygon, segment

        facts = self._facts(photo)
        if markers is None and not isinstance(photo, PhotoFacts):
            markers = an.AnnotationService(self.ws, self.actor).list(facts.id)
        rgb = self.rgb(facts)
        seg = segment(rgb, seed)
        fine = mask_to_polygon(seg.mask, max_points=OUTLINE_POINTS)
        perimeter = an.path_length([(float(x), float(y)) for x, y in fine], closed=True)
        n = int(min(OUTLINE_POINTS, max(20, perimeter / OUTLINE_SPACING_PX)))
        poly = fine if n >= len(fine) else mask_to_polygon(seg.mask, max_points=n)
        points = tuple((round(float(x), 2), round(float(y), 2)) for x, y in poly)
        if len(points) < 3:
            from derm_workstation.imaging.segmentation import NoLesionFound

            raise NoLesionFound("No lesion was found: the region found was too small to "
                                "outline. Draw the outline by hand.")
        number = lesion_number_inside(points, markers or [])
        return OutlineProposal(facts.id, points, float(seg.confidence), seg.method,
                               bool(seg.dermoscopic), seg.area_px, tuple(seg.warnings),
                               number)

    def metrics(self, photo: str | PhotoFacts, annotation: str | an.AnnotationView, *,
                dermoscopic: bool | None = None) -> LesionMetrics:
        """Metrics of a closed ROI (polygon, freehand or ellipse) with the photo's
        calibration. ``dermoscopic`` None: detected from the photo (a dermatoscope's
        round field) — then the ABCD total dermoscopy score is included.

        Size and shape figures (area, perimeter, Feret diameters, border
        irregularity) come from the outline itself (:func:`outline_figures`), so they
        equal the annotation's label and the change over time; asymmetry, colours and
        the score come from the pixels inside it. An outline reaching past the edge
        of the photo is measured on the pixels inside the photo instead."""
        from derm_workstation.imaging.metrics import measure
        from derm_workstation.imaging.segmentation import looks_dermoscopic

        facts = self._facts(photo)
        view = (annotation if isinstance(annotation, an.AnnotationView)
                else an.AnnotationService(self.ws, self.actor).get(annotation))
        if view.photo_id != facts.id:
            raise InputError("The annotation belongs to another photo.")
        if view.kind not in ROI_KINDS:
            raise InputError(f"A {an.KIND_LABELS[view.kind].lower()} has no area: choose a "
                             "polygon, freehand or ellipse region to measure.")
        rgb = self.rgb(facts)
        h, w = rgb.shape[:2]
        # measure on a crop around the ROI (the same pixels, far less to rasterise); the
        # margin keeps "touches the edge of the photo" true only at the photo's edge
        xs = [p[0] for p in view.points]
        ys = [p[1] for p in view.points]
        margin = 8
        x0 = min(max(math.floor(min(xs)) - margin, 0), w)
        y0 = min(max(math.floor(min(ys)) - margin, 0), h)
        x1 = max(min(math.ceil(max(xs)) + margin, w), x0)
        y1 = max(min(math.ceil(max(ys)) + margin, h), y0)
        mask = roi_mask(view.kind, view.geometry, (x1 - x0, y1 - y0), (x0, y0))
        if not mask.any():
            raise InputError("The region lies outside the photo or has no area.")
        derm = looks_dermoscopic(rgb) if dermoscopic is None else dermoscopic
        m = measure(mask, rgb[y0:y1, x0:x1], facts.px_per_mm, dermoscopic=derm)
        if (x0, y0) != (0, 0):
            m = replace(m, centroid=(m.centroid[0] + x0, m.centroid[1] + y0))
        inside = min(xs) >= 0 and min(ys) >= 0 and max(xs) <= w and max(ys) <= h
        if inside:
            # the outline's own figures, exactly as its label on the photo and the
            # change over time give them (the mask's are estimates within ~1 %)
            f = outline_figures(view.kind, view.geometry)
            m = replace(m, area_px=f.area_px, perimeter_px=f.perimeter_px,
                        max_diameter_px=f.max_diameter_px,
                        min_diameter_px=f.min_diameter_px,
                        border_irregularity=f.border_irregularity)
        return m

    # -- export ---------------------------------------------------------------------------
    def render_annotated(self, photo: str | PhotoFacts,
                         views: Sequence[an.AnnotationView] | None = None) -> Image.Image:
        """The photo as displayed with ``views`` (default: the stored annotations)
        burned in, plus a scale bar when calibrated. A new image, no metadata."""
        from PIL import Image

        facts = self._facts(photo)
        if views is None:
            views = an.AnnotationService(self.ws, self.actor).list(facts.id)
        img = Image.fromarray(self.rgb(facts))
        return burn_in(img, views, facts.px_per_mm, (img.width, img.height))

    def write_annotated(self, photo: str | PhotoFacts, path: str | Path,
                        views: Sequence[an.AnnotationView] | None = None,
                        fmt: str | None = None) -> str:
        """Write the burned-in copy to ``path`` (JPEG or PNG by ``fmt`` or extension);
        returns the format. Pixel work only: call :meth:`record_export` to audit it."""
        out = Path(path)
        f = export_format(out, fmt)
        data = _encode(self.render_annotated(photo, views), f)
        write_atomically(out, data)
        return f

    def write_annotations_json(self, photo_id: str, path: str | Path) -> dict[str, Any]:
        """Write :meth:`AnnotationService.export_json` of the photo to ``path``."""
        doc = an.AnnotationService(self.ws, self.actor).export_json(photo_id)
        write_atomically(Path(path), (json.dumps(doc, indent=2, ensure_ascii=False)
                                      + "\n").encode("utf-8"))
        return doc

    def record_export(self, photo_id: str, what: str, fmt: str) -> None:
        """Audit an export of the photo ("annotated-copy" or "annotations-json").
        The file's path is not recorded (it may contain a patient's name)."""
        self.actor.require("case.view")
        with self.ws.db.session() as s:
            ph = self._photo(s, photo_id)
            n = len(list(s.scalars(select(Annotation.id).where(Annotation.photo_id == ph.id))))
            audit.record(s, self.actor, "photo.export", "photo", ph.id,
                         {"what": what, "format": fmt, "annotations": n})

    def export(self, photo_id: str, *, image_out: str | Path | None = None,
               json_out: str | Path | None = None) -> dict[str, Any]:
        """Both exports of the CLI: the burned-in copy and/or the JSON; audited."""
        if image_out is None and json_out is None:
            raise InputError("Give --image-out and/or --json-out.")
        result: dict[str, Any] = {"photo_id": photo_id}
        facts = self.photo_facts(photo_id)
        if json_out is not None:
            doc = self.write_annotations_json(photo_id, json_out)
            self.record_export(photo_id, "annotations-json", "JSON")
            result["json_out"] = str(json_out)
            result["annotations"] = len(doc["annotations"])
        if image_out is not None:
            f = self.write_annotated(facts, image_out)
            self.record_export(photo_id, "annotated-copy", f)
            result["image_out"] = str(image_out)
            result["image_format"] = f
        result["calibrated"] = facts.px_per_mm is not None
        result["px_per_mm"] = facts.px_per_mm
        return result
