"""Display levels for the photo viewer, and non-destructive brightness/contrast/gamma.

No Qt here: the viewer (``qt/widgets/qt_photo_view.py``) asks this module *which*
resolution to decode and draw, and uses it to adjust pixels; the decoding itself goes
through :func:`~derm_workstation.imaging.decode.decode_image`, the one safe entry point.

**Levels.** A photo of W x H displayed pixels has levels 0..3 at 1, 1/2, 1/4 and 1/8 of
its size (coarser levels are not made for small photos). These are exactly the JPEG
decoder's DCT scales, so a level is decoded straight from the file at that size: a
1/4 level of a 24 MP photo costs the entropy decoding and almost nothing else, and the
full-size pixels never exist in memory until the clinician zooms in. Other formats are
decoded whole and reduced, which is correct, only slower.

The viewer shows the coarsest level that still has at least one decoded pixel per
screen pixel at the current zoom (:func:`wanted_level`); until that level arrives it
draws the best one already decoded (:func:`pick_loaded`), so the first, screen-sized
level is on screen quickly and finer detail follows when the clinician zooms in.

**Quick preview.** Even at 1/8 scale a JPEG decoder must entropy-decode the whole
file, which is about half the cost of a full decode. So the first pixels on screen come
from a small cached copy (:data:`PREVIEW_SIZE` on the longer side, kept by
``imaging.thumbnails.ThumbnailCache`` under the photo's hash, made in the background the
first time a photo is shown or imported): it is replaced by the photo's own pixels a few
tens of milliseconds later. A photo shown for the very first time, with no cached
preview, starts with its screen-sized level; for a baseline 12 MP JPEG that takes about
0.7-1.1x a full decode (``benchmarks/viewer.py``, on a loaded 2-core machine; the entropy
decoding alone, a 1/8 DCT decode, is ~0.45-0.7x of it), so only the cached preview
brings the first pixels of such a photo under half a full decode.

**Adjustments.** :class:`Adjustment` (brightness, contrast, gamma) is a 256-entry lookup
table applied to a *copy* of the displayed pixels (:func:`apply_lut`); the stored
photo is never changed. The viewer runs it on the image pool, never on the GUI thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

# numpy, Pillow and the decoder are imported where they are used: the viewer imports
# this module while the window opens, and must not wait for them.
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

__all__ = [
    "LEVEL_COUNT",
    "MIN_LEVEL_SIDE",
    "PREVIEW_SIZE",
    "Adjustment",
    "LevelSpec",
    "apply_lut",
    "decode_level",
    "fill_bgrx",
    "pick_loaded",
    "plan_levels",
    "wanted_level",
]

PREVIEW_SIZE = 1280
"""Longer side of the cached quick-preview copy of a photo (see the module docstring)."""
LEVEL_COUNT = 4
"""Full size, 1/2, 1/4 and 1/8: the scales a JPEG decoder produces directly."""
MIN_LEVEL_SIDE = 256
"""No level whose longer side would be shorter than this (except level 0)."""
_TOLERANCE = 0.985
"""A level counts as sharp enough when its scale is at least 98.5 % of what the zoom
needs (rounding of odd sizes must not force the next, 4x bigger, level)."""
_ROWS_PER_STRIP = 256


@dataclass(frozen=True)
class LevelSpec:
    """One level of a photo: ``index`` 0 is full size, ``k`` is 1/2**k."""

    index: int
    width: int
    height: int
    full_width: int
    full_height: int

    @property
    def scale(self) -> float:
        """Level pixels per full-size pixel (horizontal; the two axes differ by rounding)."""
        return self.width / self.full_width

    @property
    def max_size(self) -> int:
        """The ``max_size`` to pass to :func:`decode_image` for this level."""
        return max(self.width, self.height)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _fit(width: int, height: int, max_size: int) -> tuple[int, int]:
    # the same rounding as decode_image, so a planned level has the decoded size
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def plan_levels(width: int, height: int) -> tuple[LevelSpec, ...]:
    """The levels of a photo of ``width`` x ``height`` displayed pixels, finest first."""
    if width < 1 or height < 1:
        raise ValueError("a photo has at least one pixel")
    longest = max(width, height)
    out = [LevelSpec(0, width, height, width, height)]
    for k in range(1, LEVEL_COUNT):
        side = longest >> k
        if side < MIN_LEVEL_SIDE:
            break
        w, h = _fit(width, height, side)
        out.append(LevelSpec(k, w, h, width, height))
    return tuple(out)


def wanted_level(levels: Sequence[LevelSpec], zoom: float) -> LevelSpec:
    """The coarsest level with at least one pixel per screen pixel at ``zoom``
    (screen pixels per full-size pixel, device pixel ratio included)."""
    if not levels:
        raise ValueError("no levels")
    best = levels[0]
    for spec in levels:
        if spec.scale >= zoom * _TOLERANCE and spec.scale <= best.scale:
            best = spec
    return best


def pick_loaded(scales: Sequence[float], zoom: float) -> int | None:
    """Index (into ``scales``) of the decoded level to draw at ``zoom``: the coarsest one
    sharp enough, else the sharpest there is. None when nothing is decoded."""
    if not scales:
        return None
    sharp = [i for i, s in enumerate(scales) if s >= zoom * _TOLERANCE]
    if sharp:
        return min(sharp, key=lambda i: scales[i])
    return max(range(len(scales)), key=lambda i: scales[i])


def decode_level(data: bytes, spec: LevelSpec) -> Image.Image:
    """Decode one level through the safe pipeline (DCT-scaled for JPEG)."""
    from derm_workstation.imaging.decode import decode_image

    if spec.index == 0:
        return decode_image(data)
    return decode_image(data, max_size=spec.max_size)


def fill_bgrx(img: Image.Image, out: npt.NDArray[np.uint8]) -> None:
    """Copy an RGB image into ``out`` (H x stride x 4, bytes B, G, R, 255 — a little-endian
    ``0xffRRGGBB`` word, Qt's ``Format_RGB32``) a strip at a time, so converting a
    24 MP photo never needs a second full-size RGB copy."""
    import numpy as np

    if img.mode != "RGB":
        raise ValueError("expected an RGB image")
    w, h = img.size
    if out.ndim != 3 or out.shape[0] != h or out.shape[1] < w or out.shape[2] != 4:
        raise ValueError(f"output buffer {out.shape} does not fit a {w} x {h} image")
    for y in range(0, h, _ROWS_PER_STRIP):
        y1 = min(h, y + _ROWS_PER_STRIP)
        strip = np.asarray(img.crop((0, y, w, y1)))
        dst = out[y:y1, :w]
        dst[..., 0] = strip[..., 2]
        dst[..., 1] = strip[..., 1]
        dst[..., 2] = strip[..., 0]
        dst[..., 3] = 255


# ------------------------------------------------------------------------ adjustments


@dataclass(frozen=True)
class Adjustment:
    """Display-only brightness, contrast and gamma.

    ``brightness`` and ``contrast`` run from -100 to 100 (0 = unchanged); ``gamma`` from
    0.25 to 4.0 (1 = unchanged; above 1 brightens the mid-tones, as in photo editors).
    Applied in that order to values 0..1: contrast around mid-grey (factor
    ``2 ** (contrast / 50)``, i.e. x0.25..x4), then brightness (offset up to +-0.5), then
    clipping, then ``v ** (1 / gamma)``.
    """

    brightness: int = 0
    contrast: int = 0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not -100 <= self.brightness <= 100:
            raise ValueError("brightness must be from -100 to 100")
        if not -100 <= self.contrast <= 100:
            raise ValueError("contrast must be from -100 to 100")
        if not (math.isfinite(self.gamma) and 0.25 <= self.gamma <= 4.0):
            raise ValueError("gamma must be from 0.25 to 4.0")

    @property
    def is_identity(self) -> bool:
        return self.brightness == 0 and self.contrast == 0 and abs(self.gamma - 1.0) < 1e-9

    def lut(self) -> npt.NDArray[np.uint8]:
        """The 256-entry table (monotonic, non-decreasing)."""
        import numpy as np

        v = np.arange(256, dtype=np.float64) / 255.0
        v = (v - 0.5) * (2.0 ** (self.contrast / 50.0)) + 0.5
        v = v + self.brightness / 200.0
        v = np.clip(v, 0.0, 1.0) ** (1.0 / self.gamma)
        return np.asarray(np.clip(np.rint(v * 255.0), 0, 255), dtype=np.uint8)

    def describe(self) -> str:
        """Short text for the viewer ("" when unchanged)."""
        if self.is_identity:
            return ""
        parts = []
        if self.brightness:
            parts.append(f"brightness {self.brightness:+d}")
        if self.contrast:
            parts.append(f"contrast {self.contrast:+d}")
        if abs(self.gamma - 1.0) >= 1e-9:
            parts.append(f"gamma {self.gamma:.2f}")
        return "display adjusted: " + ", ".join(parts)


def apply_lut(src: npt.NDArray[np.uint8], lut: npt.NDArray[np.uint8],
              out: npt.NDArray[np.uint8] | None = None,
              keep_last_channel: bool = True) -> npt.NDArray[np.uint8]:
    """``lut[src]`` a strip of rows at a time (bounded temporary memory).

    For 4-channel pixels (B, G, R, X) the last channel is copied unchanged when
    ``keep_last_channel``. ``out`` may be ``src`` itself."""
    import numpy as np

    if lut.shape != (256,) or lut.dtype != np.uint8:
        raise ValueError("lut must be 256 uint8 values")
    if out is None:
        out = np.empty_like(src)
    elif out.shape != src.shape:
        raise ValueError("out must have the shape of src")
    keep = keep_last_channel and src.ndim == 3 and src.shape[2] == 4
    for y in range(0, src.shape[0], _ROWS_PER_STRIP):
        sl = slice(y, min(src.shape[0], y + _ROWS_PER_STRIP))
        if keep:
            last = src[sl, ..., 3].copy()
            np.take(lut, src[sl], out=out[sl])
            out[sl, ..., 3] = last
        else:
            np.take(lut, src[sl], out=out[sl])
    return out
