"""Fixtures for the portal client tests: scripted loopback servers and fast clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from derm_workstation.portal.auth import StaticToken, TokenProvider
from derm_workstation.portal.client import PortalClient, RetryPolicy
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.scripted import Scripted
from tests.portal.test_reference_support import FHIR_JSON

FAST = RetryPolicy(max_tries=4, data_tries=2, backoff_base=0.01, backoff_max=0.05,
                   max_retry_after=5.0)


@pytest.fixture
def server() -> Iterator[Scripted]:
    with Scripted() as s:
        yield s


@pytest.fixture
def other_server() -> Iterator[Scripted]:
    """A second server: another origin (another port on loopback)."""
    with Scripted() as s:
        yield s


def make_client(base_url: str, tokens: TokenProvider | None = None, **kw: Any) -> PortalClient:
    kw.setdefault("retry", FAST)
    kw.setdefault("read_timeout", 5.0)
    return PortalClient(base_url, tokens if tokens is not None else StaticToken("secret-token"),
                        **kw)


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[ReferencePortal]:
    """An empty reference portal of the test's own."""
    with ReferencePortal.start(tmp_path / "portal.sqlite3") as p:
        yield p


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A plain HTTP session asking for FHIR JSON."""
    with requests.Session() as s:
        s.headers["Accept"] = FHIR_JSON
        yield s
