"""Guard against a PySide6 release whose Python signals corrupt the interpreter.

PySide6 6.12.0 on Python 3.11 drops one reference to ``True`` on every ``emit()`` of a
Python-declared ``Signal``; after a few thousand emits (pan frames, finished tasks) the
interpreter aborts with "bool_dealloc". pyproject excludes that release; this test keeps
whatever PySide6 gets installed honest, in a child process so an abort cannot take the
test run down.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import sys
    from PySide6.QtCore import QCoreApplication, QObject, Signal

    app = QCoreApplication([])

    class Emitter(QObject):
        bare = Signal()
        carrying = Signal(object)

    e = Emitter()
    got = []
    e.carrying.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(20000):
        e.bare.emit()
        e.carrying.emit(i)
    assert len(got) == 20000
    print(sys.getrefcount(True) - before)
""")


def test_twenty_thousand_signal_emits_do_not_corrupt_the_interpreter() -> None:
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert abs(int(run.stdout.strip())) < 100  # no reference leak or loss per emit
