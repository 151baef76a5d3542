"""``derm-workstation annotations export`` run as a real subprocess on a real store."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from derm_workstation.core import annotations as an
from derm_workstation.core import intake
from derm_workstation.core.models import AuditEvent
from derm_workstation.core.users import Actor
from derm_workstation.core.workspace import Workspace
from tests.cli.test_cli import assert_clean_error, cli
from tests.core.helpers import add_case, add_patient

DOC = Actor("dr.smith", "dermatologist")


def _photo_bytes() -> bytes:
    arr = np.full((300, 400, 3), (205, 160, 140), np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.0)}
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str, str]:
    """A data folder with a calibrated and an uncalibrated photo; the first annotated."""
    d = tmp_path / "data"
    ws = Workspace.open(d)
    try:
        with ws.db.session() as s:
            p = add_patient(s, "Secret", "Name")
            c = add_case(s, p, datetime(2026, 1, 2, tzinfo=UTC))
            ph = intake.add_photo(s, ws.images, c, _photo_bytes())
            ph.calibration_px_per_mm = 10.0
            ph.calibration_method = "ruler-line"
            bare = intake.add_photo(s, ws.images, c, _photo_bytes())
            pid, bare_id = ph.id, bare.id
        svc = an.AnnotationService(ws, DOC)
        svc.add(pid, "ruler", [(50, 100), (250, 100)])
        svc.add(pid, "marker", [(300, 200)], lesion_number=1, label="Lesion 1")
    finally:
        ws.close()
    return d, pid, bare_id


def test_export_json_and_annotated_copy(store: tuple[Path, str, str], tmp_path: Path) -> None:
    d, pid, _bare = store
    jout, iout = tmp_path / "ann.json", tmp_path / "copy.png"
    r = cli("annotations", "export", pid[:8], "--json-out", str(jout), "--image-out",
            str(iout), "--data-dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == {"photo_id": pid, "json_out": str(jout), "annotations": 2,
                       "image_out": str(iout), "image_format": "PNG", "calibrated": True,
                       "px_per_mm": 10.0}
    doc = json.loads(jout.read_text())
    assert doc["format"] == an.EXPORT_FORMAT and doc["photo"]["id"] == pid
    assert [a["kind"] for a in doc["annotations"]] == ["ruler", "marker"]
    assert doc["annotations"][0]["measurement"]["text"] == "20.0 mm"
    im = Image.open(iout)
    assert im.format == "PNG" and im.size == (400, 300)
    assert not im.getexif() and b"PhoneMaker" not in iout.read_bytes()
    a = np.asarray(im.convert("RGB"))
    assert a[100, 150][0] > 230 and a[100, 150][2] < 120  # the ruler, burned in
    ws = Workspace.open(d)
    try:
        with ws.db.session() as s:
            ev = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "photo.export")))
            assert sorted(e.detail["what"] for e in ev) == ["annotated-copy",
                                                           "annotations-json"]
    finally:
        ws.close()


def test_plain_output_of_an_uncalibrated_photo(store: tuple[Path, str, str],
                                               tmp_path: Path) -> None:
    d, _pid, bare = store
    out = tmp_path / "bare.jpg"
    r = cli("annotations", "export", bare, "--image-out", str(out), "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert "uncalibrated" in r.stdout and "JPEG" in r.stdout
    assert Image.open(out).format == "JPEG"


def test_errors_are_one_line(store: tuple[Path, str, str], tmp_path: Path) -> None:
    d, pid, _bare = store
    assert_clean_error(cli("annotations", "export", pid, "--data-dir", str(d)), 2,
                       "nothing to export")
    assert_clean_error(cli("annotations", "export", "deadbeef-0000", "--json-out",
                           str(tmp_path / "x.json"), "--data-dir", str(d)), 2, "no photo")
    assert_clean_error(cli("annotations", "export", pid, "--image-out",
                           str(tmp_path / "x.gif"), "--data-dir", str(d)), 2, ".jpg")
    assert_clean_error(cli("annotations", "export", pid, "--json-out",
                           str(tmp_path / "missing" / "x.json"), "--data-dir", str(d)), 2,
                       "does not exist")
    assert not (tmp_path / "x.json").exists()
