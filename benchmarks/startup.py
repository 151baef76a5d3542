"""Cold start to an interactive main window with 10,000 cases in the database.

Baseline, measured in the same run: a fresh interpreter that imports PySide6
and shows an empty QMainWindow, timed from process spawn to its first
event-loop turn. The workstation is timed to two moments: its main window
shown and responsive (first event-loop turn; the store opens on the database
lane meanwhile), and the queue listed with the first case and its photo open.
Target: ratio ≤ 3× for the interactive window.

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
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
w = QMainWindow()
w.show()
def shown():
    print("interactive", flush=True)
    app.quit()
QTimer.singleShot(0, shown)
app.exec()
"""

WORKSTATION = r"""
import sys
from pathlib import Path
from derm_workstation.qt.app import GuiOptions, run_gui
sys.exit(run_gui(GuiOptions(
    data_dir=Path(sys.argv[1]),
    on_interactive=lambda: print("interactive", flush=True),
    quit_when_ready=True,
)))
"""


def timed(code: str, *args: str) -> tuple[float, float]:
    """(seconds to the first event-loop turn with the window shown, seconds to exit)."""
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    interactive = float("nan")
    for line in proc.stdout:
        if line.strip() == "interactive":
            interactive = time.perf_counter() - t0
    code_ = proc.wait()
    done = time.perf_counter() - t0
    if code_ != 0:
        raise SystemExit(f"benchmark child failed with exit code {code_}")
    return interactive, done


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
        base, inter, ready = [], [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            base.append(timed(BASELINE)[0])
            i, r = timed(WORKSTATION, tmp)
            inter.append(i)
            ready.append(r)
    b = statistics.median(base)
    i, r = statistics.median(inter), statistics.median(ready)
    rows = [
        {"what": "bare PySide6: empty QMainWindow shown (baseline)", "median_s": b,
         "ratio": 1.0},
        {"what": "workstation: main window shown and responsive", "median_s": i,
         "ratio": i / b},
        {"what": f"workstation: {args.cases} cases listed, first case and photo open",
         "median_s": r, "ratio": r / b},
    ]
    print(f"interactive window: {i / b:.2f}x the baseline (target <= 3x); "
          f"queue listed and first case open: {r / b:.2f}x\n")
    report("startup", rows, {"cases": args.cases, "runs": args.runs,
                             "ratio_interactive": i / b, "ratio_first_case_open": r / b,
                             "target_ratio": 3.0})


if __name__ == "__main__":
    main()
