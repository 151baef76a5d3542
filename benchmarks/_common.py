"""Shared helpers: bulk-filled databases, timing, and the result table/JSON."""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from derm_workstation.core.models import PRIORITY_RANK, Case, Patient
from derm_workstation.core.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"

FAMILY = ["Okafor", "Nguyen", "Müller", "García", "Kowalski", "Haddad", "Tanaka", "Silva",
          "Johansson", "Mensah", "Petrov", "O'Brien", "Kaur", "Cohen", "Rossi", "Dubois"]
GIVEN = ["Ada", "Minh", "Lena", "Diego", "Ola", "Rami", "Yuki", "Ana", "Erik", "Kofi", "Ivan",
         "Siobhan", "Harpreet", "Noa", "Giulia", "Camille"]
COMPLAINTS = ["Changing mole", "Itchy rash", "Scaly plaques", "Acne flare", "Eczema flare",
              "New pigmented spot", "Bleeding lesion", "Hair loss patch", "Nail discolouration"]
SITES = ["Left forearm", "Right shin", "Upper back", "Scalp", "Face, left cheek", "Abdomen",
         "Right elbow", "Left knee", "Chest", "Neck"]
STATUSES = ["requested"] * 6 + ["received"] * 2 + ["accepted", "in-progress", "on-hold",
                                                   "completed", "completed", "cancelled"]
PRIOS = ["routine"] * 8 + ["urgent", "asap", "stat"]


def bulk_fill(ws: Workspace, n_cases: int, seed: int = 7) -> None:
    """Insert n synthetic cases quickly (core INSERTs, no photos) for scale tests."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    n_patients = max(1, n_cases // 2)
    patients = []
    for _ in range(n_patients):
        patients.append({
            "id": str(uuid.uuid4()), "portal_id": None,
            "identifier": f"MRN-{rng.randrange(10**6):06d}",
            "family_name": rng.choice(FAMILY), "given_name": rng.choice(GIVEN),
            "birth_date": date(1930, 1, 1) + timedelta(days=rng.randrange(33000)),
            "sex": rng.choice(["female", "male", "other", "unknown"]),
            "created_at": now, "updated_at": now,
        })
    cases = []
    for i in range(n_cases):
        p = rng.choice(patients)
        prio = rng.choice(PRIOS)
        complaint, site = rng.choice(COMPLAINTS), rng.choice(SITES)
        number = f"TD-B-{i:07d}"
        cases.append({
            "id": str(uuid.uuid4()), "patient_id": p["id"], "status": rng.choice(STATUSES),
            "priority": prio, "priority_rank": PRIORITY_RANK[prio], "case_number": number,
            "chief_complaint": complaint, "body_site": site, "description": "",
            "submitted_at": now - timedelta(minutes=rng.randrange(60 * 24 * 60)),
            "updated_at": now, "created_at": now, "photo_count": rng.randrange(0, 7),
            "search_text": " ".join([p["family_name"], p["given_name"], p["identifier"],
                                     number, complaint, site]).lower(),
        })
    with ws.db.session() as s:
        s.execute(insert(Patient), patients)
        for start in range(0, len(cases), 20000):
            s.execute(insert(Case), cases[start:start + 20000])


def median_ms(fn: Callable[[], Any], repeat: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def report(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """Print a table and write benchmarks/results/<name>.json."""
    keys = list(rows[0].keys()) if rows else []
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
        **(extra or {}),
    }, indent=2))
    print(f"\nwrote {out}")
    return out


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
