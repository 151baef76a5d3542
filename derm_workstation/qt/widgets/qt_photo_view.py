"""The photo viewer: fit / 100 % / zoom at the cursor, pan, 90° rotation, display
brightness/contrast/gamma, a magnifier loupe, a pixel grid at high zoom and an info
overlay; in the compare window it also draws a second photo over the first (blend,
swipe curtain, flicker) and takes the clicks of a manual three-point alignment.

Pixels come from a :class:`~derm_workstation.qt.widgets.qt_photo_layer.QtPhotoLayer`
(display levels decoded on the image pool); this widget only paints the visible part
of the best level for the current zoom, so panning and zooming a 24 MP photo costs a
few milliseconds per frame. Coordinates: *image* coordinates are full-size displayed
pixels with (0, 0) at the top-left corner of the photo (pixel (c, r) covers
[c, c+1) x [r, r+1)); the view maps them to the widget by centre, zoom (screen pixels
per photo pixel) and a quarter-turn rotation.

Mouse and keys (when the photo has keyboard focus):
wheel or pinch: zoom at the cursor · drag: pan · double-click: fit ↔ 100 % ·
``+``/``-``: zoom · ``0``: fit · ``1``: 100 % · arrows: pan · ``R`` / ``Shift+R``:
rotate right / left · ``L``: loupe · ``I``: info · ``G``: pixel grid.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PySide6.QtCore import (
    QEvent,
    QLineF,
    QMetaObject,
    QObject,
    QPointF,
    QRect,
    QRectF,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QCursor,
    QFont,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QNativeGestureEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QShowEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from derm_workstation.imaging.levels import Adjustment
from derm_workstation.qt.widgets.qt_photo_layer import (
    Drawable,
    PhotoSource,
    QtPhotoLayer,
)

if TYPE_CHECKING:
    from derm_workstation.qt.tasks import QtTaskManager

BACKGROUND = QColor("#101214")
GRID_COLOUR = QColor("#26292d")
MIN_ZOOM = 0.005
MAX_ZOOM = 64.0
WHEEL_STEP = 1.25
KEY_STEP = 1.25
GRID_ZOOM = 8.0
"""The pixel grid appears from this zoom (screen pixels per photo pixel) up."""
LOUPE_RADIUS = 110
LOUPE_GAIN = 3.0
"""The loupe magnifies the view this much, and never shows less than 1:1 photo pixels."""
SWIPE_GRAB_PX = 10
SETTLE_MS = 150
PREFETCH_DELAY_MS = 300
"""Once a photo has been on screen this long, its full-size level is decoded in the
background (so zooming in and the loupe are sharp at once); browsing quickly through
photos never queues full-size decodes."""
PREFETCH_MAX_PIXELS = 25_000_000
"""Bigger photos decode their full-size level only when the zoom needs it."""
OVERLAY_MODES = ("blend", "swipe", "flicker")
MARKER_COLOURS = ("#ff6b6b", "#4dd0e1", "#ffd54f", "#b39ddb")


@dataclass(frozen=True)
class ViewState:
    """Where the view looks: centre in image coordinates, zoom, quarter turns (clockwise)."""

    cx: float
    cy: float
    zoom: float
    quarter: int = 0


def _disconnect(conn: QMetaObject.Connection | None) -> None:
    """Break one connection by its handle (``QObject.disconnect(connection)``), never by
    ``signal.disconnect(slot)``: PySide6 6.12.0 over-releases the ``True`` the latter
    returns, and on Python 3.11 (True not immortal) enough such calls abort the
    interpreter ("bool_dealloc")."""
    if conn is not None:
        with contextlib.suppress(RuntimeError, TypeError):
            QObject.disconnect(conn)


def _fmt_taken(photo: PhotoSource) -> str:
    if photo.taken_at is None:
        return "date unknown"
    return photo.taken_at.astimezone().strftime("%d %b %Y %H:%M")


def calibration_text(px_per_mm: float | None) -> str:
    return f"{px_per_mm:.1f} px/mm" if px_per_mm else "uncalibrated"


class QtPhotoView(QWidget):
    """See the module docstring."""

    #: Zoom, centre or rotation changed (by the user or by code with ``emit=True``).
    view_changed = Signal()
    #: The first real pixels of the current photo are on screen (its source key).
    image_shown = Signal(str)
    #: The current photo cannot be shown (a sentence for the clinician).
    load_failed = Signal(str)
    #: Loupe, info or grid switched on or off (to keep toolbar buttons in step).
    tools_changed = Signal()
    #: A click in point-picking mode: image coordinates (x, y).
    point_picked = Signal(float, float)
    #: The swipe curtain was dragged: its position, 0..1 of the width.
    swipe_moved = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("photoView")
        self.setAccessibleName("Photo")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setAttribute(Qt.WidgetAttribute.WA_AcceptTouchEvents, False)
        self._layer: QtPhotoLayer = QtPhotoLayer(None, self)
        self._layer_connections: list[QMetaObject.Connection] = []
        self._overlay_connection: QMetaObject.Connection | None = None
        self._connect_layer(self._layer)
        self._cx = 0.0
        self._cy = 0.0
        self._zoom = 1.0
        self._quarter = 0
        self._fit = True
        self._message = "No photo"
        self._loading_text = "Loading photo…"
        self._mouse: QPointF | None = None
        self._press: QPointF | None = None
        self._press_moved = False
        self._dragging_curtain = False
        self._loupe = False
        self._info = False
        self._grid = True
        self._picking = False
        self._markers: list[QPointF] = []
        self._caption = ""
        # compare overlay
        self._overlay: QtPhotoLayer | None = None
        self._overlay_tf = QTransform()
        self._overlay_mode = "blend"
        self._overlay_amount = 0.5
        self._flicker_overlay = False
        self._labels = ("Baseline", "Follow-up")
        self._seen_key: str | None = None  # the photo this view last fitted
        # While the view moves, a quarter-turned photo is drawn without smoothing (the
        # raster engine's rotated bilinear path costs up to ~30 ms a frame on 24 MP);
        # once still, the frame is redrawn smooth.
        self._moving = False
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._settled)
        self._prefetch = True
        self._prefetch_key: str | None = None
        self._prefetch_timer = QTimer(self)
        self._prefetch_timer.setSingleShot(True)
        self._prefetch_timer.setInterval(PREFETCH_DELAY_MS)
        self._prefetch_timer.timeout.connect(self._prefetch_full)

    # -- layers -----------------------------------------------------------------------------
    def _connect_layer(self, layer: QtPhotoLayer) -> None:
        self._layer_connections = [
            layer.changed.connect(self._on_layer_changed),
            layer.shown.connect(self._on_layer_shown),
            layer.failed.connect(self._on_layer_failed),
        ]

    def _disconnect_layer(self, _layer: QtPhotoLayer) -> None:
        # by connection handle, never signal.disconnect(slot): see _disconnect
        for conn in self._layer_connections:
            _disconnect(conn)
        self._layer_connections = []

    @property
    def layer(self) -> QtPhotoLayer:
        return self._layer

    def set_layer(self, layer: QtPhotoLayer) -> None:
        """Show a layer owned elsewhere (the compare window shares layers between views)."""
        if layer is self._layer:
            return
        self._disconnect_layer(self._layer)
        self._layer = layer
        self._connect_layer(layer)
        self._message = layer.error
        self._fit = True
        self._apply_fit()
        self._changed(emit=True)

    def set_tasks(self, tasks: QtTaskManager) -> None:
        """The task manager whose image pool decodes this view's photos."""
        self._layer.tasks = tasks

    # -- showing photos -------------------------------------------------------------------
    def open_photo(self, source: PhotoSource, preview: QImage | None = None) -> None:
        """Show a photo: the preview (if any) at once, then levels as they decode."""
        self._message = ""
        self._markers.clear()
        self._quarter = 0
        self._fit = True  # so the layer's change signal fits the new photo before requesting
        self._layer.set_source(source, preview)
        self._apply_fit()
        self._changed(emit=True)

    def set_image(self, image: QImage) -> None:
        """Show a ready, small image (no level loading)."""
        self._message = ""
        self._fit = True
        self._layer.set_image(image)
        self._apply_fit()
        self._changed(emit=True)

    def show_message(self, text: str) -> None:
        """Show a sentence instead of a photo (and forget the photo)."""
        self._message = text
        self._layer.set_source(None)
        self.update()

    def set_loading_text(self, text: str) -> None:
        self._loading_text = text

    @property
    def message(self) -> str:
        """The text shown instead of a photo ('' while a photo is shown)."""
        return self._message

    @property
    def has_image(self) -> bool:
        return not self._message and self._layer.has_pixels

    @property
    def source(self) -> PhotoSource | None:
        return self._layer.source

    def set_calibration(self, key: str, px_per_mm: float | None) -> None:
        """The photo ``key`` was (re)calibrated or its calibration cleared: if it is the one
        shown, the info overlay says so at once (no reload of the pixels)."""
        src = self._layer.source
        if src is None or src.key != key or src.calibration_px_per_mm == px_per_mm:
            return
        self._layer.source = replace(src, calibration_px_per_mm=px_per_mm)
        self.update()

    def set_caption(self, text: str) -> None:
        """A short line drawn at the top of the view (e.g. the compare pane's role)."""
        self._caption = text
        self.update()

    @property
    def caption(self) -> str:
        return self._caption

    def _settled(self) -> None:
        self._moving = False
        self.update()

    def _on_layer_changed(self) -> None:
        src = self._layer.source
        key = src.key if src is not None else None
        if key != self._seen_key:  # another photo (possibly set through a shared layer)
            self._seen_key = key
            if self._fit:
                self._apply_fit()
        self._update_requests()
        self.update()

    def _on_layer_shown(self, key: str) -> None:
        self._message = ""
        self.update()
        if self._prefetch:
            self._prefetch_key = key
            self._prefetch_timer.start()
        self.image_shown.emit(key)

    @property
    def prefetch_full_resolution(self) -> bool:
        return self._prefetch

    def set_prefetch_full_resolution(self, on: bool) -> None:
        """Decode the full-size level in the background once a photo is shown (default on;
        the compare window turns it off to keep four panes within their memory budget).
        The view keeps drawing the level its zoom needs, so nothing moves or flickers
        when the full-size pixels arrive."""
        self._prefetch = on
        if not on:
            self._prefetch_timer.stop()

    def _prefetch_full(self) -> None:
        src = self._layer.source
        if (not self._prefetch or src is None or src.key != self._prefetch_key
                or not self.isVisible() or src.width * src.height > PREFETCH_MAX_PIXELS):
            return
        self._layer.request_level(0)

    def _on_layer_failed(self, text: str) -> None:
        self._message = text
        self.update()
        self.load_failed.emit(text)

    # -- geometry ---------------------------------------------------------------------------
    def _image_size(self) -> tuple[float, float]:
        w, h = self._layer.full_size
        return float(w), float(h)

    def _rotated_size(self) -> tuple[float, float]:
        w, h = self._image_size()
        return (h, w) if self._quarter % 2 else (w, h)

    def fit_zoom(self) -> float:
        rw, rh = self._rotated_size()
        if rw <= 0 or rh <= 0 or self.width() <= 0 or self.height() <= 0:
            return 1.0
        return min(self.width() / rw, self.height() / rh)

    def min_zoom(self) -> float:
        return max(MIN_ZOOM, min(self.fit_zoom(), 1.0) * 0.5)

    def transform(self) -> QTransform:
        """Image coordinates -> widget coordinates."""
        t = QTransform()
        t.translate(self.width() / 2.0, self.height() / 2.0)
        t.rotate(90.0 * self._quarter)
        t.scale(self._zoom, self._zoom)
        t.translate(-self._cx, -self._cy)
        return t

    def map_to_image(self, p: QPointF) -> QPointF:
        inv, _ok = self.transform().inverted()
        return inv.map(QPointF(p))

    def map_from_image(self, p: QPointF) -> QPointF:
        return self.transform().map(QPointF(p))

    def zoom_factor(self) -> float:
        """Screen pixels per photo pixel (1.0 = 100 %)."""
        return self._zoom

    @property
    def is_fit(self) -> bool:
        return self._fit

    @property
    def rotation(self) -> int:
        """Clockwise rotation in degrees: 0, 90, 180 or 270."""
        return 90 * self._quarter

    def view_state(self) -> ViewState:
        return ViewState(self._cx, self._cy, self._zoom, self._quarter)

    def set_view(self, cx: float, cy: float, zoom: float, *, emit: bool = False,
                 quarter: int | None = None) -> None:
        """Look at image point (cx, cy) at ``zoom`` (linked views call this); ``quarter``
        also sets the rotation (clockwise quarter turns)."""
        if quarter is not None:
            self._quarter = quarter % 4
        self._fit = False
        self._zoom = min(MAX_ZOOM, max(self.min_zoom(), zoom))
        self._cx, self._cy = cx, cy
        self._clamp()
        self._changed(emit)

    def _apply_fit(self) -> None:
        w, h = self._image_size()
        self._zoom = self.fit_zoom()
        self._cx, self._cy = w / 2.0, h / 2.0

    def _clamp(self) -> None:
        w, h = self._image_size()
        self._cx = min(max(self._cx, 0.0), w)
        self._cy = min(max(self._cy, 0.0), h)

    def _changed(self, emit: bool = True) -> None:
        self._moving = True  # until the view has been still for SETTLE_MS
        self._settle.start()
        self._update_requests()
        self.update()
        if emit:
            self.view_changed.emit()

    def _update_requests(self) -> None:
        """Ask the layer(s) for the levels this view needs now (a hidden view needs none)."""
        layer = self._layer
        if layer.source is None or self.width() <= 0 or not self.isVisible():
            return
        dpr = self.devicePixelRatioF()
        layer.request(self._zoom * dpr)
        if self._loupe:
            layer.request_level(0)
        if self._overlay is not None and self._overlay.source is not None:
            self._overlay.request(self._zoom * self._overlay_scale() * dpr)

    # -- actions ------------------------------------------------------------------------------
    def fit(self) -> None:
        self._fit = True
        self._apply_fit()
        self._changed()

    def actual_size(self, anchor: QPointF | None = None) -> None:
        """100 %: one photo pixel per screen pixel, keeping ``anchor`` (widget) in place."""
        self.set_zoom(1.0 / max(self.devicePixelRatioF(), 1e-6), anchor)

    def zoom(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom by ``factor`` keeping the photo point under ``anchor`` (default: centre)."""
        self.set_zoom(self._zoom * factor, anchor)

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        if self._layer.source is None:
            return
        zoom = min(MAX_ZOOM, max(self.min_zoom(), zoom))
        a = QPointF(anchor) if anchor is not None else QPointF(self.width() / 2.0,
                                                               self.height() / 2.0)
        fixed = self.map_to_image(a)
        self._fit = False
        self._zoom = zoom
        moved = self.map_from_image(fixed)
        self._shift_widget(moved.x() - a.x(), moved.y() - a.y())
        self._clamp()
        self._changed()

    def zoom_in(self) -> None:
        self.zoom(KEY_STEP, self._cursor_anchor())

    def zoom_out(self) -> None:
        self.zoom(1.0 / KEY_STEP, self._cursor_anchor())

    def _shift_widget(self, dx: float, dy: float) -> None:
        """Move the view so that widget content shifts by (-dx, -dy)."""
        back = QTransform().rotate(-90.0 * self._quarter).map(QPointF(dx, dy))
        self._cx += back.x() / self._zoom
        self._cy += back.y() / self._zoom

    def pan(self, dx: float, dy: float) -> None:
        """Move the photo by (dx, dy) screen pixels (as a drag does)."""
        if self._layer.source is None:
            return
        self._fit = False
        self._shift_widget(-dx, -dy)
        self._clamp()
        self._changed()

    def rotate(self, quarters: int) -> None:
        """Rotate by quarter turns (positive: clockwise), keeping the centre."""
        self._quarter = (self._quarter + quarters) % 4
        if self._fit:
            self._apply_fit()
        self._changed()

    def rotate_cw(self) -> None:
        self.rotate(1)

    def rotate_ccw(self) -> None:
        self.rotate(-1)

    def _cursor_anchor(self) -> QPointF | None:
        pos = QPointF(self.mapFromGlobal(QCursor.pos()))
        return pos if self.rect().contains(pos.toPoint()) else None

    # -- tools ------------------------------------------------------------------------------
    @property
    def loupe_enabled(self) -> bool:
        return self._loupe

    def set_loupe(self, on: bool) -> None:
        if on != self._loupe:
            self._loupe = on
            self._changed(emit=False)
            self.tools_changed.emit()

    @property
    def info_enabled(self) -> bool:
        return self._info

    def set_info(self, on: bool) -> None:
        if on != self._info:
            self._info = on
            self.update()
            self.tools_changed.emit()

    @property
    def grid_enabled(self) -> bool:
        return self._grid

    def set_grid(self, on: bool) -> None:
        if on != self._grid:
            self._grid = on
            self.update()
            self.tools_changed.emit()

    @property
    def grid_visible(self) -> bool:
        return self._grid and self._zoom >= GRID_ZOOM and self._layer.source is not None

    @property
    def adjustment(self) -> Adjustment:
        return self._layer.adjustment

    def set_adjustment(self, adj: Adjustment) -> None:
        self._layer.set_adjustment(adj)

    # -- compare: overlay and point picking --------------------------------------------
    def set_overlay(self, layer: QtPhotoLayer | None, to_base: QTransform | None = None) -> None:
        """Draw ``layer`` over this view's photo; ``to_base`` maps its image coordinates
        to this view's image coordinates."""
        if self._overlay is not None and self._overlay is not layer:
            _disconnect(self._overlay_connection)
            self._overlay_connection = None
        if layer is not None and layer is not self._overlay:
            self._overlay_connection = layer.changed.connect(self._on_layer_changed)
        self._overlay = layer
        self._overlay_tf = QTransform(to_base) if to_base is not None else QTransform()
        self._changed(emit=False)

    @property
    def overlay_layer(self) -> QtPhotoLayer | None:
        return self._overlay

    @property
    def overlay_transform(self) -> QTransform:
        """Overlay image coordinates -> this view's image coordinates."""
        return QTransform(self._overlay_tf)

    def set_overlay_mode(self, mode: str) -> None:
        if mode not in OVERLAY_MODES:
            raise ValueError(f"unknown overlay mode {mode!r}")
        self._overlay_mode = mode
        self.update()

    @property
    def overlay_mode(self) -> str:
        return self._overlay_mode

    def set_overlay_amount(self, amount: float) -> None:
        """Blend: the follow-up's opacity; swipe: the curtain's position (0..1)."""
        self._overlay_amount = min(1.0, max(0.0, amount))
        self.update()

    @property
    def overlay_amount(self) -> float:
        return self._overlay_amount

    def set_flicker_phase(self, show_overlay: bool) -> None:
        self._flicker_overlay = show_overlay
        self.update()

    @property
    def flicker_phase(self) -> bool:
        return self._flicker_overlay

    def set_overlay_labels(self, base: str, overlay: str) -> None:
        self._labels = (base, overlay)
        self.update()

    def _overlay_scale(self) -> float:
        t = self._overlay_tf
        return math.sqrt(abs(t.m11() * t.m22() - t.m12() * t.m21())) or 1.0

    def set_picking(self, on: bool) -> None:
        """Point-picking mode: a click (not a drag) emits ``point_picked``."""
        self._picking = on
        self.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        self.update()

    @property
    def picking(self) -> bool:
        return self._picking

    def set_markers(self, points: list[QPointF]) -> None:
        self._markers = [QPointF(p) for p in points]
        self.update()

    @property
    def markers(self) -> list[QPointF]:
        return list(self._markers)

    # -- input --------------------------------------------------------------------------------
    def wheelEvent(self, event: QWheelEvent) -> None:
        if self._layer.source is None:
            event.ignore()
            return
        pixel = event.pixelDelta()
        trackpad_scroll = (event.phase() != Qt.ScrollPhase.NoScrollPhase and not pixel.isNull()
                           and not event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if trackpad_scroll:  # two-finger scroll on a trackpad pans; pinch zooms
            self.pan(pixel.x(), pixel.y())
        else:
            steps = event.angleDelta().y() / 120.0
            if steps:
                self.zoom(WHEEL_STEP ** steps, event.position())
        event.accept()

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.NativeGesture and isinstance(event, QNativeGestureEvent):
            kind = event.gestureType()
            if kind == Qt.NativeGestureType.ZoomNativeGesture:
                self.zoom(1.0 + event.value(), event.position())
                return True
            if kind == Qt.NativeGestureType.SmartZoomNativeGesture:
                self._toggle_fit(event.position())
                return True
        return super().event(event)

    def _toggle_fit(self, anchor: QPointF) -> None:
        if self._fit:
            self.actual_size(anchor)
        else:
            self.fit()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        pos = event.position()
        self._press = QPointF(pos)
        self._mouse = QPointF(pos)
        self._press_moved = False
        self._dragging_curtain = (
            self._overlay is not None and self._overlay_mode == "swipe"
            and abs(pos.x() - self._curtain_x()) <= SWIPE_GRAB_PX
        )
        if not self._dragging_curtain and not self._picking:
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = QPointF(event.position())
        last = self._mouse
        self._mouse = pos
        if self._press is not None and event.buttons() & Qt.MouseButton.LeftButton:
            if not self._press_moved and (pos - self._press).manhattanLength() > 3:
                self._press_moved = True  # a drag, not a click: catch up from the press
                last = self._press
            if self._dragging_curtain:
                amount = pos.x() / max(1, self.width())
                self.set_overlay_amount(amount)
                self.swipe_moved.emit(self._overlay_amount)
            elif last is not None and self._press_moved:
                self.pan(pos.x() - last.x(), pos.y() - last.y())
        elif self._loupe:
            self.update()
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._press is None:
            super().mouseReleaseEvent(event)
            return
        if self._picking and not self._press_moved and not self._dragging_curtain:
            p = self.map_to_image(event.position())
            w, h = self._image_size()
            if 0 <= p.x() <= w and 0 <= p.y() <= h:
                self.point_picked.emit(p.x(), p.y())
        self._press = None
        self._dragging_curtain = False
        self.setCursor(Qt.CursorShape.CrossCursor if self._picking
                       else Qt.CursorShape.ArrowCursor)
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and not self._picking:
            self._toggle_fit(event.position())
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def enterEvent(self, event: QEvent) -> None:
        self._mouse = QPointF(self.mapFromGlobal(QCursor.pos()))
        super().enterEvent(event)  # type: ignore[arg-type]

    def leaveEvent(self, event: QEvent) -> None:
        self._mouse = None
        if self._loupe:
            self.update()
        super().leaveEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        ctrl = bool(event.modifiers() & (Qt.KeyboardModifier.ControlModifier
                                         | Qt.KeyboardModifier.MetaModifier))
        if ctrl:
            super().keyPressEvent(event)
            return
        step = (0.5 if shift else 0.125)
        pans = {
            Qt.Key.Key_Left: (self.width() * step, 0.0),
            Qt.Key.Key_Right: (-self.width() * step, 0.0),
            Qt.Key.Key_Up: (0.0, self.height() * step),
            Qt.Key.Key_Down: (0.0, -self.height() * step),
        }
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_in()
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_out()
        elif key == Qt.Key.Key_0:
            self.fit()
        elif key == Qt.Key.Key_1:
            self.actual_size(self._cursor_anchor())
        elif key in pans:
            if self._layer.source is None:
                super().keyPressEvent(event)
                return
            self.pan(*pans[Qt.Key(key)])
        elif key == Qt.Key.Key_R:
            self.rotate(-1 if shift else 1)
        elif key == Qt.Key.Key_L:
            self.set_loupe(not self._loupe)
        elif key == Qt.Key.Key_I:
            self.set_info(not self._info)
        elif key == Qt.Key.Key_G:
            self.set_grid(not self._grid)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fit:
            self._apply_fit()
        self._changed(emit=False)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._fit:
            self._apply_fit()
        self._update_requests()

    def sizeHint(self) -> QSize:
        return QSize(640, 480)

    # -- painting ---------------------------------------------------------------------------
    def _curtain_x(self) -> float:
        return self._overlay_amount * self.width()

    def paintEvent(self, _event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        if self._message:
            self._draw_centre_text(p, self._message)
            p.end()
            return
        dpr = self.devicePixelRatioF()
        t = self.transform()
        base = self._layer.image_for(self._zoom * dpr)
        if base is None:
            if self._layer.source is not None:
                self._draw_centre_text(p, self._loading_text)
            p.end()
            return
        overlay = None
        if self._overlay is not None and self._overlay.source is not None:
            overlay = self._overlay.image_for(self._zoom * self._overlay_scale() * dpr)
        show_base = not (overlay is not None and self._overlay_mode == "flicker"
                         and self._flicker_overlay)
        if show_base:
            self._draw_image(p, base, t, self._zoom)
        if overlay is not None:
            self._draw_overlay(p, overlay, t)
        if self.grid_visible:
            self._draw_grid(p, t)
        self._draw_markers(p)
        if self._loupe and self._mouse is not None:
            self._draw_loupe(p, self._mouse)
        if self._caption:
            self._draw_caption(p)
        if self._info:
            self._draw_info(p)
        self._draw_status(p)
        p.end()

    def _draw_image(self, p: QPainter, d: Drawable, t: QTransform, zoom: float,
                    crisp_from: float = 2.0) -> None:
        """Draw the visible part of ``d``; ``t`` maps its photo's coordinates to the widget
        at ``zoom``. Full-size pixels magnified ``crisp_from`` x or more are drawn crisp
        (nearest neighbour: true pixel values, no blending)."""
        lt = QTransform().scale(1.0 / d.sx, 1.0 / d.sy) * t  # level pixels -> widget
        inv, ok = lt.inverted()
        if not ok:
            return
        img = d.image
        vis = inv.mapRect(QRectF(self.rect())).intersected(
            QRectF(0, 0, img.width(), img.height()))
        if vis.isEmpty():
            return
        src = QRectF(math.floor(vis.left()), math.floor(vis.top()), 0, 0)
        src.setRight(min(img.width(), math.ceil(vis.right()) + 1))
        src.setBottom(min(img.height(), math.ceil(vis.bottom()) + 1))
        crisp = d.level == 0 and zoom >= crisp_from
        fast = self._moving and self._quarter % 2 == 1
        p.save()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, not (crisp or fast))
        p.setTransform(lt)
        p.drawImage(src, img, src)
        p.restore()

    def _draw_overlay(self, p: QPainter, d: Drawable, t: QTransform) -> None:
        ot = self._overlay_tf * t  # overlay image -> widget
        zoom = self._zoom * self._overlay_scale()
        mode = self._overlay_mode
        p.save()
        if mode == "blend":
            p.setOpacity(self._overlay_amount)
            self._draw_image(p, d, ot, zoom)
        elif mode == "swipe":
            x = self._curtain_x()
            p.setClipRect(QRectF(x, 0, self.width() - x, self.height()))
            self._draw_image(p, d, ot, zoom)
        elif self._flicker_overlay:
            self._draw_image(p, d, ot, zoom)
        p.restore()
        self._draw_overlay_labels(p)

    def _draw_overlay_labels(self, p: QPainter) -> None:
        base, follow = self._labels
        mode = self._overlay_mode
        if mode == "swipe":
            x = self._curtain_x()
            p.save()
            p.setPen(QPen(QColor(255, 255, 255, 220), 2))
            p.drawLine(QLineF(x, 0, x, self.height()))
            handle = QRectF(x - 9, self.height() / 2 - 24, 18, 48)
            p.setBrush(QColor("#e6edf3"))
            p.setPen(QPen(QColor("#101214"), 1))
            p.drawRoundedRect(handle, 4, 4)
            p.restore()
            self._chip(p, f"◀ {base}", QPointF(x - 10, 12), align_right=True)
            self._chip(p, f"{follow} ▶", QPointF(x + 10, 12))
        elif mode == "flicker":
            text = follow if self._flicker_overlay else base
            self._chip(p, text, QPointF(self.width() / 2, 12), centre=True, big=True)
        else:
            pct = round(self._overlay_amount * 100)
            self._chip(p, f"{base} {100 - pct} %  ·  {follow} {pct} %",
                       QPointF(self.width() / 2, 12), centre=True)

    def _draw_grid(self, p: QPainter, t: QTransform) -> None:
        inv, _ = t.inverted()
        vis = inv.mapRect(QRectF(self.rect()))
        w, h = self._image_size()
        x0, x1 = max(0, math.floor(vis.left())), min(int(w), math.ceil(vis.right()))
        y0, y1 = max(0, math.floor(vis.top())), min(int(h), math.ceil(vis.bottom()))
        if x1 <= x0 or y1 <= y0:
            return
        # Each line becomes an opaque 1-pixel rectangle in widget coordinates (quarter turns
        # keep them axis-parallel): the raster engine's fastest path. A translucent or
        # transformed line costs ~15x more: too slow for 60 frames a second.
        m = t.map
        colour = GRID_COLOUR
        vw, vh = self.width(), self.height()
        xs = sorted({round(m(QPointF(x, y0)).x()) for x in range(x0, x1 + 1)}
                    if self._quarter % 2 == 0 else
                    {round(m(QPointF(x0, y)).x()) for y in range(y0, y1 + 1)})
        ys = sorted({round(m(QPointF(x0, y)).y()) for y in range(y0, y1 + 1)}
                    if self._quarter % 2 == 0 else
                    {round(m(QPointF(x, y0)).y()) for x in range(x0, x1 + 1)})
        corner_a, corner_b = m(QPointF(x0, y0)), m(QPointF(x1, y1))
        left = max(0, round(min(corner_a.x(), corner_b.x())))
        right = min(vw, round(max(corner_a.x(), corner_b.x())))
        top = max(0, round(min(corner_a.y(), corner_b.y())))
        bottom = min(vh, round(max(corner_a.y(), corner_b.y())))
        rects = [QRect(x, top, 1, bottom - top) for x in xs if 0 <= x < vw]
        rects += [QRect(left, y, right - left, 1) for y in ys if 0 <= y < vh]
        p.save()
        p.resetTransform()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(colour)
        p.drawRects(rects)
        p.restore()

    def _draw_markers(self, p: QPainter) -> None:
        if not self._markers:
            return
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        font = QFont(self.font())
        font.setBold(True)
        p.setFont(font)
        for i, pt in enumerate(self._markers):
            c = self.map_from_image(pt)
            colour = QColor(MARKER_COLOURS[i % len(MARKER_COLOURS)])
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(QColor(0, 0, 0, 200), 4))
            p.drawEllipse(c, 10, 10)
            p.setPen(QPen(colour, 2))
            p.drawEllipse(c, 10, 10)
            p.drawLine(QLineF(c.x() - 15, c.y(), c.x() - 5, c.y()))
            p.drawLine(QLineF(c.x() + 5, c.y(), c.x() + 15, c.y()))
            p.drawLine(QLineF(c.x(), c.y() - 15, c.x(), c.y() - 5))
            p.drawLine(QLineF(c.x(), c.y() + 5, c.x(), c.y() + 15))
            label = QRectF(c.x() + 10, c.y() - 28, 22, 20)
            p.setBrush(colour)
            p.setPen(Qt.PenStyle.NoPen)
            p.drawRoundedRect(label, 4, 4)
            p.setPen(QColor("#101214"))
            p.drawText(label, Qt.AlignmentFlag.AlignCenter, str(i + 1))
        p.restore()

    def loupe_zoom(self) -> float:
        return min(MAX_ZOOM, max(1.0 / max(self.devicePixelRatioF(), 1e-6),
                                 self._zoom * LOUPE_GAIN))

    def _draw_loupe(self, p: QPainter, at: QPointF) -> None:
        lz = self.loupe_zoom()
        centre = self.map_to_image(at)
        lt = QTransform()
        lt.translate(at.x(), at.y())
        lt.rotate(90.0 * self._quarter)
        lt.scale(lz, lz)
        lt.translate(-centre.x(), -centre.y())
        d = self._layer.image_for(lz * self.devicePixelRatioF())
        if d is None:
            return
        r = LOUPE_RADIUS
        circle = QPainterPath()
        circle.addEllipse(at, r, r)
        p.save()
        p.setClipPath(circle)
        p.fillRect(QRectF(at.x() - r, at.y() - r, 2 * r, 2 * r), BACKGROUND)
        self._draw_image(p, d, lt, lz, crisp_from=1.0)  # the loupe shows true pixels
        p.restore()
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(QPen(QColor(0, 0, 0, 180), 5))
        p.drawEllipse(at, r, r)
        p.setPen(QPen(QColor("#e6edf3"), 2))
        p.drawEllipse(at, r, r)
        p.restore()
        full = d.level == 0
        text = (f"{lz * 100:.0f} % · full resolution" if full
                else f"{lz * 100:.0f} % · loading full resolution…")
        self._chip(p, text, QPointF(at.x(), at.y() + r + 6), centre=True)

    def info_lines(self) -> list[str]:
        """What the info overlay says about the current photo."""
        src = self._layer.source
        if src is None:
            return []
        mp = src.width * src.height / 1e6
        lines = []
        if src.title:
            lines.append(src.title)
        lines += [
            f"Body site: {src.body_site or 'not recorded'}",
            f"Taken: {_fmt_taken(src)}",
            f"Size: {src.width} × {src.height} px ({mp:.1f} MP)",
            f"Calibration: {calibration_text(src.calibration_px_per_mm)}",
        ]
        return lines

    def _draw_info(self, p: QPainter) -> None:
        lines = self.info_lines()
        if not lines:
            return
        p.save()
        fm = p.fontMetrics()
        pad = 8
        width = max(fm.horizontalAdvance(s) for s in lines) + 2 * pad
        height = fm.height() * len(lines) + 2 * pad
        top = 12 + (fm.height() + 12 if self._caption else 0)
        box = QRectF(12, top, width, height)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(16, 18, 20, 205))
        p.drawRoundedRect(box, 6, 6)
        p.setPen(QColor("#e6edf3"))
        y = box.top() + pad + fm.ascent()
        for i, line in enumerate(lines):
            if i == 0 and self._layer.source and self._layer.source.title:
                f = QFont(p.font())
                f.setBold(True)
                p.setFont(f)
            else:
                p.setFont(self.font())
            p.drawText(QPointF(box.left() + pad, y), line)
            y += fm.height()
        p.restore()

    def status_text(self) -> str:
        """The small line at the bottom: zoom, rotation, adjustments, loading."""
        parts = [f"{self._zoom * 100:.0f} %" + (" (fit)" if self._fit else "")]
        if self._quarter:
            parts.append(f"rotated {90 * self._quarter}°")
        desc = self._layer.adjustment.describe()
        if desc:
            parts.append(desc)
        wanted = self._layer.wanted(self._zoom * self.devicePixelRatioF())
        if (wanted is not None and wanted.index not in self._layer.loaded_levels
                and wanted.index in self._layer.pending_levels):
            parts.append("loading detail…")
        elif self._layer.adjustment_pending:
            parts.append("adjusting…")
        return "  ·  ".join(parts)

    def _draw_status(self, p: QPainter) -> None:
        fm = p.fontMetrics()
        self._chip(p, self.status_text(), QPointF(10, self.height() - fm.height() - 14))

    def _draw_caption(self, p: QPainter) -> None:
        self._chip(p, self._caption, QPointF(12, 12), big=True)

    def _chip(self, p: QPainter, text: str, at: QPointF, *, centre: bool = False,
              align_right: bool = False, big: bool = False) -> None:
        if not text:
            return
        p.save()
        font = QFont(self.font())
        if big:
            font.setBold(True)
        p.setFont(font)
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(text) + 14
        h = fm.height() + 6
        x = at.x() - w / 2 if centre else (at.x() - w if align_right else at.x())
        box = QRectF(x, at.y(), w, h)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(16, 18, 20, 200))
        p.drawRoundedRect(box, 5, 5)
        p.setPen(QColor("#e6edf3"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()

    def _draw_centre_text(self, p: QPainter, text: str) -> None:
        p.save()
        p.setPen(QColor("#c9d1d9"))
        p.drawText(self.rect().adjusted(20, 20, -20, -20),
                   Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)
        p.restore()
