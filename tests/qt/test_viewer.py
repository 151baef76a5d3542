"""The photo viewer driven as a clinician would: wheel, pinch, keys, drag, toolbar, sliders.

The photo is a real JPEG decoded by the real pipeline on the real image pool: a
1600 x 1200 gradient with a green top-left block, a blue bottom-right block and a
1-pixel black/white checkerboard around the centre (to tell full-resolution pixels
from reduced ones).
"""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QNativeGestureEvent, QPointingDevice, QWheelEvent
from PySide6.QtWidgets import QApplication, QVBoxLayout, QWidget

from derm_workstation.core.errors import ImageCorruptError
from derm_workstation.qt.app import apply_theme
from derm_workstation.qt.tasks import QtTaskManager
from derm_workstation.qt.widgets import qt_photo_layer
from derm_workstation.qt.widgets.qt_levels_panel import QtLevelsPanel
from derm_workstation.qt.widgets.qt_photo_layer import PhotoSource
from derm_workstation.qt.widgets.qt_photo_toolbar import QtPhotoToolbar
from derm_workstation.qt.widgets.qt_photo_view import GRID_ZOOM, QtPhotoView
from tests.qt.gestures import drag

TIMEOUT = 10_000
W, H = 1600, 1200
CHECK = (780, 580, 820, 620)  # x0, y0, x1, y1 of the 1-px checkerboard


