"""Lesion metrics on synthetic shapes with exact expected values, colours, the ABCD
score, and the change between two visits (imaging.change)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from derm_workstation.core.errors import InputError
from derm_workstation.imaging.change import compare
from derm_workstation.imaging.metrics import (
    DERMOSCOPIC_COLOURS,
    TDS_NOTE,
    LesionMetrics,
    classify_colours,
    measure,
)
from derm_workstation.imaging.segmentation import rgb_to_lab

H, W = 600, 800
BROWN = (120, 80, 50)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:H, 0:W]
    return x + 0.5, y + 0.5


def ellipse(a: float, b: float, angle_deg: float = 0.0, cx: float = 400.3,
            cy: float = 300.7) -> np.ndarray:
    x, y = _grid()
    t = math.radians(angle_deg)
    u = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
    v = -(x - cx) * math.sin(t) + (y - cy) * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def square(side: float, angle_deg: float = 0.0, cx: float = 400.0, cy: float = 300.0
           ) -> np.ndarray:
    x, y = _grid()
    t = math.radians(angle_deg)
    u = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
    v = -(x - cx) * math.sin(t) + (y - cy) * math.cos(t)
    return (np.abs(u) <= side / 2) & (np.abs(v) <= side / 2)


def photo(colour: tuple[int, int, int] = BROWN) -> np.ndarray:
    return np.full((H, W, 3), colour, dtype=np.uint8)


def ramanujan(a: float, b: float) -> float:
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def test_circle() -> None:
    r = 100.0
    m = measure(ellipse(r, r), photo(), 10.0)
    assert m.calibrated
    assert m.area_px == pytest.approx(math.pi * r * r, rel=2e-3)
    assert m.area_mm2 == pytest.approx(math.pi * 10.0 ** 2, rel=2e-3)  # r = 10 mm
    assert m.perimeter_px == pytest.approx(2 * math.pi * r, rel=5e-3)
    assert m.perimeter_mm == pytest.approx(2 * math.pi * 10.0, rel=5e-3)
    assert m.max_diameter_mm == pytest.approx(20.0, rel=5e-3)
    assert m.min_diameter_mm == pytest.approx(20.0, rel=5e-3)
    assert max(m.asymmetry) < 0.01
    assert m.border_irregularity == pytest.approx(1.0, abs=0.01)
    assert m.components == 1
    assert m.centroid == pytest.approx((400.3, 300.7), abs=0.3)


@pytest.mark.parametrize("angle", [0.0, 30.0, 73.0])
def test_ellipse(angle: float) -> None:
    a, b = 120.0, 60.0
    m = measure(ellipse(a, b, angle), photo(), None)
    assert not m.calibrated and m.area_mm2 is None and m.max_diameter_mm is None
    assert m.area_px == pytest.approx(math.pi * a * b, rel=2e-3)
    assert m.perimeter_px == pytest.approx(ramanujan(a, b), rel=5e-3)
    assert m.max_diameter_px == pytest.approx(2 * a, rel=5e-3)
    assert m.min_diameter_px == pytest.approx(2 * b, rel=8e-3)
    assert max(m.asymmetry) < 0.01
    turn = (m.axis_angle_deg - angle + 90.0) % 180.0 - 90.0  # axes have no direction
    assert abs(turn) < 1.0
    expected = ramanujan(a, b) ** 2 / (4 * math.pi * math.pi * a * b)
    assert m.border_irregularity == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_square(angle: float) -> None:
    side = 200.0
    m = measure(square(side, angle), photo(), 20.0)  # a 10 mm square
    assert m.area_px == pytest.approx(side * side, rel=3e-3)
    assert m.area_mm2 == pytest.approx(100.0, rel=3e-3)
    assert m.perimeter_mm == pytest.approx(40.0, rel=0.01)
    assert m.max_diameter_mm == pytest.approx(10.0 * math.sqrt(2), rel=0.01)
    assert m.min_diameter_mm == pytest.approx(10.0, rel=0.005)
    assert max(m.asymmetry) < 0.01
    assert m.border_irregularity == pytest.approx(4 / math.pi, rel=0.02)


def test_two_blobs_are_one_lesion_of_two_pieces() -> None:
    r = 60.0
    m = measure(ellipse(r, r, cx=250.0, cy=300.0) | ellipse(r, r, cx=550.0, cy=300.0),
                photo(), None)
    assert m.components == 2
    assert m.area_px == pytest.approx(2 * math.pi * r * r, rel=3e-3)
    assert m.perimeter_px == pytest.approx(2 * 2 * math.pi * r, rel=6e-3)
    assert m.max_diameter_px == pytest.approx(300 + 2 * r, rel=5e-3)  # spans both
    assert m.min_diameter_px == pytest.approx(2 * r, rel=5e-3)
    assert max(m.asymmetry) < 0.01
    assert m.border_irregularity == pytest.approx(2.0, rel=0.02)


def test_asymmetric_shape() -> None:
    # an isosceles right triangle: symmetric about its altitude only
    x, y = _grid()
    tri = (y >= 150) & (y - 150 <= 2 * 150 - 2 * np.abs(x - 400)) & (y <= 450)
    tri &= np.abs(x - 400) <= 300 - (y - 150)
    m = measure(tri, photo(), None, dermoscopic=True)
    low, high = sorted(m.asymmetry)
    assert low < 0.02 and high > 0.1
    assert m.tds is not None and m.tds.a == 1


def test_holes_count_in_the_perimeter() -> None:
    ring = ellipse(100, 100) & ~ellipse(50, 50)
    m = measure(ring, photo(), None)
    assert m.perimeter_px == pytest.approx(2 * math.pi * 150, rel=6e-3)
    assert m.area_px == pytest.approx(math.pi * (100 ** 2 - 50 ** 2), rel=3e-3)


COLOURS = {
    "black": (20, 20, 22),
    "white": (246, 244, 240),
    "blue-grey": (100, 110, 130),
    "red": (200, 40, 50),
    "dark brown": (90, 55, 35),
    "light brown": (180, 130, 90),
}


def test_six_colours_are_classified() -> None:
    names = list(COLOURS)
    lab = rgb_to_lab(np.array([COLOURS[n] for n in names], np.float32) / 255.0)
    got = [DERMOSCOPIC_COLOURS[i] for i in classify_colours(lab)]
    assert got == names
    skin_pink = rgb_to_lab(np.array([[236, 200, 190]], np.float32) / 255.0)
    assert classify_colours(skin_pink)[0] == -1  # none of the six


def test_colour_shares_and_mean_lab() -> None:
    img = photo(COLOURS["light brown"])
    img[:, :400] = COLOURS["black"]
    m = measure(ellipse(150, 150, cx=400.0, cy=300.0), img, None)
    assert m.colours["black"] == pytest.approx(0.5, abs=0.01)
    assert m.colours["light brown"] == pytest.approx(0.5, abs=0.01)
    assert set(m.colours_present) == {"black", "light brown"}
    assert sum(m.colours.values()) == pytest.approx(1.0, abs=1e-6)
    lab = rgb_to_lab(np.array([COLOURS["black"], COLOURS["light brown"]], np.float32) / 255)
    assert m.mean_lab == pytest.approx(tuple(lab.mean(axis=0)), abs=0.5)


def test_tds_for_dermoscopic_photos_only() -> None:
    mask = ellipse(150, 150)
    img = photo((225, 190, 170))  # skin
    img[mask] = COLOURS["dark brown"]
    assert measure(mask, img, None).tds is None
    m = measure(mask, img, None, dermoscopic=True)
    t = m.tds
    assert t is not None
    assert 0 <= t.a <= 2 and 0 <= t.b <= 8 and 1 <= t.c <= 6 and 1 <= t.d <= 5
    assert t.tds == pytest.approx(1.3 * t.a + 0.1 * t.b + 0.5 * t.c + 0.5 * t.d)
    assert t.a == 0 and t.c == 1
    assert t.b == 8  # a uniform disc cut sharply out of the skin: abrupt all round
    assert t.note == TDS_NOTE and "not a diagnosis" in t.note
    # a lesion fading gradually into the skin has no abrupt border
    x, y = _grid()
    r = np.hypot(x - 400.3, y - 300.7)
    fade = np.clip((r - 90) / 80, 0, 1)[..., None]
    soft = (np.array(COLOURS["dark brown"]) * (1 - fade)
            + np.array((225, 190, 170)) * fade).astype(np.uint8)
    assert measure(r <= 130, soft, None, dermoscopic=True).tds.b == 0  # type: ignore[union-attr]


def test_json_keys_calibrated_and_not() -> None:
    cal = measure(ellipse(50, 50), photo(), 10.0).as_json()
    assert cal["calibrated"] is True and cal["px_per_mm"] == 10.0
    assert cal["area_mm2"] == pytest.approx(math.pi * 25, rel=3e-3)
    for key in ("perimeter_mm", "max_diameter_mm", "min_diameter_mm", "area_px",
                "asymmetry", "border_irregularity", "colours", "mean_lab", "tds"):
        assert key in cal
    assert set(cal["colours"]) == set(DERMOSCOPIC_COLOURS)
    raw = measure(ellipse(50, 50), photo(), None).as_json()
    assert raw["calibrated"] is False and raw["px_per_mm"] is None
    assert raw["area_mm2"] is None and raw["max_diameter_mm"] is None
    assert raw["area_px"] == pytest.approx(math.pi * 2500, rel=3e-3)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="empty"):
        measure(np.zeros((H, W), bool), photo(), None)
    with pytest.raises(InputError, match="size"):
        measure(np.ones((10, 10), bool), photo(), None)
    with pytest.raises(InputError):
        measure(ellipse(10, 10), photo(), -1.0)
    edge = measure(square(100, cx=30.0, cy=300.0), photo(), None)
    assert any("edge of the photo" in w for w in edge.warnings)


def _metrics(radius: float, px_per_mm: float | None) -> LesionMetrics:
    return measure(ellipse(radius, radius), photo(), px_per_mm)


def test_change_calibrated() -> None:
    before = _metrics(100, 20.0)  # r 5 mm
    after = _metrics(110, 20.0)   # r 5.5 mm
    ch = compare(before, after)
    assert ch.calibrated and ch.unit == "mm" and ch.warnings == ()
    assert ch.delta_area_mm2 == pytest.approx(math.pi * (5.5 ** 2 - 5 ** 2), rel=0.01)
    assert ch.delta_area_pct == pytest.approx(21.0, abs=0.5)
    assert ch.delta_diameter_mm == pytest.approx(1.0, abs=0.02)
    assert ch.delta_diameter_pct == pytest.approx(10.0, abs=0.3)
    # the same lesion photographed from further away: same mm, no change
    same = compare(_metrics(100, 20.0), _metrics(50, 10.0))
    assert same.delta_diameter_mm == pytest.approx(0.0, abs=0.05)
    assert same.as_json()["delta_area_pct"] == pytest.approx(0.0, abs=1.0)


def test_change_warns_when_uncalibrated() -> None:
    one = compare(_metrics(100, 20.0), _metrics(110, None))
    assert not one.calibrated and one.delta_area_mm2 is None and one.delta_area_pct is None
    assert any("later photo is not calibrated" in w for w in one.warnings)
    none = compare(_metrics(100, None), _metrics(110, None))
    assert none.delta_diameter_mm is None
    assert none.delta_diameter_pct == pytest.approx(10.0, abs=0.3)
    assert any("same distance" in w for w in none.warnings)
    assert none.as_json()["unit"] == "px"
