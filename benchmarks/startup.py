"""Cold start to an interactive main window with 10,000 cases in the database.

Baseline, measured in the same run: a fresh interpreter that imports PySide6
and shows an empty QMainWindow. Both are timed from process start to the
moment the window is on screen and (for the workstation) the first page of
the queue is in the table and the first case is open. Target: ratio ≤ 3×.

    python -m benchmarks.startup [--cases 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from derm_workstation.core.workspace import Workspace

from ._common import bulk_fill, report

BASELINE = r"""
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
w = QMainWindow()
w.show()
QTimer.singleShot(0, app.quit)
app.exec()
"""

WORKSTATION = r"""
import sys
from PySide6.QtCore import QSettings, QTimer
from derm_workstation.qt.app import make_application
from derm_workstation.core.services import CaseService
from derm_workstation.core.users import local_actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.qt.main_window import QtMainWindow
from derm_workstation.qt.tasks import QtTaskManager
app = make_application()
ws = Workspace.open(sys.argv[1])
tasks = QtTaskManager()
w = QtMainWindow(ws, CaseService(ws, local_actor()), tasks, QSettings())
w.case_shown.connect(lambda _id: QTimer.singleShot(0, app.quit))
w.refresh()
w.show()
app.exec()
tasks.shutdown()
"""


def timed(code: str, *args: str) -> float:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp))
        bulk_fill(ws, args.cases)
        ws.close()
        timed(BASELINE)  # warm the OS file cache for both
        timed(WORKSTATION, tmp)
        base, work = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            base.append(timed(BASELINE))
            work.append(timed(WORKSTATION, tmp))
    b, w = statistics.median(base), statistics.median(work)
    ratio = w / b
    rows = [
        {"what": "bare PySide6 QMainWindow (baseline)", "median_s": b, "runs": args.runs},
        {"what": f"workstation, {args.cases} cases, first case open", "median_s": w,
         "runs": args.runs},
    ]
    print(f"ratio workstation / baseline: {ratio:.2f}x (target <= 3x)\n")
    report("startup", rows, {"cases": args.cases, "ratio": ratio, "target_ratio": 3.0})


if __name__ == "__main__":
    main()
