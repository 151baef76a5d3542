"""Alignment for the compare window: the jobs that run on the image pool and the
matrices they produce, in the viewer's coordinates.

``imaging.registration`` works on reduced copies with pixel centres at integers; the
viewer works on full-size pixels with pixel corners at integers (see
``qt_photo_view``). :func:`to_view_coordinates` converts between the two;
:func:`qtransform` turns a 3x3 matrix into the ``QTransform`` the views use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PySide6.QtGui import QTransform

ALIGN_MODELS: tuple[tuple[str, str], ...] = (
    ("similarity", "Similarity (shift, turn, zoom)"), ("affine", "Affine (also tilt)"))
ALIGN_SIDE = 1024
"""Photos are decoded (DCT-scaled) to this longer side for automatic alignment."""

def qtransform(m: np.ndarray) -> QTransform:
    """A 3x3 column-vector matrix (``p' = m @ (x, y, 1)``) as a QTransform."""
    m = np.asarray(m, dtype=np.float64)
    return QTransform(m[0, 0], m[1, 0], m[2, 0], m[0, 1], m[1, 1], m[2, 1],
                      m[0, 2], m[1, 2], m[2, 2])


def _translate(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def to_view_coordinates(m: np.ndarray, follow_scale: tuple[float, float] = (1.0, 1.0),
                        base_scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Registration matrix (pixel centres at integers, on images reduced by ``*_scale``
    = reduced / full size) -> full-size view coordinates (pixel corners at integers)."""
    m_corners = _translate(0.5) @ np.asarray(m, dtype=np.float64) @ _translate(-0.5)
    s_f = np.diag([follow_scale[0], follow_scale[1], 1.0])
    s_b_inv = np.diag([1.0 / base_scale[0], 1.0 / base_scale[1], 1.0])
    out = s_b_inv @ m_corners @ s_f
    return out / out[2, 2]


def size_match(follow: tuple[int, int], base: tuple[int, int]) -> QTransform:
    """The default follow-up -> baseline map: the whole photo fitted to the baseline."""
    fw, fh = follow
    bw, bh = base
    if min(fw, fh, bw, bh) <= 0:
        return QTransform()
    s = min(bw / fw, bh / fh)
    t = QTransform()
    t.translate(bw / 2.0, bh / 2.0)
    t.scale(s, s)
    t.translate(-fw / 2.0, -fh / 2.0)
    return t


def scale_of(t: QTransform) -> float:
    return math.sqrt(abs(t.m11() * t.m22() - t.m12() * t.m21())) or 1.0


def quarter_of(t: QTransform) -> int:
    """The rotation in ``t`` (image -> baseline) to the nearest clockwise quarter turn:
    how much further a pane must turn to show its anatomy upright like the baseline."""
    return round(math.degrees(math.atan2(t.m12(), t.m11())) / 90.0) % 4


@dataclass(frozen=True)
class AlignResult:
    matrix: np.ndarray  # follow-up -> baseline, view coordinates
    inliers: int
    matches: int
    confidence: float
    model: str
    rms_px: float


def align_job(base_load: Callable[[], bytes], base_size: tuple[int, int],
              follow_load: Callable[[], bytes], follow_size: tuple[int, int],
              model: str) -> AlignResult:
    """Runs on the image pool: decode both photos small and align them."""
    from derm_workstation.imaging.decode import decode_image
    from derm_workstation.imaging.registration import align

    b = decode_image(base_load(), max_size=ALIGN_SIDE)
    f = decode_image(follow_load(), max_size=ALIGN_SIDE)
    a = align(np.asarray(b), np.asarray(f), model)
    bs = (b.width / base_size[0], b.height / base_size[1])
    fs = (f.width / follow_size[0], f.height / follow_size[1])
    return AlignResult(to_view_coordinates(a.matrix, fs, bs), a.inliers, a.matches,
                       a.confidence, a.model, a.rms_px / bs[0])


def manual_job(base_pts: list[tuple[float, float]], follow_pts: list[tuple[float, float]],
               model: str) -> AlignResult:
    """Runs on the image pool (the first use imports scikit-image)."""
    from derm_workstation.imaging.registration import manual_alignment

    # clicked points are view coordinates; registration puts pixel centres at integers
    a = manual_alignment([(x - 0.5, y - 0.5) for x, y in base_pts],
                         [(x - 0.5, y - 0.5) for x, y in follow_pts], model)
    return AlignResult(to_view_coordinates(a.matrix), a.inliers, a.matches, a.confidence,
                       a.model, a.rms_px)


def confidence_words(c: float) -> str:
    if c >= 0.6:
        return "good"
    if c >= 0.2:
        return "check it by eye with Blend or Flicker"
    return "low: consider aligning by hand"
