"""Fixtures for sync tests: a real reference portal on loopback and a real workspace.

Seeding renders demo photos, so one seeded portal database is built per session and
copied (SQLite backup API) for each test that needs one.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.auth import StaticToken
from derm_workstation.portal.client import PortalClient, RetryPolicy
from derm_workstation.portal.reference.server import FaultSpec, ReferencePortal
from tests.builders import jpeg

TOKEN = "test-token"
SEED_CASES = 4
FAST = RetryPolicy(max_tries=6, data_tries=3, backoff_base=0.01, backoff_max=0.05,
                   max_retry_after=3.0)


@pytest.fixture(scope="session")
def seeded_portal_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("portal-template")
    path = base / "portal.sqlite3"
    cache = tmp_path_factory.getbasetemp() / "demo-cache"
    with ReferencePortal.start(path, token=TOKEN, seed_cases=SEED_CASES, cache_dir=cache):
        pass
    return path


def copy_db(src: Path, dst: Path) -> Path:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()
    return dst


@pytest.fixture
def portal_db(seeded_portal_db: Path, tmp_path: Path) -> Path:
    return copy_db(seeded_portal_db, tmp_path / "portal.sqlite3")


@pytest.fixture
def portal(portal_db: Path) -> Iterator[ReferencePortal]:
    with ReferencePortal.start(portal_db, token=TOKEN, validate=True) as p:
        yield p


@pytest.fixture
def empty_portal(tmp_path: Path) -> Iterator[ReferencePortal]:
    with ReferencePortal.start(tmp_path / "empty-portal.sqlite3", token=TOKEN,
                               validate=True) as p:
        yield p


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    w = Workspace.open(tmp_path / "ws")
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inode of every file or folder flushed (``os.fsync``, which still runs), in
    order, from here on."""
    import os

    flushed: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        flushed.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fsync", fsync)
    return flushed


ClientFactory = Callable[..., PortalClient]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    made: list[PortalClient] = []

    def make(base_url: str, token: str = TOKEN, **kw: Any) -> PortalClient:
        kw.setdefault("retry", FAST)
        kw.setdefault("read_timeout", 10.0)
        c = PortalClient(base_url, StaticToken(token), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def faults(spec: str) -> FaultSpec:
    return FaultSpec.parse(spec)


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def add_portal_case(store: Any, *, n: int = 0, status: str = "requested",
                    photos: int = 0, patient_id: str | None = None,
                    media_overrides: dict[str, Any] | None = None,
                    task_overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """A small case written straight into the portal's store; returns the ids."""
    if patient_id is None:
        patient = store.create({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:mrn", "value": f"T-{n:05d}"}],
            "name": [{"family": f"Family{n}", "given": [f"Given{n}"]}],
            "gender": "female" if n % 2 else "male",
            "birthDate": "1980-05-17",
        })
        patient_id = patient["id"]
    sr = store.create({
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-11-20T10:00:00Z",
        "reasonCode": [{"text": f"Complaint {n}"}],
        "bodySite": [{"text": "Left forearm"}],
        "note": [{"text": f"Description {n}"}],
    })
    ids = {"patient": patient_id, "service_request": sr["id"]}
    for k in range(photos):
        data = jpeg((60 + 20 * k, 40 + n % 100, 50), (160, 120))
        binary = store.put_binary(data, "image/jpeg")
        media = {
            "resourceType": "Media", "status": "completed",
            "subject": {"reference": f"Patient/{patient_id}"},
            "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
            "createdDateTime": f"2026-11-20T09:0{k}:00Z",
            "content": {"contentType": "image/jpeg", "url": f"Binary/{binary['id']}",
                        "size": len(data), "hash": sha1_b64(data), "title": f"Photo {k + 1}"},
        }
        if media_overrides:
            media["content"].update(media_overrides)
        ids[f"media{k}"] = store.create(media)["id"]
    task = {
        "resourceType": "Task", "status": status, "intent": "order", "priority": "routine",
        "identifier": [{"system": "urn:test:case", "value": f"TEST-{n:05d}"}],
        "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2026-11-20T10:00:00Z",
    }
    task.update(task_overrides or {})
    ids["task"] = store.create(task)["id"]
    return ids
