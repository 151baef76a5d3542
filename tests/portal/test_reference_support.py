"""Shared helpers for the reference portal tests (no tests here).

Portals are real servers on 127.0.0.1 with real SQLite files. The 40-case demo set
is seeded once per session into a database file (:func:`seeded_db`); test modules
start their own server on it and must only read from it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from derm_workstation.portal.reference.server import ReferencePortal

FIXED_NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
SEED_CASES = 40
OPEN = "requested,received,accepted,in-progress,on-hold"
FHIR_JSON = "application/fhir+json"

_seeded: dict[Path, Path] = {}


def demo_cache(factory: pytest.TempPathFactory) -> Path:
    """The session's shared demo render cache (as tests/conftest.py sets it up)."""
    return factory.getbasetemp() / "demo-cache" / "demo-photos"


def seeded_db(factory: pytest.TempPathFactory) -> Path:
    """A portal database holding the 40-case demo set at FIXED_NOW, seeded once a session."""
    key = factory.getbasetemp()
    if key not in _seeded:
        db = factory.mktemp("seeded-portal") / "portal.sqlite3"
        with ReferencePortal.start(db, seed_cases=SEED_CASES, now=FIXED_NOW,
                                   cache_dir=demo_cache(factory)):
            pass
        _seeded[key] = db
    return _seeded[key]


def search_all(http: requests.Session, url: str, params: dict[str, str] | None = None
               ) -> list[dict[str, Any]]:
    """Every resource of a search, following ``next`` links; asserts each page is sane."""
    out: list[dict[str, Any]] = []
    next_url: str | None = url
    first = True
    while next_url:
        r = http.get(next_url, params=params if first else None, timeout=30)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        out.extend(e["resource"] for e in bundle.get("entry", []))
        links = {ln["relation"]: ln["url"] for ln in bundle["link"]}
        next_url = links.get("next")
        first = False
    return out


def task(status: str = "requested", **extra: Any) -> dict[str, Any]:
    """A minimal valid Task."""
    return {"resourceType": "Task", "status": status, "intent": "order", **extra}
