"""Fixtures for the portal client tests: scripted loopback servers and fast clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from derm_workstation.portal.auth import StaticToken, TokenProvider
from derm_workstation.portal.client import PortalClient, RetryPolicy
from tests.portal.scripted import Scripted

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
