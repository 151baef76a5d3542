"""``--demo``: the reference portal runs in-process on loopback and the workstation syncs
from it into a fresh local store (the real path); ``--data-dir`` keeps both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.test_cli import cli


@pytest.mark.slow
def test_demo_syncs_from_the_in_process_portal_and_the_cli_reads_it(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    png = tmp_path / "out.png"
    r = cli("--demo", "--demo-cases", "3", "--data-dir", str(d), "--screenshot", str(png),
            timeout=300)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 700
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 500  # not a blank frame

    rows = json.loads(cli("--data-dir", str(d), "queue", "list", "--json").stdout)
    assert len(rows) == 3
    assert all(row["status"] in ("requested", "received") for row in rows)
    task_ids = set()
    for row in rows:
        shown = json.loads(cli("--data-dir", str(d), "case", "show", row["id"],
                               "--json").stdout)
        assert shown["portal"]["task_id"] and shown["portal"]["patient_id"]
        assert shown["photos"] and all(len(p["sha256"]) == 64 and p["portal_media_id"]
                                       for p in shown["photos"])
        assert "portal_notice" in shown and "allergies" in shown
        task_ids.add(shown["portal"]["task_id"])
    assert len(task_ids) == 3
    # the portal's database is kept with the data folder; the demo token was not stored
    assert (d / "portal" / "portal.sqlite3").is_file()
    assert not (d / "portal.json").exists()
    keyring_files = [p for p in Path(os.environ["XDG_DATA_HOME"]).rglob("*") if p.is_file()]
    assert not any(b"derm-workstation" in p.read_bytes() for p in keyring_files)

    # A second demo run on the same folder: the portal is not seeded again and the sync
    # finds nothing new — still three cases, no duplicates.
    png2 = tmp_path / "again.png"
    r = cli("--demo", "--demo-cases", "3", "--data-dir", str(d), "--screenshot", str(png2),
            timeout=300)
    assert r.returncode == 0, r.stderr
    again = json.loads(cli("--data-dir", str(d), "queue", "list", "--json").stdout)
    assert sorted(x["id"] for x in again) == sorted(x["id"] for x in rows)
