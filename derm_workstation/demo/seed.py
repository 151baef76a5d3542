"""Loading the synthetic demo dataset into a workspace.

Photos are rendered on a small thread pool (numpy and Pillow release the GIL
for most of the work) and, when a cache folder is given, kept there by spec so
a second demo start does not render them again. Each case is committed as a
unit; seeding an already populated store does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from derm_workstation.core import audit, intake
from derm_workstation.core.models import Case
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.demo.dataset import DemoCase, DemoDataset, DemoPhoto, build_demo_dataset

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SeedSummary:
    cases: int
    photos: int
    skipped: bool


def _cache_key(photo: DemoPhoto) -> str:
    payload = json.dumps(
        [asdict(photo.spec), photo.taken_at.isoformat()], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def render_jpeg(photo: DemoPhoto, cache_dir: Path | None) -> bytes:
    """The demo photo's JPEG bytes, from the cache when present."""
    if cache_dir is not None:
        cached = cache_dir / f"{_cache_key(photo)}.jpg"
        if cached.is_file():
            return cached.read_bytes()
    data = photo.render().jpeg
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError:
            log.debug("demo render cache not writable; continuing without it")
    return data


def store_case(ws: Workspace, actor: Actor, dataset: DemoDataset, case: DemoCase,
               jpegs: list[bytes]) -> str:
    """Write one demo case (patient, case, photos, questionnaire, messages) as one unit."""
    p = dataset.patient(case.patient_key)
    with ws.db.session() as s:
        patient = intake.upsert_patient(
            s,
            identifier=p.mrn,
            family_name=p.family_name,
            given_name=p.given_name,
            birth_date=p.birth_date,
            sex=p.sex,
        )
        c = intake.add_case(
            s,
            actor,
            patient,
            status=case.status,
            priority=case.priority,
            chief_complaint=case.chief_complaint,
            body_site=case.body_site,
            description=case.description,
            submitted_at=case.submitted_at,
            updated_at=case.updated_at,
            case_number=case.portal_case_number,
        )
        for photo, data in zip(case.photos, jpegs, strict=True):
            intake.add_photo(
                s,
                ws.images,
                c,
                data,
                body_site=photo.body_site,
                title=photo.title,
                taken_at=photo.taken_at,
                source="demo",
            )
        if case.questionnaire:
            intake.add_questionnaire(s, c, case.questionnaire, authored_at=case.submitted_at)
        for m in case.messages:
            intake.add_message(s, c, direction=m.direction, text=m.text, sent_at=m.sent_at)
        return c.id


def seed_demo(
    ws: Workspace,
    actor: Actor = SYSTEM,
    *,
    seed: int = 1729,
    n_cases: int = 40,
    now: datetime | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SeedSummary:
    """Fill an empty workspace with the demo cases; a populated one is left alone."""
    actor.require("data.seed")
    with ws.db.session() as s:
        if s.scalar(select(func.count()).select_from(Case)):
            return SeedSummary(0, 0, skipped=True)
    dataset = build_demo_dataset(seed=seed, n_cases=n_cases, now=now or datetime.now(UTC))
    # Earlier visits first, so each patient's history exists before the current case.
    cases = sorted(dataset.cases, key=lambda c: c.submitted_at)
    total = len(cases)
    photos = 0
    n_workers = workers or min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="demo-render") as pool:
        futures = [
            [pool.submit(render_jpeg, ph, cache_dir) for ph in case.photos] for case in cases
        ]
        for i, (case, futs) in enumerate(zip(cases, futures, strict=True), start=1):
            jpegs = [f.result() for f in futs]
            store_case(ws, actor, dataset, case, jpegs)
            photos += len(jpegs)
            if progress:
                progress(i, total)
    with ws.db.session() as s:
        audit.record(s, actor, "data.seed_demo", "workspace", None,
                     {"cases": total, "photos": photos, "seed": seed})
    return SeedSummary(total, photos, skipped=False)
