"""Change of one lesion between two visits: Δarea and Δlongest diameter.

:func:`compare` takes the metrics of the same (numbered) lesion measured on an
earlier and a later photo, each photo aligned and calibrated on its own. It reports
the changes in millimetres and in per cent of the earlier value. Millimetre changes
need *both* photos calibrated; otherwise they are ``None`` and a warning says so —
pixel sizes of two photos taken at different distances cannot be compared. When
neither photo is calibrated the per-cent changes of the pixel figures are still
given, with a warning that they hold only if both photos were taken from the same
distance with the same camera and zoom; when exactly one is calibrated nothing is
compared in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from derm_workstation.imaging.metrics import LesionMetrics

__all__ = ["Change", "compare"]


@dataclass(frozen=True)
class Change:
    """Earlier -> later change of a lesion's area and longest diameter."""

    calibrated: bool
    area_earlier: float
    area_later: float
    diameter_earlier: float
    diameter_later: float
    unit: str  # "mm" when calibrated, "px" otherwise
    delta_area_mm2: float | None
    delta_area_pct: float | None
    delta_diameter_mm: float | None
    delta_diameter_pct: float | None
    warnings: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        def r(v: float | None, n: int = 3) -> float | None:
            return None if v is None else round(v, n)

        return {
            "calibrated": self.calibrated,
            "unit": self.unit,
            "area_earlier": r(self.area_earlier),
            "area_later": r(self.area_later),
            "diameter_earlier": r(self.diameter_earlier),
            "diameter_later": r(self.diameter_later),
            "delta_area_mm2": r(self.delta_area_mm2),
            "delta_area_pct": r(self.delta_area_pct, 1),
            "delta_diameter_mm": r(self.delta_diameter_mm),
            "delta_diameter_pct": r(self.delta_diameter_pct, 1),
            "warnings": list(self.warnings),
        }


def _pct(before: float, after: float) -> float | None:
    return None if before <= 0 else 100.0 * (after - before) / before


def compare(earlier: LesionMetrics, later: LesionMetrics) -> Change:
    """Changes from ``earlier`` to ``later`` (see the module documentation)."""
    both = earlier.calibrated and later.calibrated
    warnings: list[str] = []
    if both:
        a0, a1 = float(earlier.area_mm2 or 0.0), float(later.area_mm2 or 0.0)
        d0, d1 = float(earlier.max_diameter_mm or 0.0), float(later.max_diameter_mm or 0.0)
        return Change(calibrated=True, area_earlier=a0, area_later=a1,
                      diameter_earlier=d0, diameter_later=d1, unit="mm",
                      delta_area_mm2=a1 - a0, delta_area_pct=_pct(a0, a1),
                      delta_diameter_mm=d1 - d0, delta_diameter_pct=_pct(d0, d1))
    which = ("either photo" if not (earlier.calibrated or later.calibrated)
             else "the earlier photo" if not earlier.calibrated else "the later photo")
    warnings.append(f"No change in millimetres: {which} is not calibrated. Calibrate "
                    "both photos (a coin or sticker, or a ruler line) to compare sizes.")
    a0, a1 = earlier.area_px, later.area_px
    d0, d1 = earlier.max_diameter_px, later.max_diameter_px
    pct_area = pct_diam = None
    if not (earlier.calibrated or later.calibrated):
        pct_area, pct_diam = _pct(a0, a1), _pct(d0, d1)
        warnings.append("The per-cent changes compare pixel sizes: they only hold if both "
                        "photos were taken from the same distance with the same camera "
                        "and zoom.")
    return Change(calibrated=False, area_earlier=a0, area_later=a1, diameter_earlier=d0,
                  diameter_later=d1, unit="px", delta_area_mm2=None,
                  delta_area_pct=pct_area, delta_diameter_mm=None,
                  delta_diameter_pct=pct_diam, warnings=tuple(warnings))
