"""Annotation tools drawn over the photo viewer.

:class:`QtAnnotationLayer` is a transparent child of a
:class:`~derm_workstation.qt.widgets.qt_photo_view.QtPhotoView`: it paints the
annotations of the current photo with the view's own image ↔ widget mapping, and
an event filter on the view takes the mouse while a drawing tool is chosen (with no
tool, or a click on empty photo in *Select*, the view pans and zooms as before).

Tools: select (move by dragging the shape, reshape by its handles, Delete removes),
ruler, ellipse ROI, polygon ROI (click the corners, double-click or Enter closes),
arrow with text, numbered lesion marker, polyline (clicks, double-click ends),
angle (three clicks, vertex second), freehand ROI (drag) and bidirectional (drag the
longest diameter; its perpendicular appears at half its length, drag its ends).

All editing goes through the core command stack (Ctrl+Z / Ctrl+Shift+Z) and every
change is saved by :class:`~derm_workstation.core.annotations.AnnotationService`
on the database lane. Annotations are vectors in image pixels: nothing is burned in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QLineF, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QColor,
    QFont,
    QImage,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QPolygonF,
)
from PySide6.QtWidgets import QInputDialog, QToolButton, QWidget

from derm_workstation.core import annotations as an
from derm_workstation.core.command_stack import CommandStack
from derm_workstation.core.errors import DermError
from derm_workstation.core.notify import notifier
from derm_workstation.qt.widgets.qt_flow_row import QtFlowRow
from derm_workstation.qt.widgets.qt_undo import undo_redo_actions

if TYPE_CHECKING:
    from derm_workstation.qt.tasks import QtTaskManager
    from derm_workstation.qt.widgets.qt_photo_view import QtPhotoView

log = logging.getLogger(__name__)

#: (tool, button text, tooltip); "" is the plain viewer (pan/zoom).
TOOLS: tuple[tuple[str, str, str], ...] = (
    ("select", "Select", "Select, move, reshape by handles; Delete removes"),
    ("ruler", "Ruler", "Drag to measure a length"),
    ("ellipse", "Ellipse", "Drag an ellipse region"),
    ("polygon", "Polygon", "Click the corners; double-click or Enter closes"),
    ("arrow", "Arrow", "Drag from the text to the point it shows"),
    ("marker", "Lesion #", "Click to place a numbered lesion marker"),
    ("polyline", "Polyline", "Click the points; double-click or Enter ends"),
    ("angle", "Angle", "Click three points; the angle is at the second"),
    ("freehand", "Freehand", "Drag around a region"),
    ("bidirectional", "Bidirectional", "Drag the longest diameter; adjust its perpendicular"),
)
DRAG_TOOLS = frozenset({"ruler", "ellipse", "arrow", "bidirectional", "freehand"})
CLICK_TOOLS = frozenset({"polygon", "polyline", "angle"})
HANDLE_PX = 8.0
HIT_PX = 7.0
MIN_DRAG_PX = 4.0
COLOUR = QColor("#ffd54f")
SELECTED = QColor("#4dd0e1")
SHADOW = QColor(0, 0, 0, 190)
REFERENCE = QColor("#7cf29a")  # a found calibration reference, a ruler line being drawn


def _seg_dist(p: QPointF, a: QPointF, b: QPointF) -> float:
    dx, dy = b.x() - a.x(), b.y() - a.y()
    n = dx * dx + dy * dy
    t = 0.0 if n == 0 else max(0.0, min(1.0, ((p.x() - a.x()) * dx + (p.y() - a.y()) * dy) / n))
    return math.hypot(p.x() - (a.x() + t * dx), p.y() - (a.y() + t * dy))


class QtAnnotationLayer(QWidget):
    """See the module docstring. Put :meth:`toolbar` next to the view."""

    #: The annotations of the photo came from the database.
    loaded = Signal()
    #: A change reached the database (or failed: then ``save_failed``).
    saved = Signal()
    save_failed = Signal(str)
    #: Something on the layer changed (for the owner to refresh panels).
    changed = Signal()
    tool_changed = Signal(str)
    #: The selected annotation changed: its id, or None.
    selection_changed = Signal(object)
    #: A one-off capture (:meth:`capture_point` / :meth:`capture_line`) ended or was
    #: cancelled (Esc, another tool, another photo).
    capture_ended = Signal()

    def __init__(self, view: QtPhotoView) -> None:
        super().__init__(view)
        self.setObjectName("annotationLayer")
        self.setAccessibleName("Annotations")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground, True)
        self._view = view
        self.setGeometry(view.rect())
        view.installEventFilter(self)
        view.view_changed.connect(self.update)
        self.stack = CommandStack(on_change=self._stack_changed)
        self.doc: an.AnnotationSet | None = None
        self._service: an.AnnotationService | None = None
        self._tasks: QtTaskManager | None = None
        self._author = ""
        self._tool = ""
        self._selected: str | None = None
        self._live: an.AnnotationView | None = None  # shape being moved/reshaped
        self._grab: tuple[str, int, QPointF] | None = None  # (id, handle or -1, press img)
        self._draft: list[QPointF] = []  # image points of the shape being drawn
        self._drawing = False
        self._pending = 0
        self._editable = True
        self._mapper: Callable[[float, float], QPointF] | None = None  # for burned-in copies
        # one-off capture for the Measure panel: ("point"|"line", callback)
        self._capture: tuple[str, Callable[..., None]] | None = None
        self._capture_line: list[QPointF] = []
        self._overlay_ellipse: tuple[float, float, float, float, float] | None = None
        #: Asks for an arrow's text (tests replace it; None = cancelled).
        self.text_provider: Callable[[str], str | None] = self._ask_text
        self._toolbar = self._build_toolbar()
        self.raise_()
        self.show()

    # -- toolbar and actions ------------------------------------------------------------------
    def _build_toolbar(self) -> QtFlowRow:
        # a wrapping row, not a QToolBar: a toolbar hides what does not fit behind ">>"
        bar = QtFlowRow()
        bar.setObjectName("annotationToolbar")
        bar.setAccessibleName("Annotation tools")
        #: Shows or hides the Measure panel (its owner connects ``toggled``); first, so
        #: it stays at the start of the row when the tools wrap on a narrow window.
        self.measure_action = QAction("Measure", bar)
        self.measure_action.setObjectName("annotationMeasure")
        self.measure_action.setCheckable(True)
        self.measure_action.setToolTip("Calibration, automatic outline, lesion metrics, "
                                       "change over time and export (M)")
        self.measure_action.setShortcut(QKeySequence("M"))
        self.measure_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        bar.addAction(self.measure_action)
        self._view.addAction(self.measure_action)
        bar.addSeparator()
        self._group = QActionGroup(bar)
        self._group.setExclusionPolicy(QActionGroup.ExclusionPolicy.ExclusiveOptional)
        self.tool_actions: dict[str, QAction] = {}
        for tool, text, tip in TOOLS:
            act = QAction(text, bar)
            act.setObjectName(f"annotationTool_{tool}")
            act.setCheckable(True)
            act.setToolTip(tip)
            act.setData(tool)
            self._group.addAction(act)
            bar.addAction(act)
            self.tool_actions[tool] = act
        self._group.triggered.connect(self._on_tool_action)
        bar.addSeparator()
        self.delete_action = QAction("Delete", bar)
        self.delete_action.setObjectName("annotationDelete")
        self.delete_action.setToolTip("Delete the selected annotation (Delete)")
        self.delete_action.triggered.connect(self.delete_selected)
        self.undo_action, self.redo_action = undo_redo_actions(
            bar, "annotation", self.undo, self.redo)
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        for act in (self.delete_action, self.undo_action, self.redo_action):
            bar.addAction(act)
            self._view.addAction(act)  # the shortcuts work while the photo has focus
        for act in bar.actions():
            w = bar.widgetForAction(act)
            if isinstance(w, QToolButton):
                w.setObjectName(act.objectName() + "Button")
                w.setAccessibleName(f"{act.text()} tool" if act.isCheckable() else act.text())
                w.setAccessibleDescription(act.toolTip())
        self._stack_changed()
        return bar

    def toolbar(self) -> QtFlowRow:
        """The tool buttons (they wrap onto a second line rather than overflow)."""
        return self._toolbar

    def _on_tool_action(self, act: QAction) -> None:
        self.set_tool(str(act.data()) if act.isChecked() else "")

    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        """Choose a tool by name ("" = plain viewer)."""
        if tool and tool not in self.tool_actions:
            raise ValueError(f"unknown tool {tool!r}")
        if tool and not self._editable:
            tool = ""  # read-only: the viewer pans and zooms as usual
        self._cancel_draft()
        self.cancel_capture()
        self._tool = tool
        for name, act in self.tool_actions.items():
            act.setChecked(name == tool)
        self._view.setCursor(Qt.CursorShape.CrossCursor if tool and tool != "select"
                             else Qt.CursorShape.ArrowCursor)
        self.tool_changed.emit(tool)
        self.update()

    def _stack_changed(self) -> None:
        self.undo_action.setEnabled(self.stack.can_undo())
        self.redo_action.setEnabled(self.stack.can_redo())
        self.undo_action.setToolTip(f"Undo {self.stack.undo_text()} (Ctrl+Z)".replace("  ", " "))
        self.redo_action.setToolTip(
            f"Redo {self.stack.redo_text()} (Ctrl+Shift+Z)".replace("  ", " "))
        self.delete_action.setEnabled(self._selected is not None)

    # -- the photo ------------------------------------------------------------------------------
    def open_photo(self, photo_id: str, service: an.AnnotationService, tasks: QtTaskManager,
                   px_per_mm: float | None = None) -> None:
        """Load the annotations of a photo (database lane); undo history starts afresh."""
        self._service, self._tasks = service, tasks
        self._author = service.actor.username
        self._editable = service.actor.can("case.edit")
        for act in self.tool_actions.values():
            act.setEnabled(self._editable)
        if not self._editable:
            self.set_tool("")
        doc = an.AnnotationSet(photo_id, px_per_mm, sink=self._persist)
        doc.subscribe(self._doc_changed)
        self.doc = doc
        self.cancel_capture()
        self._overlay_ellipse = None
        self._set_selected(None)
        self._live = None
        self._cancel_draft()
        self.stack.clear()
        self.update()

        def done(views: list[an.AnnotationView]) -> None:
            if self.doc is doc:
                doc.load(views)
                self.loaded.emit()

        tasks.run_db(lambda: service.list(photo_id), done, self._failed)

    def close_photo(self) -> None:
        self.doc = None
        self.cancel_capture()
        self._overlay_ellipse = None
        self._set_selected(None)
        self.stack.clear()
        self.update()

    def _persist(self, op: str, view: an.AnnotationView) -> None:
        svc, tasks = self._service, self._tasks
        if svc is None or tasks is None:
            return
        self._pending += 1
        if op == "save":
            tasks.run_db(lambda: svc.save(view), self._saved, self._failed)
        else:
            tasks.run_db(lambda: svc.delete(view.id), self._saved, self._failed)

    @property
    def pending_saves(self) -> int:
        return self._pending

    def _saved(self, _result: object) -> None:
        self._pending -= 1
        self.saved.emit()

    def _failed(self, exc: BaseException) -> None:
        self._pending = max(0, self._pending - 1)
        text = exc.message if isinstance(exc, DermError) else (
            "The annotation could not be saved; the details are in the log file.")
        if not isinstance(exc, DermError):
            log.error("annotation save failed", exc_info=exc)
        notifier.error(text)
        self.save_failed.emit(text)

    def _doc_changed(self) -> None:
        if self.doc is not None and self._selected not in self.doc:
            self._set_selected(None)
        self._stack_changed()
        self.changed.emit()
        self.update()

    # -- selection and editing ------------------------------------------------------------------
    @property
    def selected(self) -> str | None:
        return self._selected

    def select(self, annotation_id: str | None) -> None:
        self._set_selected(annotation_id)
        self._stack_changed()
        self.update()

    def _set_selected(self, annotation_id: str | None) -> None:
        if annotation_id != self._selected:
            self._selected = annotation_id
            self.selection_changed.emit(annotation_id)

    def annotations(self) -> list[an.AnnotationView]:
        return list(self.doc) if self.doc is not None else []

    @property
    def editable(self) -> bool:
        return self._editable

    def delete_selected(self) -> None:
        if not self._editable:
            return
        if self.doc is not None and self._selected in self.doc:
            self.stack.push(an.DeleteAnnotation(self.doc, str(self._selected)))

    def undo(self) -> None:
        if not self._editable:
            return
        self._cancel_draft()
        self.stack.undo()

    def redo(self) -> None:
        if not self._editable:
            return
        self._cancel_draft()
        self.stack.redo()

    def _add(self, kind: str, points: list[QPointF], *, label: str = "",
             lesion_number: int | None = None) -> None:
        if self.doc is None:
            return
        view = an.new_annotation(self.doc.photo_id, kind, [(p.x(), p.y()) for p in points],
                                 self._author, label=label, lesion_number=lesion_number)
        self.stack.push(an.AddAnnotation(self.doc, view))
        self._set_selected(view.id)
        self._stack_changed()

    def add_annotation(self, kind: str, points: list[tuple[float, float]], *, label: str = "",
                       lesion_number: int | None = None) -> str | None:
        """Add an annotation (undoable, saved like a drawn one) and select it; its id."""
        if self.doc is None or not self._editable:
            return None
        self._add(kind, [QPointF(x, y) for x, y in points], label=label,
                  lesion_number=lesion_number)
        return self._selected

    def set_px_per_mm(self, px_per_mm: float | None) -> None:
        """A new calibration of the open photo: every measurement follows at once."""
        if self.doc is None:
            return
        self.doc.px_per_mm = px_per_mm
        self.changed.emit()
        self.update()

    # -- one-off captures and overlays for the Measure panel ---------------------------------
    def capture_point(self, callback: Callable[[float, float], None]) -> None:
        """The next click on the photo is handed to ``callback`` (image x, y)."""
        self.set_tool("")
        self._capture = ("point", callback)
        self._view.setCursor(Qt.CursorShape.PointingHandCursor)

    def capture_line(self, callback: Callable[[tuple[float, float], tuple[float, float]],
                                              None]) -> None:
        """The next drag on the photo draws a line handed to ``callback`` (image points)."""
        self.set_tool("")
        self._capture = ("line", callback)
        self._capture_line = []
        self._view.setCursor(Qt.CursorShape.CrossCursor)

    @property
    def capturing(self) -> str:
        """"point", "line" or "" (no capture)."""
        return self._capture[0] if self._capture is not None else ""

    def cancel_capture(self) -> None:
        if self._capture is None:
            return
        self._capture = None
        self._capture_line = []
        self._view.setCursor(Qt.CursorShape.ArrowCursor)
        self.update()
        self.capture_ended.emit()

    def set_reference_overlay(self, ellipse: tuple[float, float, float, float, float] | None
                              ) -> None:
        """Show a found calibration reference: (cx, cy, rx, ry, angle°) in image pixels."""
        self._overlay_ellipse = ellipse
        self.update()

    @property
    def reference_overlay(self) -> tuple[float, float, float, float, float] | None:
        return self._overlay_ellipse

    def _capture_event(self, et: QEvent.Type, e: QMouseEvent) -> bool:
        assert self._capture is not None
        mode, callback = self._capture
        if et == QEvent.Type.MouseButtonDblClick:
            return True
        if e.button() not in (Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton):
            return False
        img = self._to_image(e.position())
        if mode == "point":
            if et == QEvent.Type.MouseButtonRelease:
                self._capture = None
                self._view.setCursor(Qt.CursorShape.ArrowCursor)
                callback(img.x(), img.y())
                self.capture_ended.emit()
            return et != QEvent.Type.MouseMove
        if et == QEvent.Type.MouseButtonPress:
            self._capture_line = [img, QPointF(img)]
        elif et == QEvent.Type.MouseMove and self._capture_line:
            self._capture_line[-1] = img
        elif et == QEvent.Type.MouseButtonRelease and self._capture_line:
            p0, p1 = self._capture_line[0], img
            self._capture_line = []
            a, b = self._to_widget(p0.x(), p0.y()), self._to_widget(p1.x(), p1.y())
            if math.hypot(a.x() - b.x(), a.y() - b.y()) >= MIN_DRAG_PX:
                self._capture = None
                self._view.setCursor(Qt.CursorShape.ArrowCursor)
                callback((p0.x(), p0.y()), (p1.x(), p1.y()))
                self.capture_ended.emit()
        else:
            return et != QEvent.Type.MouseMove
        self.update()
        return True

    def _ask_text(self, current: str) -> str | None:
        text, ok = QInputDialog.getText(self._view, "Arrow text", "Text:", text=current)
        return text if ok else None

    def edit_label(self, annotation_id: str) -> None:
        if self.doc is None or not self._editable:
            return
        v = self.doc.get(annotation_id)
        if v is None:
            return
        text = self.text_provider(v.label)
        if text is not None and text != v.label:
            from dataclasses import replace

            self.stack.push(an.ChangeAnnotation(self.doc, v, replace(v, label=text),
                                                "Edit text"))

    # -- mapping ----------------------------------------------------------------------------------
    def _to_image(self, p: QPointF) -> QPointF:
        q = self._view.map_to_image(p)
        w, h = self._view.layer.full_size
        return QPointF(min(max(q.x(), 0.0), float(w)), min(max(q.y(), 0.0), float(h)))

    def _to_widget(self, x: float, y: float) -> QPointF:
        if self._mapper is not None:
            return self._mapper(x, y)
        return self._view.map_from_image(QPointF(x, y))

    def _shown(self, v: an.AnnotationView) -> an.AnnotationView:
        return self._live if self._live is not None and self._live.id == v.id else v

    def hit(self, pos: QPointF) -> tuple[str, int] | None:
        """(annotation id, handle index or -1 for the body) under a widget point."""
        views = self.annotations()
        sel = [v for v in views if v.id == self._selected]
        for v in sel:  # handles of the selected one win
            for i, (x, y) in enumerate(v.points):
                c = self._to_widget(x, y)
                if math.hypot(c.x() - pos.x(), c.y() - pos.y()) <= HANDLE_PX:
                    return v.id, i
        for v in reversed(views):
            pts = [self._to_widget(x, y) for x, y in v.points]
            if v.kind == "marker":
                if math.hypot(pts[0].x() - pos.x(), pts[0].y() - pos.y()) <= 16:
                    return v.id, -1
                continue
            if v.kind == "ellipse":
                path = self._ellipse_path(v)
                if path.contains(pos):
                    return v.id, -1
                continue
            segs = list(pairwise(pts))
            if v.kind in an.CLOSED_KINDS:
                segs.append((pts[-1], pts[0]))
                if QPolygonF(pts).containsPoint(pos, Qt.FillRule.OddEvenFill):
                    return v.id, -1
            if v.kind == "bidirectional":
                segs = [(pts[0], pts[1]), (pts[2], pts[3])]
            if any(_seg_dist(pos, a, b) <= HIT_PX for a, b in segs):
                return v.id, -1
        return None

    # -- input ------------------------------------------------------------------------------------
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is not self._view:
            return False
        et = event.type()
        if et == QEvent.Type.Resize:
            self.setGeometry(self._view.rect())
            return False
        if self._capture is not None and self.doc is not None:
            if isinstance(event, QMouseEvent) and et in (
                    QEvent.Type.MouseButtonPress, QEvent.Type.MouseMove,
                    QEvent.Type.MouseButtonRelease, QEvent.Type.MouseButtonDblClick):
                return self._capture_event(et, event)
            if (et == QEvent.Type.KeyPress and isinstance(event, QKeyEvent)
                    and event.key() == Qt.Key.Key_Escape):
                self.cancel_capture()
                return True
        if self.doc is None or not self._tool:
            return False
        if et == QEvent.Type.MouseButtonPress and isinstance(event, QMouseEvent):
            return self._press(event)
        if et == QEvent.Type.MouseMove and isinstance(event, QMouseEvent):
            return self._move(event)
        if et == QEvent.Type.MouseButtonRelease and isinstance(event, QMouseEvent):
            return self._release(event)
        if et == QEvent.Type.MouseButtonDblClick and isinstance(event, QMouseEvent):
            return self._double_click(event)
        if et == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            return self._key(event)
        return False

    def _press(self, e: QMouseEvent) -> bool:
        if e.button() != Qt.MouseButton.LeftButton:
            return False
        self._view.setFocus(Qt.FocusReason.MouseFocusReason)
        pos = e.position()
        img = self._to_image(pos)
        if self._tool == "select":
            h = self.hit(pos)
            if h is None:
                self.select(None)
                return False  # empty photo: the view pans
            self.select(h[0])
            self._grab = (h[0], h[1], img)
            return True
        if self._tool == "marker":
            self.place_marker(img)
            self.update()
            return True
        if self._tool in DRAG_TOOLS:
            self._draft = [img, QPointF(img)]
            self._drawing = True
        elif self._tool in CLICK_TOOLS:
            # the fixed points, then a rubber-band point that follows the mouse
            if self._draft:
                self._draft[-1] = img
            else:
                self._draft = [img]
            self._draft.append(QPointF(img))
            self._drawing = True
        self.update()
        return True

    def _move(self, e: QMouseEvent) -> bool:
        pos = e.position()
        img = self._to_image(pos)
        if self._grab is not None and self.doc is not None:
            aid, handle, start = self._grab
            base = self.doc.get(aid)
            if base is None:
                return True
            if handle < 0:
                g = an.translate(base.geometry, img.x() - start.x(), img.y() - start.y())
            else:
                g = an.with_point(base.kind, base.geometry, handle, (img.x(), img.y()))
            self._live = base.with_geometry(g)
            self.update()
            return True
        if self._drawing and self._draft:
            if self._tool == "freehand" and e.buttons() & Qt.MouseButton.LeftButton:
                last = self._to_widget(self._draft[-1].x(), self._draft[-1].y())
                if math.hypot(last.x() - pos.x(), last.y() - pos.y()) >= 3:
                    self._draft.append(img)
            else:
                self._draft[-1] = img
            self.update()
            return True
        return self._tool not in ("", "select")

    def _release(self, e: QMouseEvent) -> bool:
        if e.button() != Qt.MouseButton.LeftButton:
            return False
        if self._grab is not None:
            self._finish_grab()
            return True
        if not self._drawing:
            return self._tool not in ("", "select")
        img = self._to_image(e.position())
        tool = self._tool
        if tool in DRAG_TOOLS:
            self._draft[-1] = img
            self._finish_drag(tool)
        elif tool == "angle" and len(self._draft) >= 4:
            pts = list(self._draft[:3])
            self._cancel_draft()
            self._add("angle", pts)
        self.update()
        return True

    def _finish_grab(self) -> None:
        assert self._grab is not None
        aid, handle = self._grab[0], self._grab[1]
        live, self._live, self._grab = self._live, None, None
        base = self.doc.get(aid) if self.doc is not None else None
        if self.doc is None or base is None or live is None or live.geometry == base.geometry:
            self.update()
            return
        text = "Move" if handle < 0 else "Reshape"
        self.stack.push(an.ChangeAnnotation(self.doc, base, live,
                                            f"{text} {an.KIND_LABELS[base.kind].lower()}"))

    def _finish_drag(self, tool: str) -> None:
        pts = list(self._draft)
        self._cancel_draft()
        a, b = self._to_widget(pts[0].x(), pts[0].y()), self._to_widget(pts[-1].x(), pts[-1].y())
        dragged = math.hypot(a.x() - b.x(), a.y() - b.y()) >= MIN_DRAG_PX
        if tool == "freehand":
            if len(pts) >= 3 and an.outline_area([(p.x(), p.y()) for p in pts]) > 0:
                self._add("freehand", pts)
            return
        if not dragged:
            return
        if tool == "bidirectional":
            s0, s1 = an.perpendicular_short_axis((pts[0].x(), pts[0].y()),
                                                 (pts[1].x(), pts[1].y()))
            self._add("bidirectional", [pts[0], pts[1], QPointF(*s0), QPointF(*s1)])
        elif tool == "arrow":
            text = self.text_provider("")
            if text is None:
                return
            # dragged from the text (tail) to the point it shows (head)
            self._add("arrow", [pts[0], pts[1]], label=text)
        else:
            self._add(tool, [pts[0], pts[1]])

    def _double_click(self, e: QMouseEvent) -> bool:
        if self._tool == "select":
            h = self.hit(e.position())
            if h is not None and self.doc is not None:
                v = self.doc.get(h[0])
                if v is not None and v.kind in ("arrow", "marker"):
                    self.edit_label(v.id)
                return True
            return False
        if self._tool in ("polygon", "polyline"):
            if self._draft:  # the double-clicked point is the last one
                img = self._to_image(e.position())
                self._draft[-1] = img
                self._draft.append(QPointF(img))
            self._finish_clicks()
            return True
        return self._tool != ""

    def _finish_clicks(self) -> None:
        tool = self._tool
        # drop the rubber-band point and points repeated by the double-click
        pts: list[QPointF] = []
        for p in self._draft[:-1] if len(self._draft) > 1 else self._draft:
            if not pts or QLineF(pts[-1], p).length() > 0.5 / max(self._view.zoom_factor(),
                                                                  1e-6):
                pts.append(p)
        need = 3 if tool == "polygon" else 2
        self._cancel_draft()
        if len(pts) >= need:
            self._add(tool, pts)
        self.update()

    def _key(self, e: QKeyEvent) -> bool:
        key = e.key()
        if key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self._selected:
            self.delete_selected()
            return True
        if key == Qt.Key.Key_Escape:
            if self._draft:
                self._cancel_draft()
            else:
                self.select(None)
            self.update()
            return True
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._tool in ("polygon",
                                                                           "polyline"):
            self._finish_clicks()
            return True
        return False

    def _cancel_draft(self) -> None:
        self._draft = []
        self._drawing = False

    def place_marker(self, img: QPointF) -> None:
        if self.doc is not None:
            n = self.doc.next_lesion_number()
            self._add("marker", [img], label=f"Lesion {n}", lesion_number=n)

    # -- painting ---------------------------------------------------------------------------------
    def render_annotated(self, image: QImage) -> QImage:
        """A new image: ``image`` (the photo as displayed, any size) with the annotations
        drawn in, for reports. The original photo is never changed."""
        out = image.convertToFormat(QImage.Format.Format_ARGB32)
        if self.doc is None or out.isNull():
            return out
        fw, fh = self._view.layer.full_size
        sx = out.width() / fw if fw else 1.0
        sy = out.height() / fh if fh else 1.0
        # lines and labels grow with the photo so they stay legible on a 12 MP copy
        k = max(1.0, max(out.width(), out.height()) / 1600.0)
        self._mapper = lambda x, y: QPointF(x * sx / k, y * sy / k)
        try:
            p = QPainter(out)
            p.scale(k, k)
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            for v in self.doc:
                self._paint_one(p, v, False)
            p.end()
        finally:
            self._mapper = None
        return out

    def paintEvent(self, _event: QPaintEvent) -> None:
        if self.doc is None or not self._view.has_image:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for v in self.doc:
            self._paint_one(p, self._shown(v), v.id == self._selected)
        if self._draft:
            self._paint_draft(p)
        self._paint_overlays(p)
        p.end()

    def _paint_overlays(self, p: QPainter) -> None:
        if self._overlay_ellipse is not None:
            cx, cy, rx, ry, angle = self._overlay_ellipse
            t = math.radians(angle)
            pts = []
            for i in range(96):
                u = 2 * math.pi * i / 96
                x = cx + rx * math.cos(u) * math.cos(t) - ry * math.sin(u) * math.sin(t)
                y = cy + rx * math.cos(u) * math.sin(t) + ry * math.sin(u) * math.cos(t)
                pts.append(self._to_widget(x, y))
            path = QPainterPath()
            path.addPolygon(QPolygonF(pts))
            path.closeSubpath()
            self._pen(p, SHADOW, 5.0)
            p.drawPath(path)
            p.setPen(QPen(REFERENCE, 2.5, Qt.PenStyle.DashLine))
            p.drawPath(path)
            c = self._to_widget(cx, cy)
            self._chip(p, "reference", QPointF(c.x() - 36, c.y() - 4))
        if len(self._capture_line) == 2:
            a, b = (self._to_widget(q.x(), q.y()) for q in self._capture_line)
            path = QPainterPath(a)
            path.lineTo(b)
            self._tick(path, a, b)
            self._tick(path, b, a)
            self._stroke(p, path, REFERENCE)
            d = math.hypot(self._capture_line[1].x() - self._capture_line[0].x(),
                           self._capture_line[1].y() - self._capture_line[0].y())
            self._chip(p, f"{d:.0f} px", QPointF(b.x() + 10, b.y()))

    def _pen(self, p: QPainter, colour: QColor, width: float = 2.0) -> None:
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(colour, width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                      Qt.PenJoinStyle.RoundJoin))

    def _stroke(self, p: QPainter, path: QPainterPath, colour: QColor) -> None:
        self._pen(p, SHADOW, 4.5)
        p.drawPath(path)
        self._pen(p, colour, 2.0)
        p.drawPath(path)

    def _ellipse_path(self, v: an.AnnotationView) -> QPainterPath:
        pts = v.points
        a, b = self._to_widget(*pts[0]), self._to_widget(*pts[1])
        path = QPainterPath()
        path.addEllipse(QRectF(a, b).normalized())
        return path

    def _paint_one(self, p: QPainter, v: an.AnnotationView, selected: bool) -> None:
        colour = SELECTED if selected else COLOUR
        w = [self._to_widget(x, y) for x, y in v.points]
        path = QPainterPath()
        label_at = w[0]
        if v.kind == "ellipse":
            path = self._ellipse_path(v)
            r = path.boundingRect()
            label_at = QPointF(r.left(), r.top() - 4)
        elif v.kind == "marker":
            c = w[0]
            p.setPen(QPen(colour, 2.5))
            p.setBrush(QColor(16, 18, 20, 215))
            p.drawEllipse(c, 13, 13)
            font = QFont(self.font())
            font.setBold(True)
            p.setFont(font)
            box = QRectF(c.x() - 13, c.y() - 13, 26, 26)
            p.setPen(colour)
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, str(v.lesion_number or "?"))
            if v.label and v.label != f"Lesion {v.lesion_number}":
                self._chip(p, v.label, QPointF(c.x() + 17, c.y() + 10))
            return
        elif v.kind == "bidirectional":
            path.moveTo(w[0])
            path.lineTo(w[1])
            path.moveTo(w[2])
            path.lineTo(w[3])
            label_at = QPointF(max(w[0].x(), w[1].x()) + 6, min(w[0].y(), w[1].y()))
        else:
            path.addPolygon(QPolygonF(w))
            if v.kind in an.CLOSED_KINDS:
                path.closeSubpath()
                r = path.boundingRect()
                label_at = QPointF(r.left(), r.top() - 4)
            elif v.kind == "ruler":
                top = w[0] if w[0].y() <= w[1].y() else w[1]
                label_at = QPointF(top.x() + 6, top.y() - 8)
            elif v.kind == "angle":
                label_at = QPointF(w[1].x() + 10, w[1].y() + 4)
            elif v.kind == "polyline":
                label_at = QPointF(w[-1].x() + 8, w[-1].y())
        if v.kind == "arrow":
            self._arrow_head(path, w[0], w[1])
        elif v.kind == "ruler":
            for a, b in ((w[0], w[1]), (w[1], w[0])):
                self._tick(path, a, b)
        self._stroke(p, path, colour)
        text = v.label if v.kind == "arrow" else self.doc_measure(v).text
        right = False
        if v.kind == "arrow":  # the text sits beyond the tail, away from the head
            right = w[0].x() < w[1].x()
            fm_h = self.fontMetrics().height() + 4
            label_at = QPointF(w[0].x() + (-6 if right else 6), w[0].y() + fm_h / 2)
        if text:
            self._chip(p, text, label_at, align_right=right)
        if selected:
            self._handles(p, w)

    def doc_measure(self, v: an.AnnotationView) -> an.Measurement:
        ppm = self.doc.px_per_mm if self.doc is not None else None
        return an.measure(v.kind, v.geometry, ppm)

    def _tick(self, path: QPainterPath, a: QPointF, b: QPointF) -> None:
        d = QLineF(a, b)
        if d.length() == 0:
            return
        n = d.normalVector().unitVector()
        off = QPointF(n.dx() * 6, n.dy() * 6)
        path.moveTo(a - off)
        path.lineTo(a + off)

    def _arrow_head(self, path: QPainterPath, tail: QPointF, head: QPointF) -> None:
        line = QLineF(head, tail)
        if line.length() == 0:
            return
        for turn in (25.0, -25.0):
            arm = QLineF(line)
            arm.setLength(14.0)
            arm.setAngle(line.angle() + turn)
            path.moveTo(head)
            path.lineTo(arm.p2())

    def _handles(self, p: QPainter, pts: list[QPointF]) -> None:
        p.setPen(QPen(SHADOW, 1.5))
        p.setBrush(SELECTED)
        for c in pts:
            p.drawRect(QRectF(c.x() - 4, c.y() - 4, 8, 8))

    def _chip(self, p: QPainter, text: str, at: QPointF, *, align_right: bool = False) -> None:
        font = QFont(self.font())
        font.setBold(True)
        p.setFont(font)
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(text) + 12
        h = fm.height() + 4
        x = at.x() - w if align_right else at.x()
        box = QRectF(x, at.y() - h, w, h)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(16, 18, 20, 215))
        p.drawRoundedRect(box, 4, 4)
        p.setPen(QColor("#ffffff"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _paint_draft(self, p: QPainter) -> None:
        w = [self._to_widget(q.x(), q.y()) for q in self._draft]
        path = QPainterPath()
        if self._tool == "ellipse" and len(w) >= 2:
            path.addEllipse(QRectF(w[0], w[-1]).normalized())
        else:
            path.addPolygon(QPolygonF(w))
        self._stroke(p, path, SELECTED)
        kind = self._tool
        if kind in an.POINT_COUNTS and len(self._draft) >= 2:
            pts = [(q.x(), q.y()) for q in self._draft]
            if kind == "bidirectional":
                kind, pts = "ruler", pts[:2]
            lo, hi = an.POINT_COUNTS[kind]
            if len(pts) >= lo and (hi is None or len(pts) <= hi):
                text = an.measure(kind, an.make_geometry(pts),
                                  self.doc.px_per_mm if self.doc else None).text
                if text:
                    self._chip(p, text, QPointF(w[-1].x() + 10, w[-1].y()))
