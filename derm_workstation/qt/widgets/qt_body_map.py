"""The body map tab: front and back outlines with a pin for every photo site and every
numbered lesion of the patient, across all visits.

* A blue pin is a photo site; its number is how many photos were taken there. A violet
  pin is a numbered lesion; an orange ring marks a lesion that changed between visits.
* Click a pin to list its photos; double-click it (or **Compare photos**) to open them
  side by side in the compare window.
* Drag a pin to where it really is (saved for this patient; Ctrl+Z undoes, Ctrl+Shift+Z
  redoes; **Reset position** puts it back where the body site places it). A site the map
  cannot place is listed under the map: select it, then click on the body to place it.

The outline and the site positions come from :mod:`derm_workstation.core.body_map`; all
reading and saving runs on the database lane through
:class:`~derm_workstation.core.body_map.BodyMapService`. Nurses see the map but cannot
move pins (the buttons are disabled and the service refuses).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from PySide6.QtCore import QEvent, QPoint, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFocusEvent,
    QFont,
    QHelpEvent,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QPolygonF,
    QResizeEvent,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from derm_workstation.core import body_map as bmap
from derm_workstation.core.body_map import BodyMap, BodyMapService, BodyPin
from derm_workstation.core.command_stack import Command, CommandStack
from derm_workstation.qt.dialogs.qt_errors import show_error, user_message
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets.qt_undo import undo_redo_actions

log = logging.getLogger(__name__)

PIN_ROLE = Qt.ItemDataRole.UserRole
PHOTO_ROLE = Qt.ItemDataRole.UserRole
PIN_RADIUS = 9.0
DRAG_START_PX = 4

BACKGROUND = QColor("#1b1f24")
BODY_FILL = QColor("#2f3640")
BODY_LINE = QColor("#8b97a6")
DETAIL_LINE = QColor("#56616e")
TEXT = QColor("#c9d1d9")
DIM_TEXT = QColor("#8b949e")
SITE_COLOUR = QColor("#3d8bfd")
LESION_COLOUR = QColor("#a371f7")
CHANGED_COLOUR = QColor("#ff9f1a")
SELECTED_COLOUR = QColor("#ffffff")
FOCUS_COLOUR = QColor("#58a6ff")

Position = tuple[str, float, float]  # view, x, y


CANVAS_NAME = "Body map: front and back outlines with photo and lesion pins"
CANVAS_KEYS = ("Tab or the arrow keys go from pin to pin; Enter compares the selected "
               "pin's photos")


def pin_id(pin: BodyPin) -> tuple[str, str]:
    return (pin.kind, pin.key)


class QtBodyMapCanvas(QWidget):
    """The two outlines and the pins (painting, hit-testing, dragging)."""

    #: A pin was clicked: (kind, key).
    pin_clicked = Signal(str, str)
    #: A pin was double-clicked: (kind, key).
    pin_activated = Signal(str, str)
    #: A pin was dragged and dropped: (kind, key, view, x, y).
    pin_dropped = Signal(str, str, str, float, float)
    #: The body was clicked away from any pin: (view, x, y).
    map_clicked = Signal(str, float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("bodyMapCanvas")
        self.setAccessibleName(CANVAS_NAME)
        self.setAccessibleDescription(CANVAS_KEYS)
        self.setMouseTracking(True)
        self.setMinimumSize(QSize(260, 300))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        # Tab reaches the map; Tab / arrows then step through the pins, Enter compares
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.editable = True
        #: Clicking on the body places something (a site not on the map): crosshair cursor.
        self.placing = False
        self._pins: list[BodyPin] = []
        self._selected: tuple[str, str] | None = None
        self._press: QPointF | None = None
        self._press_pin: BodyPin | None = None
        self._drag_to: QPointF | None = None
        self._body = self._body_path()

    # -- geometry ------------------------------------------------------------------------
    @staticmethod
    def _body_path() -> QPainterPath:
        """The figure in 0..1 box coordinates (the head and the body as one outline)."""
        path = QPainterPath()
        cx, cy, rx, ry = bmap.HEAD
        path.addEllipse(QRectF((cx - rx) / bmap.BOX_W, (cy - ry) / bmap.BOX_H,
                               2 * rx / bmap.BOX_W, 2 * ry / bmap.BOX_H))
        body = QPainterPath()
        body.addPolygon(QPolygonF([QPointF(x, y) for x, y in bmap.OUTLINE]))
        body.closeSubpath()
        return path.united(body).simplified()

    def figure_rect(self, view: str) -> QRectF:
        """Where a view's box (0..1 in both directions) is drawn in the widget."""
        top, bottom, gap = 26.0, 26.0, 16.0
        h = max(self.height() - top - bottom, 10.0)
        w = h * bmap.BOX_W / bmap.BOX_H
        if 2 * w + gap > self.width() - 8:
            w = max((self.width() - 8 - gap) / 2, 10.0)
            h = w * bmap.BOX_H / bmap.BOX_W
        left = (self.width() - (2 * w + gap)) / 2
        x = left if view == "front" else left + w + gap
        return QRectF(x, top, w, h)

    def to_widget(self, view: str, x: float, y: float) -> QPointF:
        r = self.figure_rect(view)
        return QPointF(r.left() + x * r.width(), r.top() + y * r.height())

    def from_widget(self, pos: QPointF) -> Position | None:
        """(view, x, y) of a widget point inside one of the boxes, else None."""
        for view in bmap.VIEWS:
            r = self.figure_rect(view)
            if r.contains(pos):
                return (view, (pos.x() - r.left()) / r.width(),
                        (pos.y() - r.top()) / r.height())
        return None

    # -- pins -----------------------------------------------------------------------------
    def set_pins(self, pins: Sequence[BodyPin]) -> None:
        self._pins = [p for p in pins if p.placed]
        self._describe_selection()
        self.update()

    @property
    def pins(self) -> list[BodyPin]:
        return list(self._pins)

    def select(self, kind: str | None, key: str | None = None) -> None:
        self._selected = (kind, key) if kind is not None and key is not None else None
        self._describe_selection()
        self.update()

    @property
    def selected(self) -> tuple[str, str] | None:
        return self._selected

    def _describe_selection(self) -> None:
        """Screen readers hear the selected pin in the canvas's name and description."""
        pin = next((q for q in self._pins if pin_id(q) == self._selected), None)
        if pin is None:
            self.setAccessibleName(CANVAS_NAME)
            self.setAccessibleDescription(CANVAS_KEYS)
            return
        self.setAccessibleName(f"Body map, selected: {pin.label}")
        self.setAccessibleDescription(pin.tooltip.replace("\n", ". ") + ". " + CANVAS_KEYS)

    def pins_in_order(self) -> list[BodyPin]:
        """The pins in keyboard order: front then back, top to bottom, left to right;
        a site's lesions follow it."""
        views = list(bmap.VIEWS)
        return sorted(self._pins, key=lambda q: (
            views.index(q.view) if q.view in views else len(views),
            round(q.y or 0.0, 3), round(q.x or 0.0, 3), q.kind != "site",
            q.lesion_number or 0, q.key))

    def step_selection(self, forward: bool) -> bool:
        """Select the next (previous) pin; False when there is none further that way."""
        order = self.pins_in_order()
        if not order:
            return False
        ids = [pin_id(q) for q in order]
        if self._selected not in ids:
            i = 0 if forward else len(ids) - 1
        else:
            i = ids.index(self._selected) + (1 if forward else -1)
            if not 0 <= i < len(ids):
                return False
        self.select(*ids[i])
        self.pin_clicked.emit(*ids[i])
        return True

    def draw_point(self, pin: BodyPin) -> QPointF:
        """Where a pin is drawn. A lesion still at its site's spot is drawn beside the
        site's pin (a direction per lesion number), so neither hides the other."""
        assert pin.view is not None and pin.x is not None and pin.y is not None
        c = self.to_widget(pin.view, pin.x, pin.y)
        if pin.kind == "lesion" and not pin.adjusted and pin.lesion_number is not None:
            # up and towards the middle of the figure, so it stays on the body
            inward = 1 if pin.x <= 0.5 else -1
            step = (pin.lesion_number - 1) % 7
            angle = math.radians(-90 + inward * (45 - 50 * step))
            r = 2 * PIN_RADIUS + 6
            c = QPointF(c.x() + r * math.cos(angle), c.y() + r * math.sin(angle))
        return c

    def pin_point(self, kind: str, key: str) -> QPoint:
        """Where a pin is drawn (widget coordinates); for tests and accessibility."""
        pin = next(p for p in self._pins if pin_id(p) == (kind, key))
        return self.draw_point(pin).toPoint()

    def pin_at(self, pos: QPointF) -> BodyPin | None:
        """The pin under a point: lesions (drawn on top) first, then the nearest."""
        best: tuple[float, int, BodyPin] | None = None
        for p in self._pins:
            c = self.draw_point(p)
            d = (c.x() - pos.x()) ** 2 + (c.y() - pos.y()) ** 2
            if d <= (PIN_RADIUS + 3) ** 2:
                rank = (d, 0 if p.kind == "lesion" else 1, p)
                if best is None or rank[:2] < best[:2]:
                    best = rank
        return best[2] if best else None

    # -- painting --------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), BACKGROUND)
        for view in bmap.VIEWS:
            self._paint_figure(p, view)
        self._paint_legend(p)
        dragged = self._press_pin if self._drag_to is not None else None
        # sites under lesions; the selected pin last (on top)
        order = sorted(self._pins, key=lambda q: (pin_id(q) == self._selected,
                                                  q.kind == "lesion"))
        for pin in order:
            if dragged is not None and pin_id(pin) == pin_id(dragged):
                continue
            self._paint_pin(p, pin, self.draw_point(pin))
        if dragged is not None and self._drag_to is not None:
            self._paint_pin(p, dragged, self._drag_to)
        if self.hasFocus():  # the keyboard is here: a ring round the map and the pin
            p.setPen(QPen(FOCUS_COLOUR, 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), 4, 4)
            sel = next((q for q in self._pins if pin_id(q) == self._selected), None)
            if sel is not None:
                pen = QPen(FOCUS_COLOUR, 2, Qt.PenStyle.DashLine)
                p.setPen(pen)
                r = PIN_RADIUS + 7
                p.drawEllipse(self.draw_point(sel), r, r)
        p.end()

    def _paint_figure(self, p: QPainter, view: str) -> None:
        r = self.figure_rect(view)
        p.save()
        p.translate(r.topLeft())
        p.scale(r.width(), r.height())
        pen = QPen(BODY_LINE, 1.6)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(BODY_FILL)
        p.drawPath(self._body)
        detail = QPen(DETAIL_LINE, 1.2)
        detail.setCosmetic(True)
        p.setPen(detail)
        p.setBrush(Qt.BrushStyle.NoBrush)
        sx, sy = 1 / bmap.BOX_W, 1 / bmap.BOX_H
        if view == "front":
            # eyes, nose and mouth marks, and the navel: this is the front
            for ex in (46.5, 53.5):
                p.drawLine(QPointF(ex * sx - 1.6 * sx, 12.5 * sy), QPointF(ex * sx + 1.6 * sx,
                                                                           12.5 * sy))
            p.drawLine(QPointF(50 * sx, 14 * sy), QPointF(50 * sx, 16.5 * sy))
            p.drawLine(QPointF(47.8 * sx, 19.5 * sy), QPointF(52.2 * sx, 19.5 * sy))
            p.drawEllipse(QPointF(50 * sx, 71 * sy), 0.8 * sx, 0.8 * sy)
        else:
            # the spine and the buttock crease: this is the back
            dash = QPen(detail)
            dash.setStyle(Qt.PenStyle.DashLine)
            p.setPen(dash)
            p.drawLine(QPointF(50 * sx, 31 * sy), QPointF(50 * sx, 88 * sy))
            p.setPen(detail)
            p.drawLine(QPointF(50 * sx, 92 * sy), QPointF(50 * sx, 103 * sy))
        p.restore()
        # labels: the view, and the patient's sides
        p.setPen(TEXT)
        f = QFont(self.font())
        f.setBold(True)
        p.setFont(f)
        p.drawText(QRectF(r.left(), 2, r.width(), 22), Qt.AlignmentFlag.AlignCenter,
                   bmap.VIEW_LABELS[view])
        f.setBold(False)
        p.setFont(f)
        p.setPen(DIM_TEXT)
        left_text, right_text = ("R", "L") if view == "front" else ("L", "R")
        y = r.top() + 0.30 * r.height()
        p.drawText(QRectF(r.left(), y, 0.12 * r.width(), 18), Qt.AlignmentFlag.AlignCenter,
                   left_text)
        p.drawText(QRectF(r.right() - 0.12 * r.width(), y, 0.12 * r.width(), 18),
                   Qt.AlignmentFlag.AlignCenter, right_text)

    def _paint_legend(self, p: QPainter) -> None:
        y = self.height() - 20.0
        x = 8.0
        f = QFont(self.font())
        f.setPointSizeF(max(f.pointSizeF() - 1, 7))
        p.setFont(f)
        for colour, ring, text in ((SITE_COLOUR, None, "photo site (number of photos)"),
                                   (LESION_COLOUR, None, "numbered lesion"),
                                   (LESION_COLOUR, CHANGED_COLOUR, "changed")):
            p.setPen(QPen(ring, 2.5) if ring is not None else Qt.PenStyle.NoPen)
            p.setBrush(colour)
            p.drawEllipse(QPointF(x + 6, y + 8), 5, 5)
            p.setPen(DIM_TEXT)
            width = p.fontMetrics().horizontalAdvance(text)
            p.drawText(QRectF(x + 15, y, width + 4, 16), Qt.AlignmentFlag.AlignVCenter, text)
            x += 15 + width + 16

    def _paint_pin(self, p: QPainter, pin: BodyPin, c: QPointF) -> None:
        selected = pin_id(pin) == self._selected
        r = PIN_RADIUS + (2 if selected else 0)
        colour = LESION_COLOUR if pin.kind == "lesion" else SITE_COLOUR
        if pin.kind == "lesion" and pin.changed:
            p.setPen(QPen(CHANGED_COLOUR, 3.5))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(c, r + 3.5, r + 3.5)
        p.setPen(QPen(SELECTED_COLOUR if selected else QColor("#0d1117"),
                      2.5 if selected else 1.2))
        p.setBrush(QBrush(colour))
        p.drawEllipse(c, r, r)
        text = str(pin.lesion_number) if pin.kind == "lesion" else str(len(pin.photos))
        f = QFont(self.font())
        f.setBold(True)
        f.setPointSizeF(max(f.pointSizeF() - 1, 7))
        p.setFont(f)
        p.setPen(QColor("#ffffff"))
        p.drawText(QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r), Qt.AlignmentFlag.AlignCenter,
                   text)

    # -- mouse -----------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        pos = event.position()
        self._press = pos
        self._press_pin = self.pin_at(pos)
        self._drag_to = None
        if self._press_pin is not None:
            self.select(*pin_id(self._press_pin))
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if (self._press is not None and self._press_pin is not None and self.editable
                and event.buttons() & Qt.MouseButton.LeftButton):
            if self._drag_to is None and (pos - self._press).manhattanLength() < DRAG_START_PX:
                return
            self._drag_to = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            self.update()
            return
        over = self.pin_at(pos) is not None
        if over:
            self.setCursor(Qt.CursorShape.OpenHandCursor if self.editable
                           else Qt.CursorShape.PointingHandCursor)
        elif self.placing and self.from_widget(pos) is not None:
            self.setCursor(Qt.CursorShape.CrossCursor)
        else:
            self.unsetCursor()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._press is None:
            super().mouseReleaseEvent(event)
            return
        pin, dragged_to = self._press_pin, self._drag_to
        press = self._press
        self._press, self._press_pin, self._drag_to = None, None, None
        self.unsetCursor()
        if pin is not None and dragged_to is not None:
            where = self.from_widget(dragged_to)
            self.update()
            if where is not None:
                view, x, y = where
                self.pin_dropped.emit(pin.kind, pin.key, view, min(max(x, 0.0), 1.0),
                                      min(max(y, 0.0), 1.0))
            return
        if pin is not None:
            self.pin_clicked.emit(pin.kind, pin.key)
            return
        where = self.from_widget(press)
        if where is not None:
            self.map_clicked.emit(*where)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        pin = self.pin_at(event.position())
        if pin is not None and event.button() == Qt.MouseButton.LeftButton:
            self.pin_activated.emit(pin.kind, pin.key)
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    # -- keyboard ---------------------------------------------------------------------------
    def focusNextPrevChild(self, next: bool) -> bool:
        """Tab / Shift+Tab step through the pins, then leave the map at either end."""
        if self.hasFocus() and self.step_selection(next):
            return True
        return super().focusNextPrevChild(next)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.step_selection(True)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.step_selection(False)
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._selected is not None:
            self.pin_activated.emit(*self._selected)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def focusInEvent(self, event: QFocusEvent) -> None:
        super().focusInEvent(event)
        self.update()

    def focusOutEvent(self, event: QFocusEvent) -> None:
        super().focusOutEvent(event)
        self.update()

    def event(self, e: QEvent) -> bool:
        if e.type() == QEvent.Type.ToolTip and isinstance(e, QHelpEvent):
            pin = self.pin_at(QPointF(e.pos()))
            if pin is not None:
                QToolTip.showText(e.globalPos(), pin.tooltip, self)
            else:
                QToolTip.hideText()
                e.ignore()
            return True
        return super().event(e)


