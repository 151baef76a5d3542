"""The command line, run as a real subprocess against real data folders."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from derm_workstation import __version__
from derm_workstation.core.workspace import Workspace
from tests.builders import CASES, corrupt_first_photo, populate


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, QT_QPA_PLATFORM="offscreen", **(env or {}))
    return subprocess.run([sys.executable, "-m", "derm_workstation", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in r.stderr


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "data"
    ws = Workspace.open(d)
    try:
        ids = populate(ws)
    finally:
        ws.close()
    return d, ids


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"derm-workstation {__version__}"


def test_queue_list_json(data: tuple[Path, dict[str, str]]) -> None:
    d, ids = data
    r = cli("--data-dir", str(d), "queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    open_cases = [c for c in CASES if c[2] not in ("completed", "cancelled")]
    assert len(rows) == len(open_cases)
    for row in rows:
        assert {"id", "status", "priority", "submitted_at", "photo_count"} <= row.keys()
    assert rows[0]["priority"] == "stat"
    assert {r["id"] for r in rows} <= set(ids.values())


def test_queue_list_status_filter_and_option_after_command(
        data: tuple[Path, dict[str, str]]) -> None:
    d, _ = data
    r = cli("queue", "list", "--status", "completed,cancelled", "--json", "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(x["status"] for x in json.loads(r.stdout)) == ["cancelled", "completed"]
    r = cli("queue", "list", "--status", "all", "--json", "--data-dir", str(d))
    assert len(json.loads(r.stdout)) == len(CASES)


def test_queue_list_bad_status_is_exit_2(data: tuple[Path, dict[str, str]]) -> None:
    d, _ = data
    assert_clean_error(cli("--data-dir", str(d), "queue", "list", "--status", "nonsense"), 2,
                       "unknown status")


def test_case_show_json(data: tuple[Path, dict[str, str]]) -> None:
    d, ids = data
    r = cli("--data-dir", str(d), "case", "show", ids["Müller"], "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["id"] == ids["Müller"]
    assert c["patient"]["name"] == "Müller, Lena"
    assert len(c["photos"]) == 3
    for ph in c["photos"]:
        assert len(ph["sha256"]) == 64 and ph["width"] == 480 and ph["height"] == 360
        assert ph["body_site"] == "Right elbow"
    assert {"task_id", "task_version", "service_request_id"} <= c["portal"].keys()


def test_case_show_text_and_unknown_id(data: tuple[Path, dict[str, str]]) -> None:
    d, ids = data
    r = cli("--data-dir", str(d), "case", "show", ids["Okafor"][:8])
    assert r.returncode == 0 and "Okafor, Ada" in r.stdout
    assert_clean_error(cli("--data-dir", str(d), "case", "show", "no-such-case"), 2, "no case")


def test_usage_errors_are_one_line_exit_2() -> None:
    assert_clean_error(cli("queue", "frobnicate"), 2, "invalid choice")
    assert_clean_error(cli("--no-such-flag"), 2, "unrecognized")


def test_not_a_database_is_refused_and_untouched(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are my notes, not a database\n" * 20)
    before = bad.read_bytes()
    assert_clean_error(cli("--data-dir", str(tmp_path / "d"), "--db", f"sqlite:///{bad}",
                           "queue", "list"), 1, "not a derm workstation database")
    assert bad.read_bytes() == before


def test_newer_schema_is_refused_and_untouched(data: tuple[Path, dict[str, str]]) -> None:
    d, _ = data
    db = d / "derm.sqlite3"
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    before = db.read_bytes()
    assert_clean_error(cli("--data-dir", str(d), "queue", "list"), 1, "newer version")
    assert db.read_bytes() == before


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(cli("--data-dir", str(blocker / "sub"), "queue", "list"), 1,
                       "cannot create the data folder")


def test_corrupt_photo_reported_not_shown(data: tuple[Path, dict[str, str]]) -> None:
    d, ids = data
    ws = Workspace.open(d)
    try:
        corrupt_first_photo(ws, ids["Okafor"])
    finally:
        ws.close()
    # case show still works: metadata is intact, the photo is reported on read
    r = cli("--data-dir", str(d), "case", "show", ids["Okafor"], "--json")
    assert r.returncode == 0


@pytest.mark.slow
def test_demo_seed_then_screenshot_then_cli(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    png = tmp_path / "out.png"
    r = cli("--demo", "--demo-cases", "4", "--data-dir", str(d), "--screenshot", str(png),
            timeout=300)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 700
        # not a blank frame: the photo area and the table produce many distinct colours
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 500
    rows = json.loads(cli("--data-dir", str(d), "queue", "list", "--json").stdout)
    assert len(rows) == 4
    shown = json.loads(cli("--data-dir", str(d), "case", "show", rows[0]["id"], "--json").stdout)
    assert shown["photos"] and shown["questionnaire"]
    # seeding again leaves the kept folder alone
    r = cli("--data-dir", str(d), "demo", "seed", "--cases", "4", "--json")
    assert json.loads(r.stdout)["skipped"] is True


def test_gui_start_on_a_damaged_database_reports_and_exits(tmp_path: Path) -> None:
    """The window opens first; the store fails to open on the database lane; the app
    says why in one line and exits 1, writing no screenshot and changing nothing."""
    bad = tmp_path / "derm.sqlite3"
    bad.write_bytes(b"\x00garbage, not sqlite" * 50)
    before = bad.read_bytes()
    png = tmp_path / "shot.png"
    r = cli("--data-dir", str(tmp_path), "--screenshot", str(png))
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not a derm workstation database" in errors[0].lower()
    assert "Traceback" not in r.stderr
    assert not png.exists()
    assert bad.read_bytes() == before


def test_plain_demo_uses_a_throwaway_folder(tmp_path: Path) -> None:
    png = tmp_path / "demo.png"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = cli("--demo", "--demo-cases", "2", "--screenshot", str(png),
            env={"TMPDIR": str(tmpdir)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 10_000
    assert list(tmpdir.glob("derm-demo-*")) == []  # removed on exit
