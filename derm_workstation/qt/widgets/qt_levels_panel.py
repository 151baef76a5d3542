"""Brightness, contrast and gamma sliders with Reset (layout: ``ui/levels_panel.ui``).

The panel writes an :class:`~derm_workstation.imaging.levels.Adjustment` to the photo
layer(s) it is bound to — display only, the stored photo never changes — and the
layers compute the adjusted pixels on the image pool.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QSizePolicy, QWidget

from derm_workstation.imaging.levels import Adjustment
from derm_workstation.qt.forms.levels_panel import Ui_LevelsPanel


def gamma_of(slider_value: int) -> float:
    """Slider -100..100 -> gamma 0.25..4 (0 -> 1.0, symmetric on a log scale)."""
    return round(4.0 ** (slider_value / 100.0), 3)


def slider_of(gamma: float) -> int:
    return round(100.0 * math.log(gamma, 4.0))


class QtLevelsPanel(QWidget):
    #: The clinician moved a slider or pressed Reset.
    adjustment_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = Ui_LevelsPanel()
        self.ui.setupUi(self)
        self.setObjectName("levelsPanel")
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        for slider in (self.ui.brightnessSlider, self.ui.contrastSlider, self.ui.gammaSlider):
            slider.valueChanged.connect(self._on_slider)
        self.ui.resetButton.clicked.connect(self.reset)
        self._update_labels()

    def adjustment(self) -> Adjustment:
        ui = self.ui
        return Adjustment(
            brightness=ui.brightnessSlider.value(),
            contrast=ui.contrastSlider.value(),
            gamma=gamma_of(ui.gammaSlider.value()),
        )

    def set_adjustment(self, adj: Adjustment) -> None:
        """Show ``adj`` without announcing it (e.g. another photo was opened)."""
        ui = self.ui
        for slider, value in ((ui.brightnessSlider, adj.brightness),
                              (ui.contrastSlider, adj.contrast),
                              (ui.gammaSlider, slider_of(adj.gamma))):
            slider.blockSignals(True)
            slider.setValue(value)
            slider.blockSignals(False)
        self._update_labels()

    def reset(self) -> None:
        self.set_adjustment(Adjustment())
        self.adjustment_changed.emit(Adjustment())

    def _on_slider(self, _value: int) -> None:
        self._update_labels()
        self.adjustment_changed.emit(self.adjustment())

    def _update_labels(self) -> None:
        adj = self.adjustment()
        ui = self.ui
        ui.brightnessValue.setText(f"{adj.brightness:+d}")
        ui.contrastValue.setText(f"{adj.contrast:+d}")
        ui.gammaValue.setText(f"{adj.gamma:.2f}")
        ui.resetButton.setEnabled(not adj.is_identity)
