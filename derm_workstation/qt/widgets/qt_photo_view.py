"""A simple photo view: fit to window, wheel zoom at the cursor, drag to pan.

The full viewer (100 %, loupe, rotation, levels, compare) is a later issue;
this one shows one decoded image, never blocks and shows a clear message for
a photo that could not be loaded.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget


class QtPhotoView(QGraphicsView):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("photoView")
        self.setAccessibleName("Photo")
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._item: QGraphicsPixmapItem | None = None
        self._fit = True
        self.setRenderHints(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setBackgroundBrush(QColor("#101214"))
        self.setFrameShape(QGraphicsView.Shape.NoFrame)
        self._message = "No photo"

    def set_image(self, image: QImage) -> None:
        self._scene.clear()
        self._item = self._scene.addPixmap(QPixmap.fromImage(image))
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._scene.setSceneRect(self._item.boundingRect())
        self._message = ""
        self.fit()

    def show_message(self, text: str) -> None:
        self._scene.clear()
        self._item = None
        self._message = text
        self.viewport().update()

    @property
    def message(self) -> str:
        """The text shown instead of a photo ('' while a photo is shown)."""
        return self._message

    @property
    def has_image(self) -> bool:
        return self._item is not None

    def fit(self) -> None:
        self._fit = True
        if self._item is not None:
            self.resetTransform()
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)

    def zoom_factor(self) -> float:
        return self.transform().m11()

    def zoom(self, factor: float) -> None:
        if self._item is None:
            return
        new = self.zoom_factor() * factor
        if 0.02 <= new <= 32:
            self._fit = False
            self.scale(factor, factor)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom(1.25**steps)
        event.accept()

    def resizeEvent(self, event) -> None:  # type: ignore[no-untyped-def]
        super().resizeEvent(event)
        if self._fit:
            self.fit()

    def drawForeground(self, painter: QPainter, rect) -> None:  # type: ignore[no-untyped-def]
        if self._message:
            painter.save()
            painter.resetTransform()
            painter.setPen(QColor("#c9d1d9"))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter
                             | Qt.TextFlag.TextWordWrap, self._message)
            painter.restore()
