"""One photo's decoded display levels, shared by every view that shows it.

A :class:`QtPhotoLayer` holds a :class:`PhotoSource` (what the photo is and how to read
its bytes) and the levels decoded so far (``imaging.levels``): views ask it for the best
image for their zoom (:meth:`QtPhotoLayer.image_for`) and tell it what they would like
(:meth:`QtPhotoLayer.request`). Decoding, pixel conversion and brightness/contrast/gamma
all run on the image pool; results come back by signal and only then touch the layer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage
from shiboken6 import isValid

from derm_workstation.core.errors import DermError
from derm_workstation.imaging.levels import (
    Adjustment,
    LevelSpec,
    apply_lut,
    decode_level,
    fill_bgrx,
    pick_loaded,
    plan_levels,
    wanted_level,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from derm_workstation.core.views import PhotoView
    from derm_workstation.qt.tasks import QtTaskManager

log = logging.getLogger(__name__)

PREVIEW = -1
"""Key of the placeholder (a thumbnail already in memory) among the levels."""
#: At most this many full-size decodes at once, whatever the pool size: a 24 MP decode
#: needs ~0.3 GB at its peak, and four panes must stay well under the memory budget.
_BIG_DECODES = threading.BoundedSemaphore(2)
_BIG_PIXELS = 8_000_000


def _rgb32(img: QImage) -> QImage:
    if img.format() == QImage.Format.Format_RGB32:
        return img
    return img.convertToFormat(QImage.Format.Format_RGB32)


def _pixels(img: QImage, writable: bool) -> np.ndarray:
    """(H, stride, 4) uint8 view of an RGB32 image's memory."""
    import numpy as np

    buf = img.bits() if writable else img.constBits()
    return np.frombuffer(buf, np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)


def to_qimage(img: Image.Image) -> QImage:
    """An RGB Pillow image as an RGB32 QImage (call on the image pool).

    Small images (screen-sized levels, previews: the first pixels on screen) go through
    Qt's SIMD conversion, ~3x faster than copying channels with numpy; big ones are
    converted a strip at a time so no second full-size RGB copy ever exists."""
    w, h = img.size
    if w * h < _BIG_PIXELS:
        packed = img.tobytes()
        return QImage(packed, w, h, 3 * w, QImage.Format.Format_RGB888).convertToFormat(
            QImage.Format.Format_RGB32)
    out = QImage(w, h, QImage.Format.Format_RGB32)
    fill_bgrx(img, _pixels(out, writable=True))
    return out


def decode_to_qimage(data: bytes, spec: LevelSpec) -> QImage:
    """Runs on the image pool: decode one level (safe pipeline) into an RGB32 QImage."""
    big = spec.pixels >= _BIG_PIXELS
    if big:
        _BIG_DECODES.acquire()
    try:
        return to_qimage(decode_level(data, spec))
    finally:
        if big:
            _BIG_DECODES.release()


def decode_preview(load: Callable[[], bytes | None]) -> QImage | None:
    """Runs on the image pool: the cached quick preview, decoded (safe pipeline)."""
    from derm_workstation.imaging.decode import decode_image

    data = load()
    if not data:
        return None
    return to_qimage(decode_image(data))


def adjusted_copy(img: QImage, adj: Adjustment) -> QImage:
    """Runs on the image pool: a copy of ``img`` with ``adj`` applied."""
    out = QImage(img.width(), img.height(), QImage.Format.Format_RGB32)
    apply_lut(_pixels(img, writable=False), adj.lut(), _pixels(out, writable=True))
    return out


