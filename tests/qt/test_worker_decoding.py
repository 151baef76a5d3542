"""Thumbnails decoded on a worker thread: Pillow, never Qt's plugin probing.

``QImage.fromData`` keeps the GIL while Qt's SVG plugin probe connects a QObject; the GUI
thread disconnecting a signal of a Python-made QObject holds Qt's signal-slot lock while
it waits for the GIL, so the two deadlock (a hung test run, reproduced in a script: two
threads decoding while the GUI thread connects and disconnects). See
``qt_case_panel.thumbnail_qimage``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image

from derm_workstation.core.errors import DermError
from derm_workstation.qt.widgets.qt_case_panel import thumbnail_qimage

PACKAGE = Path(__file__).resolve().parents[2] / "derm_workstation"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_thumbnail_bytes_become_an_image_of_their_size_and_colour(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (256, 192), (200, 120, 90)).save(buf, fmt)
    img = thumbnail_qimage(buf.getvalue())
    assert (img.width(), img.height()) == (256, 192)
    c = img.pixelColor(100, 100)
    assert abs(c.red() - 200) <= 3 and abs(c.green() - 120) <= 3 and abs(c.blue() - 90) <= 3


def test_damaged_thumbnail_is_a_plain_error() -> None:
    with pytest.raises(DermError, match="thumbnail could not be made"):
        thumbnail_qimage(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_no_code_decodes_through_qt_image_plugins() -> None:
    calls = re.compile(r"\b(?:fromData|loadFromData)\(")
    found = [f"{p.relative_to(PACKAGE)}:{i}"
             for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if calls.search(line)]
    assert found == [], found