class _MovePin(Command):
    """Move (or place) a pin; undo puts it back where it was (or resets it)."""

    def __init__(self, owner: QtBodyMap, kind: str, key: str, before: Position | None,
                 after: Position | None, text: str) -> None:
        self.owner, self.kind, self.key = owner, kind, key
        self.before, self.after = before, after
        self.text = text

    def do(self) -> None:
        self.owner.persist(self.kind, self.key, self.after)

    def undo(self) -> None:
        self.owner.persist(self.kind, self.key, self.before)


class QtBodyMap(QWidget):
    """The Body map tab of the open case (see the module docstring)."""

    #: Open these photos in the compare window (ids, oldest first).
    compare_requested = Signal(list)
    #: The pins of the patient were loaded (after every load and every saved move).
    pins_loaded = Signal()
    #: A move or reset was saved (or failed and was reloaded).
    pin_saved = Signal()

    def __init__(self, tasks: QtTaskManager, service: BodyMapService,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("bodyMap")
        self.setAccessibleName("Body map")
        self._tasks = tasks
        self._service = service
        self.editable = service.actor.can("case.edit")
        self._patient_id: str | None = None
        self._map: BodyMap | None = None
        self._selected: tuple[str, str] | None = None
        self._stale = False
        self._generation = 0
        self.stack = CommandStack(on_change=self._update_buttons)

        self.header = QLabel("", self)
        self.header.setObjectName("bodyMapHeader")
        self.header.setWordWrap(True)
        self.header.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        #: What the clinician can do here (shown until a pin is chosen).
        self.hint = ("Click a pin to see its photos; double-click it to compare them"
                     + (". Drag a pin to adjust it (Ctrl+Z undoes)." if self.editable else "."))
        self.canvas = QtBodyMapCanvas(self)
        self.canvas.editable = self.editable
        self.canvas.pin_clicked.connect(self.select_pin)
        self.canvas.pin_activated.connect(self._on_activated)
        self.canvas.pin_dropped.connect(self._on_dropped)
        self.canvas.map_clicked.connect(self._on_map_clicked)

        details = QWidget(self)
        details.setObjectName("bodyMapDetails")
        dl = QVBoxLayout(details)
        dl.setContentsMargins(6, 0, 0, 0)
        self.pin_label = QLabel(self.hint, details)
        self.pin_label.setObjectName("bodyMapPinLabel")
        self.pin_label.setWordWrap(True)
        self.pin_label.setTextFormat(Qt.TextFormat.PlainText)
        self.pin_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.photo_list = QListWidget(details)
        self.photo_list.setObjectName("bodyMapPhotoList")
        self.photo_list.setAccessibleName("Photos of the selected pin, oldest first")
        self.photo_list.itemActivated.connect(lambda _i: self.compare_selected())
        self.photo_list.setMinimumHeight(64)
        buttons = QHBoxLayout()
        self.compare_button = QPushButton("Compare photos", details)
        self.compare_button.setObjectName("bodyMapCompareButton")
        self.compare_button.setAccessibleName("Compare the photos of the selected pin")
        self.compare_button.setToolTip("Open every photo of this site or lesion across "
                                       "visits in the compare window (or double-click a pin)")
        self.compare_button.clicked.connect(self.compare_selected)
        self.reset_button = QPushButton("Reset position", details)
        self.reset_button.setObjectName("bodyMapResetButton")
        self.reset_button.setAccessibleName("Put the selected pin back where its body site is")
        self.reset_button.clicked.connect(self.reset_selected)
        self.undo_button = QPushButton("Undo move", details)
        self.undo_button.setObjectName("bodyMapUndoButton")
        self.undo_button.setAccessibleName("Undo the last pin move")
        self.undo_button.setToolTip("Undo the last pin move (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo)
        for b in (self.compare_button, self.reset_button, self.undo_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.unplaced_label = QLabel(details)
        self.unplaced_label.setObjectName("bodyMapUnplacedLabel")
        self.unplaced_label.setWordWrap(True)
        self.unplaced_list = QListWidget(details)
        self.unplaced_list.setObjectName("bodyMapUnplacedList")
        self.unplaced_list.setAccessibleName("Sites not on the map")
        self.unplaced_list.currentItemChanged.connect(self._on_unplaced_changed)
        self.unplaced_list.setMaximumHeight(110)
        self.unplaced_list.setMinimumHeight(44)
        dl.addWidget(self.pin_label)
        dl.addWidget(self.photo_list, 1)
        dl.addLayout(buttons)
        dl.addWidget(self.unplaced_label)
        dl.addWidget(self.unplaced_list)

        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("bodyMapSplitter")
        self.splitter.addWidget(self.canvas)
        self.splitter.addWidget(details)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.header)
        layout.addWidget(self.splitter, 1)

        self.undo_action, self.redo_action = undo_redo_actions(
            self, "bodyMap", self.undo, self.redo, what="pin move")
        self.addActions([self.undo_action, self.redo_action])
        self._show_selection()
        self._update_buttons()

    # -- loading ---------------------------------------------------------------------------
    @property
    def body_map(self) -> BodyMap | None:
        return self._map

    @property
    def patient_id(self) -> str | None:
        return self._patient_id

    def set_patient(self, patient_id: str | None) -> None:
        """Show this patient's map (loaded now if the tab is on screen, else when shown)."""
        if patient_id != self._patient_id:
            self._patient_id = patient_id
            self._map = None
            self._selected = None
            self.stack.clear()
            self.canvas.set_pins([])
            self._show_selection()
            self._fill_unplaced()
        self._stale = True
        if patient_id is None:
            self.header.setText("")
            return
        if self.isVisible():
            self.reload()

    def refresh(self) -> None:
        """The patient's photos or annotations changed: reload now if on screen, else
        when the tab is shown next."""
        self._stale = True
        if self._patient_id is not None and self.isVisible():
            self.reload()

    def reload(self) -> None:
        pid = self._patient_id
        if pid is None:
            return
        self._stale = False
        self._generation += 1
        gen = self._generation
        service = self._service
        if self._map is None:
            self.header.setText("Loading the body map…")
        self._tasks.run_db(lambda: service.pins(pid),
                           lambda m: self._loaded(gen, m),
                           lambda exc: self._load_failed(gen, exc))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._stale:
            self.reload()

    def _loaded(self, gen: int, m: BodyMap) -> None:
        if gen != self._generation or m.patient_id != self._patient_id:
            return
        self._map = m
        self.canvas.set_pins(m.pins)
        sites, lesions = m.site_pins(), m.lesion_pins()
        changed = sum(1 for p in lesions if p.changed)
        parts = [f"{len(sites)} photo site{'s' if len(sites) != 1 else ''}",
                 f"{len(lesions)} numbered lesion{'s' if len(lesions) != 1 else ''}"]
        if changed:
            parts.append(f"{changed} changed")
        self.header.setText((" · ".join(parts) + " (all visits)") if m.pins else
                            "No photos of this patient yet.")
        if self._selected is not None and m.find(*self._selected) is None:
            self._selected = None
        self.canvas.select(*(self._selected or (None, None)))
        self._fill_unplaced()
        self._show_selection()
        self.pins_loaded.emit()

    def _load_failed(self, gen: int, exc: BaseException) -> None:
        if gen != self._generation:
            return
        self.header.setText(f"The body map could not be shown: {user_message(exc)}")
        self.pins_loaded.emit()

    # -- selection ---------------------------------------------------------------------------
    def selected_pin(self) -> BodyPin | None:
        if self._map is None or self._selected is None:
            return None
        return self._map.find(*self._selected)

    def select_pin(self, kind: str, key: str) -> None:
        self._selected = (kind, key)
        self.canvas.select(kind, key)
        pin = self.selected_pin()
        if pin is not None and pin.placed:
            self.unplaced_list.blockSignals(True)
            self.unplaced_list.setCurrentRow(-1)
            self.unplaced_list.blockSignals(False)
            self.canvas.placing = False
        self._show_selection()

    def _show_selection(self) -> None:
        pin = self.selected_pin()
        self.photo_list.clear()
        if pin is None:
            self.pin_label.setText(self.hint if self._map is None or self._map.pins else "")
        else:
            where = ""
            if pin.kind == "lesion":
                where = f" · {pin.site}" if pin.site else ""
            elif pin.region_label and not pin.label.lower().startswith(
                    pin.region_label.split(",")[0].lower()):
                where = f" · on the map: {pin.region_label}"
            lines = [f"{pin.label}{where} — {pin.dates_text}"]
            if pin.change_summary:
                lines.append(pin.change_summary)
            if pin.adjusted:
                lines.append("Position set by a clinician.")
            if not pin.placed:
                lines.append(pin.note + (" — click on the body to place it."
                                         if self.editable else ""))
            self.pin_label.setText("\n".join(lines))
            for ph in pin.photos:
                visit = f"visit {ph.case_number}" if ph.case_number else "visit"
                item = QListWidgetItem(f"{ph.when.astimezone():%d %b %Y}  ·  "
                                       f"{ph.title or 'Photo'}  ·  {visit}")
                item.setData(PHOTO_ROLE, ph.photo_id)
                item.setToolTip(ph.body_site)
                self.photo_list.addItem(item)
        self._update_buttons()

    def _fill_unplaced(self) -> None:
        lst = self.unplaced_list
        lst.blockSignals(True)
        lst.clear()
        pins = self._map.unplaced if self._map is not None else []
        for pin in pins:
            text = pin.note if pin.kind == "site" else f"{pin.label}: {pin.note}"
            item = QListWidgetItem(f"{text}  ({len(pin.photos)} photo"
                                   f"{'s' if len(pin.photos) != 1 else ''})")
            item.setData(PIN_ROLE, pin_id(pin))
            lst.addItem(item)
            if self._selected == pin_id(pin):
                lst.setCurrentItem(item)
        lst.blockSignals(False)
        self.unplaced_label.setText(
            ("Not on the map — select one, then click on the body to place it:"
             if self.editable else "Not on the map:") if pins else "")
        self.unplaced_label.setVisible(bool(pins))
        lst.setVisible(bool(pins))

    def _on_unplaced_changed(self, item: QListWidgetItem | None, _prev: object) -> None:
        if item is None:
            self.canvas.placing = False
            return
        kind, key = item.data(PIN_ROLE)
        self._selected = (kind, key)
        self.canvas.select(None)
        self.canvas.placing = self.editable
        self._show_selection()

    def _update_buttons(self) -> None:
        pin = self.selected_pin()
        self.compare_button.setEnabled(pin is not None and bool(pin.photos))
        self.reset_button.setEnabled(self.editable and pin is not None and pin.adjusted)
        self.undo_button.setEnabled(self.editable and self.stack.can_undo())
        self.undo_button.setVisible(self.editable)
        self.reset_button.setVisible(self.editable)
        self.undo_action.setEnabled(self.editable and self.stack.can_undo())
        self.redo_action.setEnabled(self.editable and self.stack.can_redo())

    # -- actions ------------------------------------------------------------------------------
    def compare_selected(self) -> None:
        pin = self.selected_pin()
        if pin is not None and pin.photos:
            self.compare_requested.emit(pin.photo_ids)

    def _on_activated(self, kind: str, key: str) -> None:
        self.select_pin(kind, key)
        self.compare_selected()

    def _position_of(self, kind: str, key: str) -> Position | None:
        """Where the pin is now, if the clinician has moved it (None: where its site is)."""
        pin = self._map.find(kind, key) if self._map is not None else None
        if pin is None or not pin.adjusted or pin.view is None or pin.x is None \
                or pin.y is None:
            return None
        return (pin.view, pin.x, pin.y)

    def move_pin(self, kind: str, key: str, view: str, x: float, y: float) -> None:
        """Move a pin (undoable), as dragging it does."""
        if not self.editable or self._patient_id is None:
            return
        pin = self._map.find(kind, key) if self._map is not None else None
        name = pin.label if pin is not None else "pin"
        self.stack.push(_MovePin(self, kind, key, self._position_of(kind, key),
                                 (view, x, y), f"Move {name}"))

    def reset_selected(self) -> None:
        pin = self.selected_pin()
        if pin is None or not pin.adjusted or not self.editable:
            return
        self.stack.push(_MovePin(self, pin.kind, pin.key, self._position_of(*pin_id(pin)),
                                 None, f"Reset {pin.label}"))

    def undo(self) -> None:
        if self.editable:
            self.stack.undo()

    def redo(self) -> None:
        if self.editable:
            self.stack.redo()

    def _on_dropped(self, kind: str, key: str, view: str, x: float, y: float) -> None:
        self.select_pin(kind, key)
        self.move_pin(kind, key, view, x, y)

    def _on_map_clicked(self, view: str, x: float, y: float) -> None:
        item = self.unplaced_list.currentItem()
        if item is None or not self.canvas.placing:
            return
        kind, key = item.data(PIN_ROLE)
        self.move_pin(kind, key, view, x, y)

    def persist(self, kind: str, key: str, where: Position | None) -> None:
        """Show the pin at ``where`` at once and save it on the database lane (None: reset
        it); the map is reloaded from the store afterwards."""
        pid = self._patient_id
        if pid is None:
            return
        if self._map is not None and where is not None:
            self._map = _with_position(self._map, kind, key, where)
            self.canvas.set_pins(self._map.pins)
            self._show_selection()
        service = self._service
        job: Callable[[], object]
        if where is None:
            job = lambda: service.reset_pin(pid, kind, key)  # noqa: E731
        else:
            view, x, y = where
            job = lambda: service.move_pin(pid, kind, key, view, x, y)  # noqa: E731
        self._tasks.run_db(job, lambda _r: self._saved(pid), lambda exc: self._save_failed(
            pid, exc))

    def _saved(self, pid: str) -> None:
        if pid == self._patient_id:
            self.reload()
        self.pin_saved.emit()

    def _save_failed(self, pid: str, exc: BaseException) -> None:
        if pid == self._patient_id:
            self.reload()
            show_error(self, exc, "Pin not moved")
        self.pin_saved.emit()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        # side by side when there is room, map above the list in a tall, narrow tab
        wide = self.width() >= 1.15 * self.height()
        want = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self.splitter.orientation() != want:
            self.splitter.setOrientation(want)


def _with_position(m: BodyMap, kind: str, key: str, where: Position) -> BodyMap:
    from dataclasses import replace

    view, x, y = where
    pins = tuple(replace(p, view=view, x=x, y=y, adjusted=True) if pin_id(p) == (kind, key)
                 else p for p in m.pins)
    return replace(m, pins=pins)
