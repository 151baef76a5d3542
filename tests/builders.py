"""Builders for Qt tests: a real workspace with real JPEG photos."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw

from derm_workstation.core import intake
from derm_workstation.core.users import SYSTEM
from derm_workstation.core.workspace import Workspace

NOW = datetime.now(UTC)


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (480, 360)) -> bytes:
    img = Image.new("RGB", size, (224, 180, 160))
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse((w // 3, h // 3, 2 * w // 3, 2 * h // 3), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


#: (family, given, status, priority, complaint, site, hours waiting, photos)
CASES = [
    ("Okafor", "Ada", "requested", "urgent", "Changing mole", "Left forearm", 30, 2),
    ("Nguyen", "Minh", "requested", "routine", "Itchy rash", "Right shin", 50, 1),
    ("Müller", "Lena", "received", "routine", "Scaly plaques", "Right elbow", 5, 3),
    ("García", "Diego", "in-progress", "stat", "Bleeding lesion", "Upper back", 2, 1),
    ("Kowalski", "Ola", "on-hold", "routine", "Acne flare", "Face, left cheek", 200, 1),
    ("Haddad", "Rami", "completed", "routine", "Eczema flare", "Neck", 900, 2),
    ("Tanaka", "Yuki", "accepted", "asap", "New pigmented spot", "Chest", 12, 1),
    ("Silva", "Ana", "cancelled", "routine", "Hair loss patch", "Scalp", 400, 0),
]


def populate(ws: Workspace) -> dict[str, str]:
    """Create the CASES; returns family name -> case id."""
    ids = {}
    with ws.db.session() as s:
        for i, (fam, giv, status, prio, complaint, site, hours, n_photos) in enumerate(CASES):
            p = intake.upsert_patient(s, identifier=f"MRN-{i:04d}", family_name=fam,
                                      given_name=giv, birth_date=date(1960 + i * 5, 3, 1),
                                      sex="female" if i % 2 else "male")
            c = intake.add_case(s, SYSTEM, p, status=status, priority=prio,
                                chief_complaint=complaint, body_site=site,
                                description=f"{complaint} for a while.",
                                submitted_at=NOW - timedelta(hours=hours),
                                case_number=f"TD-T-{i:04d}")
            for k in range(n_photos):
                intake.add_photo(s, ws.images, c, jpeg((90 + 40 * k, 50 + 10 * i, 40)),
                                 body_site=site, title=f"Photo {k + 1}",
                                 taken_at=NOW - timedelta(hours=hours + 1), source="import")
            ids[fam] = c.id
    return ids


def corrupt_first_photo(ws: Workspace, case_id: str) -> str:
    from derm_workstation.core.models import Photo

    with ws.db.session() as s:
        ph = s.query(Photo).filter_by(case_id=case_id).order_by(Photo.position).first()
        assert ph is not None
        sha = ph.sha256
    path: Path = ws.images.path_for(sha)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return sha


def bulk_cases(ws: Workspace, n: int) -> list[str]:
    """n routine 'requested' cases, one minute apart (oldest first); returns their ids."""
    with ws.db.session() as s:
        p = intake.upsert_patient(s, identifier="MRN-BULK", family_name="Bulk",
                                  given_name="Patient", birth_date=date(1980, 1, 1), sex="female")
        ids = []
        for i in range(n):
            c = intake.add_case(s, SYSTEM, p, status="requested", priority="routine",
                                chief_complaint=f"Complaint {i:04d}", body_site="Arm",
                                description="", submitted_at=NOW - timedelta(minutes=n - i),
                                case_number=f"TD-BULK-{i:05d}")
            ids.append(c.id)
    return ids
