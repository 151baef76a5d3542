"""``derm-workstation portal serve`` as a real subprocess."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

TIMEOUT = 120


def _serve(*args: str, stdin: str | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start the server; return it and the URL line it printed."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen(
        [sys.executable, "-m", "derm_workstation", "portal", "serve", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    assert proc.stdin is not None and proc.stdout is not None
    if stdin is not None:
        proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdin = None  # so that communicate() does not flush it
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""),
                     daemon=True).start()
    try:
        line = lines.get(timeout=TIMEOUT)
    except queue.Empty:
        proc.kill()
        raise AssertionError("portal serve printed no URL") from None
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if os.name == "posix":
        proc.send_signal(signal.SIGTERM)
    else:  # pragma: no cover - Windows has no SIGTERM for child processes
        proc.terminate()
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_serve_prints_the_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "portal-data"
    proc, line = _serve("--port", "0", "--seed-cases", "2", "--data-dir", str(data))
    try:
        url = line.strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/fhir"), line
        r = requests.get(f"{url}/metadata", timeout=30)
        assert r.status_code == 200 and r.json()["resourceType"] == "CapabilityStatement"
        bundle = requests.get(f"{url}/Task", params={"status": "requested,received,accepted,"
                                                                "in-progress,on-hold"},
                              timeout=30).json()
        assert bundle["total"] == 2
    finally:
        code, out, err = _stop(proc)
    if os.name == "posix":
        assert code == 0, err
    assert out == "" and "Traceback" not in err
    assert (data / "portal.sqlite3").is_file()  # --data-dir keeps the database


def test_token_from_stdin_is_required(tmp_path: Path) -> None:
    proc, line = _serve("--token-stdin", "--faults", "latency=0.01", stdin="from-stdin\n")
    try:
        url = line.strip()
        assert requests.get(f"{url}/Task", timeout=30).status_code == 401
        ok = requests.get(f"{url}/Task", headers={"Authorization": "Bearer from-stdin"},
                          timeout=30)
        assert ok.status_code == 200 and ok.json()["total"] == 0
    finally:
        _stop(proc)


def test_bad_arguments_are_one_error_line() -> None:
    for args, needle in ((["--faults", "colour=red"], "unknown fault"),
                         (["--port", "70000"], "--port"),
                         (["--token-stdin"], "token on stdin")):
        r = subprocess.run([sys.executable, "-m", "derm_workstation", "portal", "serve", *args],
                           capture_output=True, text=True, timeout=TIMEOUT, input="",
                           env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        assert r.stdout == ""


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    proc, line = _serve()
    try:
        port = line.strip().rsplit(":", 1)[1].split("/")[0]
        r = subprocess.run([sys.executable, "-m", "derm_workstation", "portal", "serve",
                            "--port", port], capture_output=True, text=True, timeout=TIMEOUT,
                           env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
        assert r.returncode == 1 and r.stderr.startswith("error: cannot serve on"), r.stderr
    finally:
        _stop(proc)
