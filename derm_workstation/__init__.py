"""Derm Review Workstation: store-and-forward teledermatology for clinicians.

Everything outside :mod:`derm_workstation.qt` is Qt-free and usable headless
(from the CLI, tests or a notebook).
"""

__version__ = "0.1.0"