def make_photo() -> bytes:
    y, x = np.mgrid[0:H, 0:W]
    arr = np.stack([110 + x * 60 // W, 100 + y * 60 // H, np.full_like(x, 120)], axis=-1)
    arr = arr.astype(np.uint8)
    arr[:200, :200] = (30, 200, 60)
    arr[-200:, -200:] = (40, 60, 210)
    x0, y0, x1, y1 = CHECK
    yy, xx = np.mgrid[y0:y1, x0:x1]
    arr[y0:y1, x0:x1] = np.where(((xx + yy) % 2 == 0)[..., None], 255, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=98, subsampling=0)
    return buf.getvalue()


PHOTO = make_photo()


def source(key: str = "photo-a", data: bytes = PHOTO, **kw: object) -> PhotoSource:
    return PhotoSource(key, W, H, lambda: data, title="Plaque close-up",
                       body_site="Left elbow", taken_at=datetime(2026, 3, 12, 14, 5, tzinfo=UTC),
                       **kw)  # type: ignore[arg-type]


class Harness(QWidget):
    """Toolbar, levels panel and view, wired as in the case panel."""

    def __init__(self, tasks: QtTaskManager) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.toolbar = QtPhotoToolbar(self)
        self.levels = QtLevelsPanel(self)
        self.view = QtPhotoView(self)
        for w in (self.toolbar, self.levels, self.view):
            layout.addWidget(w)
        self.toolbar.bind(self.view)
        self.toolbar.show_case_actions(False)
        self.levels.adjustment_changed.connect(self.view.set_adjustment)
        self.view.set_tasks(tasks)



@pytest.fixture
def harness(qtbot, qapp, tasks: QtTaskManager) -> Harness:
    apply_theme(qapp)
    h = Harness(tasks)
    qtbot.addWidget(h)
    h.show()
    qtbot.waitExposed(h)
    # a view of exactly 800 x 600: the photo fits at 50 %
    extra = h.height() - h.view.height()
    h.resize(800, 600 + extra)
    qtbot.waitUntil(lambda: (h.view.width(), h.view.height()) == (800, 600), timeout=TIMEOUT)
    return h


@pytest.fixture
def view(qtbot, harness: Harness) -> QtPhotoView:
    v = harness.view
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        v.open_photo(source())
    return v


def pixel(v: QtPhotoView, x: float, y: float) -> QColor:
    return v.grab().toImage().pixelColor(int(x), int(y))


def wheel(v: QtPhotoView, pos: QPointF, clicks: float = 1.0) -> None:
    ev = QWheelEvent(QPointF(pos), QPointF(v.mapToGlobal(pos.toPoint())), QPoint(0, 0),
                     QPoint(0, int(120 * clicks)), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(v, ev)


def close(a: QPointF, b: QPointF, tol: float = 0.75) -> bool:
    return abs(a.x() - b.x()) <= tol and abs(a.y() - b.y()) <= tol


# ------------------------------------------------------------------------ levels


def test_fit_shows_a_screen_sized_level_first_and_detail_on_zoom(qtbot, view: QtPhotoView
                                                                 ) -> None:
    view.set_prefetch_full_resolution(False)
    assert view.is_fit and view.zoom_factor() == pytest.approx(0.5)
    assert view.has_image and view.message == ""
    # the 1/2 level is enough at 50 %: the full-size pixels were never decoded
    assert view.layer.loaded_levels == {1}
    assert "50 % (fit)" in view.status_text()
    qtbot.keyClick(view, Qt.Key.Key_1)  # 100 %
    assert view.zoom_factor() == pytest.approx(1.0)
    qtbot.waitUntil(lambda: 0 in view.layer.loaded_levels, timeout=TIMEOUT)
    assert view.status_text().startswith("100 %")


def test_full_resolution_arrives_in_the_background_without_a_jump(qtbot, harness: Harness
                                                                  ) -> None:
    v = harness.view
    assert v.prefetch_full_resolution
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        v.open_photo(source("prefetched"))
    # first paint: the reduced (DCT-scaled 1/2) decode only
    assert v.layer.loaded_levels == {1}
    state, before = v.view_state(), v.grab().toImage()
    qtbot.waitUntil(lambda: 0 in v.layer.loaded_levels, timeout=TIMEOUT)
    # the full-size level is there, but the fit view neither moved nor changed a pixel
    assert v.view_state() == state and v.is_fit
    assert v.grab().toImage() == before
    # zooming in needs nothing more: the first frame at 100 % is already full resolution
    qtbot.keyClick(v, Qt.Key.Key_1)
    assert "loading" not in v.status_text()
    x0, y0 = CHECK[:2]
    at = v.map_from_image(QPointF(x0 + 10.5, y0 + 10.5))
    a, b = pixel(v, at.x(), at.y()), pixel(v, at.x() + 1, at.y())
    assert abs(a.red() - b.red()) > 150  # 1-px checkerboard: true full-size pixels


def test_browsing_quickly_decodes_no_full_size_level(qtbot, harness: Harness) -> None:
    v = harness.view
    for i in range(3):
        with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
            v.open_photo(source(f"quick-{i}"))
        assert v.layer.loaded_levels == {1} and v.layer.pending_levels == set()


def test_decoding_never_runs_on_the_gui_thread(qtbot, harness: Harness,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = qt_photo_layer.decode_level

    def spy(data: bytes, spec: object) -> object:
        threads.append(threading.current_thread().name)
        return real(data, spec)  # type: ignore[arg-type]

    monkeypatch.setattr(qt_photo_layer, "decode_level", spy)
    with qtbot.waitSignal(harness.view.image_shown, timeout=TIMEOUT):
        harness.view.open_photo(source())
    assert threads and all(t.startswith("image-pool") for t in threads)


def test_a_preview_shows_at_once_and_is_replaced(qtbot, harness: Harness) -> None:
    from PySide6.QtGui import QImage

    preview = QImage(64, 48, QImage.Format.Format_RGB32)
    preview.fill(QColor(255, 0, 255))
    v = harness.view
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        v.open_photo(source(), preview)
        c = pixel(v, 400, 300)  # before any decode finished: the magenta preview
        assert (c.red(), c.green(), c.blue()) == (255, 0, 255)
    qtbot.waitUntil(lambda: pixel(v, 400, 150).green() < 200, timeout=TIMEOUT)
    assert v.layer.level_image(-1) is None  # the placeholder is dropped


def _small_jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_a_cached_preview_comes_first_then_the_photo(qtbot, harness: Harness) -> None:
    gate = threading.Event()

    def slow_photo() -> bytes:  # the photo's bytes arrive only when the test says so
        gate.wait(TIMEOUT / 1000)
        return PHOTO

    v = harness.view
    v.open_photo(PhotoSource("gated", W, H, slow_photo,
                             preview_load=lambda: _small_jpeg((255, 0, 255))))
    try:
        qtbot.waitUntil(lambda: v.layer.has_preview, timeout=TIMEOUT)
        c = pixel(v, 400, 300)
        assert c.red() > 230 and c.green() < 30 and c.blue() > 230
        assert not v.has_image  # a preview is not the photo
    finally:
        gate.set()
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        pass
    assert not v.layer.has_preview
    assert pixel(v, 400, 150).green() < 200


def test_a_damaged_preview_is_ignored(qtbot, harness: Harness) -> None:
    v = harness.view
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        v.open_photo(source(preview_load=lambda: b"\xff\xd8\xff garbage"))
    assert v.has_image and v.message == ""


# -------------------------------------------------------------------------- zoom


def test_wheel_zooms_at_the_cursor(view: QtPhotoView) -> None:
    at = QPointF(200, 150)
    before = view.map_to_image(at)
    wheel(view, at, 2)
    assert view.zoom_factor() == pytest.approx(0.5 * 1.25**2)
    assert not view.is_fit
    assert close(view.map_to_image(at), before)
    wheel(view, at, -2)
    assert view.zoom_factor() == pytest.approx(0.5)
    assert close(view.map_to_image(at), before)


def test_trackpad_pinch_zooms_at_the_fingers(view: QtPhotoView) -> None:
    at = QPointF(600, 420)
    before = view.map_to_image(at)
    ev = QNativeGestureEvent(Qt.NativeGestureType.ZoomNativeGesture,
                             QPointingDevice.primaryPointingDevice(), 2, at, at,
                             QPointF(view.mapToGlobal(at.toPoint())), 0.6, QPointF(0, 0))
    QApplication.sendEvent(view, ev)
    assert view.zoom_factor() == pytest.approx(0.5 * 1.6)
    assert close(view.map_to_image(at), before)


def test_keys_zoom_fit_and_actual_size(qtbot, view: QtPhotoView) -> None:
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.zoom_factor() == pytest.approx(0.625)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    assert view.zoom_factor() == pytest.approx(0.4)
    qtbot.keyClick(view, Qt.Key.Key_1)
    assert view.zoom_factor() == pytest.approx(1.0)
    qtbot.keyClick(view, Qt.Key.Key_0)
    assert view.is_fit and view.zoom_factor() == pytest.approx(0.5)


def test_toolbar_buttons(qtbot, harness: Harness, view: QtPhotoView) -> None:
    ui = harness.toolbar.ui
    qtbot.mouseClick(ui.actualSizeButton, Qt.MouseButton.LeftButton)
    assert view.zoom_factor() == pytest.approx(1.0)
    qtbot.mouseClick(ui.zoomInButton, Qt.MouseButton.LeftButton)
    assert view.zoom_factor() == pytest.approx(1.25)
    qtbot.mouseClick(ui.zoomOutButton, Qt.MouseButton.LeftButton)
    assert view.zoom_factor() == pytest.approx(1.0)
    qtbot.mouseClick(ui.fitButton, Qt.MouseButton.LeftButton)
    assert view.is_fit
    qtbot.mouseClick(ui.rotateRightButton, Qt.MouseButton.LeftButton)
    assert view.rotation == 90
    qtbot.mouseClick(ui.rotateLeftButton, Qt.MouseButton.LeftButton)
    assert view.rotation == 0


def test_double_click_toggles_fit_and_100(qtbot, view: QtPhotoView) -> None:
    at = QPoint(300, 200)
    before = view.map_to_image(QPointF(at))
    qtbot.mouseDClick(view, Qt.MouseButton.LeftButton, pos=at)
    assert view.zoom_factor() == pytest.approx(1.0)
    assert close(view.map_to_image(QPointF(at)), before)
    qtbot.mouseDClick(view, Qt.MouseButton.LeftButton, pos=at)
    assert view.is_fit


# --------------------------------------------------------------------------- pan


def test_drag_pans_with_the_mouse(qtbot, view: QtPhotoView) -> None:
    qtbot.keyClick(view, Qt.Key.Key_1)
    grabbed = view.map_to_image(QPointF(400, 300))
    drag(qtbot, view, QPoint(400, 300), QPoint(250, 200))
    # the photo point that was under the mouse moved with it
    assert close(view.map_from_image(grabbed), QPointF(250, 200), tol=1.0)
    assert not view.is_fit


def test_arrow_keys_pan(qtbot, view: QtPhotoView) -> None:
    qtbot.keyClick(view, Qt.Key.Key_1)
    start = view.view_state()
    qtbot.keyClick(view, Qt.Key.Key_Right)  # look further right
    assert view.view_state().cx == pytest.approx(start.cx + 100)  # 1/8 of 800 px at 100 %
    qtbot.keyClick(view, Qt.Key.Key_Down, Qt.KeyboardModifier.ShiftModifier)
    assert view.view_state().cy == pytest.approx(start.cy + 300)  # half the view
    for _ in range(40):  # never lost off the photo
        qtbot.keyClick(view, Qt.Key.Key_Left)
    assert view.view_state().cx == 0


# ---------------------------------------------------------------------- rotation


def test_r_rotates_by_quarter_turns(qtbot, view: QtPhotoView) -> None:
    def green_at(x: float, y: float) -> bool:
        c = pixel(view, x, y)
        return c.green() > 150 and c.red() < 100

    # at 50 %, fit: the photo fills the 800 x 600 view; green block top-left
    assert green_at(20, 20)
    qtbot.keyClick(view, Qt.Key.Key_R)
    assert view.rotation == 90
    # portrait now, fitted: 450 wide, centred. The top-left corner turned to the top-right.
    assert view.zoom_factor() == pytest.approx(600 / W)
    assert green_at(400 + 225 - 20, 20) and not green_at(400 - 225 + 20, 20)
    assert view.layer.loaded_levels == {1}  # 37.5 %: the 1/2 level still serves
    qtbot.keyClick(view, Qt.Key.Key_R, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClick(view, Qt.Key.Key_R, Qt.KeyboardModifier.ShiftModifier)
    assert view.rotation == 270
    assert green_at(400 - 225 + 40, 600 - 50)  # clear of the status line


# ------------------------------------------------------------------------ levels


def test_brightness_slider_and_reset(qtbot, harness: Harness, view: QtPhotoView) -> None:
    harness.toolbar.ui.levelsButton.click()
    harness.levels.setVisible(harness.toolbar.ui.levelsButton.isChecked())
    at = (600, 300)
    before = pixel(view, *at).lightness()
    slider = harness.levels.ui.brightnessSlider
    slider.setFocus()
    for _ in range(4):
        qtbot.keyClick(slider, Qt.Key.Key_PageUp)
    assert slider.value() == 40
    assert view.adjustment.brightness == 40
    qtbot.waitUntil(lambda: pixel(view, *at).lightness() > before + 25, timeout=TIMEOUT)
    assert "brightness +40" in view.status_text()
    assert harness.levels.ui.brightnessValue.text() == "+40"
    qtbot.mouseClick(harness.levels.ui.resetButton, Qt.MouseButton.LeftButton)
    assert view.adjustment.is_identity
    qtbot.waitUntil(lambda: abs(pixel(view, *at).lightness() - before) <= 1, timeout=TIMEOUT)


def test_contrast_and_gamma_sliders(qtbot, harness: Harness, view: QtPhotoView) -> None:
    ui = harness.levels.ui
    at = (600, 300)
    before = pixel(view, *at).lightness()
    ui.gammaSlider.setFocus()
    qtbot.keyClick(ui.gammaSlider, Qt.Key.Key_PageDown)
    qtbot.keyClick(ui.gammaSlider, Qt.Key.Key_PageDown)
    assert view.adjustment.gamma == pytest.approx(4 ** -0.2, abs=1e-3)
    assert ui.gammaValue.text() == "0.76"
    qtbot.waitUntil(lambda: pixel(view, *at).lightness() < before - 10, timeout=TIMEOUT)
    ui.contrastSlider.setValue(60)
    assert view.adjustment.contrast == 60
    qtbot.waitUntil(lambda: not view.layer.adjustment_pending, timeout=TIMEOUT)


def test_adjusting_never_changes_the_decoded_pixels(qtbot, view: QtPhotoView) -> None:
    from derm_workstation.imaging.levels import Adjustment

    level = view.layer.level_image(1)
    assert level is not None
    original = level.pixelColor(600, 300)
    view.set_adjustment(Adjustment(brightness=80))
    qtbot.waitUntil(lambda: not view.layer.adjustment_pending, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: pixel(view, 600, 300) != original, timeout=TIMEOUT)
    assert view.layer.level_image(1).pixelColor(600, 300) == original  # type: ignore[union-attr]


# ------------------------------------------------------------------- loupe, grid


def test_loupe_shows_full_resolution_pixels(qtbot, view: QtPhotoView) -> None:
    # at 50 % the 1-px checkerboard is averaged to grey in the view
    centre = view.map_from_image(QPointF(800, 600))
    img = view.grab().toImage()
    patch = [img.pixelColor(int(centre.x()) + dx, int(centre.y()) + dy).lightness()
             for dx in range(-6, 6) for dy in range(-6, 6)]
    assert np.std(patch) < 40
    view.setFocus()
    qtbot.mouseMove(view, centre.toPoint())
    qtbot.keyClick(view, Qt.Key.Key_L)
    assert view.loupe_enabled
    assert view.loupe_zoom() == pytest.approx(1.5)  # 3 x the view, at least 1:1
    qtbot.waitUntil(lambda: 0 in view.layer.loaded_levels, timeout=TIMEOUT)
    qtbot.mouseMove(view, centre.toPoint() + QPoint(1, 0))
    qtbot.mouseMove(view, centre.toPoint())
    img = view.grab().toImage()
    loupe = [img.pixelColor(int(centre.x()) + dx, int(centre.y()) + dy).lightness()
             for dx in range(-10, 10) for dy in range(-10, 10)]
    assert np.std(loupe) > 70  # black and white pixels, as in the file
    qtbot.keyClick(view, Qt.Key.Key_L)
    assert not view.loupe_enabled


def test_loupe_button_follows_the_key(qtbot, harness: Harness, view: QtPhotoView) -> None:
    button = harness.toolbar.ui.loupeButton
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert view.loupe_enabled and button.isChecked()
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_L)
    assert not view.loupe_enabled and not button.isChecked()


def test_pixel_grid_at_high_zoom(qtbot, view: QtPhotoView) -> None:
    # zoom onto the green block, at 10 x: one photo pixel is 10 screen pixels
    view.set_view(100.5, 100.5, 10.0)
    assert view.zoom_factor() >= GRID_ZOOM and view.grid_visible
    qtbot.waitUntil(lambda: 0 in view.layer.loaded_levels, timeout=TIMEOUT)

    def grid_contrast() -> int:
        img = view.grab().toImage()
        inside = img.pixelColor(400, 300).green()  # middle of photo pixel (100, 100)
        # the boundary between photo pixels 99 and 100 is at widget x = 395
        edge = min(img.pixelColor(x, 300).green() for x in (394, 395, 396))
        return inside - edge

    qtbot.waitUntil(lambda: grid_contrast() > 30, timeout=TIMEOUT)
    qtbot.keyClick(view, Qt.Key.Key_G)  # off
    assert not view.grid_visible
    assert abs(grid_contrast()) < 8
    qtbot.keyClick(view, Qt.Key.Key_G)
    view.set_view(100.5, 100.5, 4.0)
    assert not view.grid_visible  # only from 8 x up


# -------------------------------------------------------------------------- info


def test_info_overlay(qtbot, view: QtPhotoView) -> None:
    assert not view.info_enabled
    before = view.grab().toImage()
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_I)
    assert view.info_enabled
    lines = view.info_lines()
    assert "Body site: Left elbow" in lines
    assert any(line.startswith("Taken: 12 Mar 2026") for line in lines)
    assert "Size: 1600 × 1200 px (1.9 MP)" in lines
    assert "Calibration: uncalibrated" in lines
    after = view.grab().toImage()
    assert after.pixelColor(40, 40) != before.pixelColor(40, 40)  # the box is drawn


def test_info_shows_calibration(qtbot, harness: Harness) -> None:
    v = harness.view
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT):
        v.open_photo(source(calibration_px_per_mm=12.25))
    assert "Calibration: 12.2 px/mm" in v.info_lines() or \
        "Calibration: 12.3 px/mm" in v.info_lines()


# ----------------------------------------------------------------------- failures


def test_damaged_photo_shows_a_message(qtbot, harness: Harness) -> None:
    def broken() -> bytes:
        raise ImageCorruptError("Photo abc is damaged on disk; it is not shown.", "0" * 64)

    v = harness.view
    with qtbot.waitSignal(v.load_failed, timeout=TIMEOUT) as sig:
        v.open_photo(PhotoSource("bad", W, H, broken))
    assert "damaged" in sig.args[0]
    assert not v.has_image and "damaged" in v.message


def test_truncated_file_is_reported_not_shown(qtbot, harness: Harness) -> None:
    v = harness.view
    with qtbot.waitSignal(v.load_failed, timeout=TIMEOUT):
        v.open_photo(source("cut", PHOTO[: len(PHOTO) // 2]))
    assert "truncated" in v.message


def test_only_the_last_photo_asked_for_is_shown(qtbot, harness: Harness) -> None:
    v = harness.view
    other = io.BytesIO()
    Image.new("RGB", (W, H), (200, 30, 30)).save(other, "JPEG")
    for _ in range(3):
        v.open_photo(source("photo-a"))
        v.open_photo(source("photo-b", other.getvalue()))
    with qtbot.waitSignal(v.image_shown, timeout=TIMEOUT) as sig:
        pass
    assert sig.args == ["photo-b"]
    qtbot.waitUntil(lambda: harness.view.layer.tasks.pending == 0, timeout=TIMEOUT)  # type: ignore[union-attr]
    c = pixel(v, 400, 300)
    assert c.red() > 150 and c.green() < 80


@pytest.mark.parametrize("big", [False, True])
def test_decoded_levels_keep_their_exact_colours(monkeypatch: pytest.MonkeyPatch,
                                                 big: bool) -> None:
    """Screen-sized levels go through Qt's conversion, big ones a strip at a time: both
    give the decoder's RGB values unchanged (Qt's 0xffRRGGBB)."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    if big:
        monkeypatch.setattr(qt_photo_layer, "_BIG_PIXELS", 100)
    q = qt_photo_layer.to_qimage(img)
    assert (q.width(), q.height()) == img.size
    from PySide6.QtGui import QImage

    assert q.format() == QImage.Format.Format_RGB32
    want = np.asarray(img)
    for x, y in ((0, 0), (52, 36), (17, 20), (40, 3)):
        c = q.pixel(x, y)
        assert ((c >> 16) & 255, (c >> 8) & 255, c & 255) == tuple(want[y, x])
        assert c >> 24 == 255