class _Bytes:
    """The photo's bytes, read once (on the pool) and shared by every level decode."""

    def __init__(self, load: Callable[[], bytes]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._data: bytes | None = None

    def get(self) -> bytes:
        with self._lock:
            if self._data is None:
                self._data = self._load()
            return self._data


@dataclass(frozen=True)
class PhotoSource:
    """A photo to show: identity, displayed size, facts for the info overlay, bytes loader.

    ``load`` runs on the image pool and must return the verified encoded bytes.
    ``preview_load`` (optional, also on the pool) returns a small cached copy of the photo
    to show while the photo itself decodes, or None when there is none yet."""

    key: str
    width: int
    height: int
    load: Callable[[], bytes] = field(compare=False, repr=False)
    title: str = ""
    body_site: str = ""
    taken_at: datetime | None = None
    calibration_px_per_mm: float | None = None
    preview_load: Callable[[], bytes | None] | None = field(default=None, compare=False,
                                                            repr=False)

    @classmethod
    def from_photo(cls, photo: PhotoView, load: Callable[[], bytes],
                   preview_load: Callable[[], bytes | None] | None = None) -> PhotoSource:
        return cls(
            key=photo.sha256,
            width=photo.width,
            height=photo.height,
            load=load,
            preview_load=preview_load,
            title=photo.title,
            body_site=photo.body_site,
            taken_at=photo.taken_at,
            calibration_px_per_mm=photo.calibration_px_per_mm,
        )


@dataclass(frozen=True)
class Drawable:
    """An image to draw and its level pixels per full-size pixel on each axis."""

    image: QImage
    sx: float
    sy: float
    level: int  # the level index, PREVIEW for the placeholder


class QtPhotoLayer(QObject):
    """Decoded levels of one photo (see module docstring)."""

    #: New pixels are available (a level arrived or an adjustment finished).
    changed = Signal()
    #: The first real level of the current photo is ready (its source key).
    shown = Signal(str)
    #: The current photo cannot be shown: a sentence for the clinician.
    failed = Signal(str)

    def __init__(self, tasks: QtTaskManager | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tasks = tasks
        self.source: PhotoSource | None = None
        self._levels: tuple[LevelSpec, ...] = ()
        self._images: dict[int, QImage] = {}
        self._adjusted: dict[int, tuple[Adjustment, QImage]] = {}
        self._pending: set[int] = set()
        self._adj_pending: set[int] = set()
        self._failed_levels: set[int] = set()
        self._bytes: _Bytes | None = None
        self._generation = 0
        self._adjustment = Adjustment()
        self._error = ""
        self._was_shown = False

    # -- what is shown ------------------------------------------------------------------
    def set_source(self, source: PhotoSource | None, preview: QImage | None = None) -> None:
        """Show another photo: drops every decoded level of the previous one."""
        self._generation += 1
        self.source = source
        self._images.clear()
        self._adjusted.clear()
        self._pending.clear()
        self._adj_pending.clear()
        self._failed_levels.clear()
        self._error = ""
        self._was_shown = False
        if source is None:
            self._levels = ()
            self._bytes = None
        else:
            self._levels = plan_levels(source.width, source.height)
            self._bytes = _Bytes(source.load)
            if preview is not None and not preview.isNull():
                self._images[PREVIEW] = _rgb32(preview)
            elif source.preview_load is not None and self.tasks is not None:
                gen, load = self._generation, source.preview_load
                self.tasks.run_image(lambda: decode_preview(load),
                                     lambda img: self._preview_ready(gen, img),
                                     lambda exc: self._preview_failed(gen, exc))
        self.changed.emit()

    def _stale(self, gen: int) -> bool:
        """A result for another photo, or for a layer whose window has been closed."""
        return not isValid(self) or gen != self._generation

    def _preview_ready(self, gen: int, img: QImage | None) -> None:
        if self._stale(gen) or img is None or self.has_pixels or self._error:
            return  # the photo itself (or its failure) came first
        self._images[PREVIEW] = img
        self.changed.emit()

    def _preview_failed(self, gen: int, exc: BaseException) -> None:
        # only a cache: the photo itself decides what is shown
        if not self._stale(gen):
            log.info("quick preview unusable: %s", exc)

    @property
    def has_preview(self) -> bool:
        return PREVIEW in self._images

    def set_image(self, image: QImage, key: str = "image") -> None:
        """Show a ready image (no levels to load)."""
        img = _rgb32(image)
        self.set_source(PhotoSource(key, img.width(), img.height(),
                                    load=lambda: b""), None)
        self._levels = self._levels[:1]  # nothing else to decode
        self._images[0] = img
        self._was_shown = True
        self.changed.emit()
        self.shown.emit(key)

    def bytes_loader(self) -> Callable[[], bytes] | None:
        """Reads the current photo's bytes once and shares them (call on the image pool)."""
        return self._bytes.get if self._bytes is not None else None

    @property
    def levels(self) -> tuple[LevelSpec, ...]:
        return self._levels

    @property
    def loaded_levels(self) -> set[int]:
        """Indexes of the real levels decoded so far (not the preview)."""
        return {k for k in self._images if k != PREVIEW}

    @property
    def pending_levels(self) -> set[int]:
        return set(self._pending)

    @property
    def has_pixels(self) -> bool:
        return bool(self.loaded_levels)

    @property
    def error(self) -> str:
        return self._error

    @property
    def full_size(self) -> tuple[int, int]:
        s = self.source
        return (s.width, s.height) if s else (0, 0)

    # -- adjustments ------------------------------------------------------------------------
    @property
    def adjustment(self) -> Adjustment:
        return self._adjustment

    def set_adjustment(self, adj: Adjustment) -> None:
        if adj == self._adjustment:
            return
        self._adjustment = adj
        if adj.is_identity:
            self._adjusted.clear()
        self.changed.emit()

    @property
    def adjustment_pending(self) -> bool:
        """An adjusted copy for the current settings is still being computed."""
        return bool(self._adj_pending)

    # -- drawing --------------------------------------------------------------------------
    def _scale_of(self, img: QImage) -> float:
        w, _ = self.full_size
        return img.width() / w if w else 1.0

    def image_for(self, zoom: float) -> Drawable | None:
        """The best image available now for ``zoom`` (screen px per full-size px)."""
        if not self._images or self.source is None:
            return None
        keys = list(self._images)
        idx = pick_loaded([self._scale_of(self._images[k]) for k in keys], zoom)
        assert idx is not None
        key = keys[idx]
        img = self._images[key]
        adj = self._adjustment
        if not adj.is_identity:
            ready = {k: im for k, (a, im) in self._adjusted.items() if a == adj}
            if key in ready:
                img = ready[key]
            elif ready:  # another level already adjusted: better than unadjusted pixels
                keys2 = list(ready)
                j = pick_loaded([self._scale_of(ready[k]) for k in keys2], zoom)
                assert j is not None
                key = keys2[j]
                img = ready[key]
            elif key in self._adjusted:  # stale settings while the new ones compute
                img = self._adjusted[key][1]
            self._request_adjusted(key)
        w, h = self.full_size
        return Drawable(img, img.width() / w, img.height() / h, key)

    def level_image(self, level: int) -> QImage | None:
        return self._images.get(level)

    # -- loading ------------------------------------------------------------------------
    def wanted(self, zoom: float) -> LevelSpec | None:
        return wanted_level(self._levels, zoom) if self._levels else None

    def request(self, zoom: float) -> None:
        """Make sure the level that is sharp enough for ``zoom`` is (being) decoded; also
        the screen-sized one first, so something sharp appears quickly."""
        spec = self.wanted(zoom)
        if spec is not None:
            self.request_level(spec.index)

    def request_level(self, index: int) -> None:
        if (self.source is None or self.tasks is None or self._bytes is None
                or index in self._images or index in self._pending
                or index in self._failed_levels or self._error):
            return
        spec = next((s for s in self._levels if s.index == index), None)
        if spec is None:
            return
        gen = self._generation
        data = self._bytes
        self._pending.add(index)
        self.tasks.run_image(
            lambda: decode_to_qimage(data.get(), spec),
            lambda img: self._level_ready(gen, index, img),
            lambda exc: self._level_failed(gen, index, exc),
        )

    def _level_ready(self, gen: int, index: int, img: QImage) -> None:
        if self._stale(gen):
            return
        self._pending.discard(index)
        self._images[index] = img
        if not self._was_shown:
            self._was_shown = True
            self._images.pop(PREVIEW, None)
            assert self.source is not None
            self.shown.emit(self.source.key)
        self.changed.emit()

    def _level_failed(self, gen: int, index: int, exc: BaseException) -> None:
        if self._stale(gen):
            return
        self._pending.discard(index)
        self._failed_levels.add(index)
        if isinstance(exc, DermError):
            text = exc.message
        else:
            log.error("a photo level could not be decoded", exc_info=exc)
            text = "This photo could not be shown. Details are in the log file."
        if not self.has_pixels:
            self._error = text
            self._images.clear()
            self.failed.emit(text)
        else:  # a coarser level is on screen: keep it, say why the finer one is missing
            log.warning("finer level %d failed: %s", index, text)
        self.changed.emit()

    def _request_adjusted(self, key: int) -> None:
        """Compute the adjusted copy of one level; while one is running, the next request
        waits, so dragging a slider never queues more than one job per level."""
        if self.tasks is None or key in self._adj_pending or key not in self._images:
            return
        adj = self._adjustment
        have = self._adjusted.get(key)
        if have is not None and have[0] == adj:
            return
        src = self._images[key]
        gen = self._generation
        self._adj_pending.add(key)
        self.tasks.run_image(
            lambda: adjusted_copy(src, adj),
            lambda img: self._adjusted_ready(gen, key, adj, img),
            lambda exc: self._adjusted_failed(gen, key, exc),
        )

    def _adjusted_ready(self, gen: int, key: int, adj: Adjustment, img: QImage) -> None:
        if self._stale(gen):
            return
        self._adj_pending.discard(key)
        if self._adjustment.is_identity:
            self._adjusted.clear()
        else:
            self._adjusted[key] = (adj, img)
            if adj == self._adjustment:  # stale copies of other levels are no longer needed
                for k in [k for k, (a, _) in self._adjusted.items() if a != adj]:
                    del self._adjusted[k]
        self.changed.emit()  # the next paint asks for the newest settings if they moved on

    def _adjusted_failed(self, gen: int, key: int, exc: BaseException) -> None:
        if not self._stale(gen):
            self._adj_pending.discard(key)
            log.error("adjusting the display failed", exc_info=exc)
