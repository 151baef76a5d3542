"""Credentials: keyring only, settings without secrets, OAuth2 client credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest

from derm_workstation.core.errors import InputError
from derm_workstation.portal import auth
from derm_workstation.portal.client import PortalClient
from derm_workstation.portal.errors import PortalAuthError
from derm_workstation.portal.reference.server import ReferencePortal
from tests.portal.conftest import FAST

BASE = "https://portal.example.org/fhir"


@pytest.fixture
def oauth_portal(tmp_path: Path) -> Iterator[ReferencePortal]:
    with ReferencePortal.start(tmp_path / "portal.sqlite3", client_id="workstation",
                               client_secret="s3cret") as p:
        yield p


def test_keyring_backend_is_the_test_file_backend() -> None:
    """conftest points keyring at a file in tmp; never the real user keyring."""
    assert type(keyring.get_keyring()).__name__ == "PlaintextKeyring"


def test_token_is_kept_in_the_keyring_only(tmp_path: Path) -> None:
    auth.store_token(BASE + "/", "tok-123")
    assert auth.load_token(BASE) == "tok-123"
    assert keyring.get_password(auth.KEYRING_SERVICE, f"token@{BASE}") == "tok-123"
    settings = auth.PortalSettings(base_url=BASE + "/")
    path = settings.save(tmp_path)
    text = path.read_text()
    assert "tok-123" not in text
    assert json.loads(text)["base_url"] == BASE
    loaded = auth.PortalSettings.load(tmp_path)
    assert loaded is not None and loaded.base_url == BASE
    provider = auth.provider_from_settings(loaded)
    assert provider.token() == "tok-123"
    auth.store_token(BASE, "tok-456")  # login again meanwhile: a 401 picks it up
    assert provider.refresh() is True and provider.token() == "tok-456"
    assert provider.refresh() is False
    auth.forget(BASE)
    assert auth.load_token(BASE) is None
    with pytest.raises(PortalAuthError, match="login"):
        auth.provider_from_settings(loaded)


@pytest.mark.parametrize("url", ["portal.example.org/fhir", "ftp://x/fhir",
                                 "https://user:pw@x/fhir", "https:///fhir",
                                 "https://x/fhir?a=1"])
def test_bad_portal_addresses_are_refused(url: str) -> None:
    with pytest.raises(InputError):
        auth.normalize_base_url(url)


def test_origin_comparison() -> None:
    assert auth.origin_of("https://Portal.example.org/fhir") == ("https", "portal.example.org",
                                                                 443)
    assert auth.origin_of("http://h:8080/x") == ("http", "h", 8080)
    assert auth.origin_of("https://h/x") != auth.origin_of("http://h/x")


def test_damaged_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / auth.SETTINGS_FILE).write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        auth.PortalSettings.load(tmp_path)
    assert auth.PortalSettings.load(tmp_path / "nowhere") is None


def test_oauth_client_credentials_against_the_reference_portal(
        oauth_portal: ReferencePortal) -> None:
    assert oauth_portal.token_url is not None
    tokens = auth.ClientCredentials(oauth_portal.token_url, "workstation", "s3cret")
    with PortalClient(oauth_portal.base_url, tokens, retry=FAST) as c:
        assert next(iter(c.search_pages("Task", {"status": "requested"}))).resources == []
        first = tokens.token()
        oauth_portal.expire_tokens()  # the portal forgets the token: a 401, one refresh
        oauth_portal.clear_log()
        list(c.search_pages("Task", {"status": "requested"}))
        assert tokens.token() != first
    statuses = [(r.target.split("?")[0], r.status) for r in oauth_portal.request_log]
    assert statuses == [("/fhir/Task", 401), ("/oauth/token", 200), ("/fhir/Task", 200)]


def test_oauth_wrong_secret_is_rejected_credentials(oauth_portal: ReferencePortal) -> None:
    assert oauth_portal.token_url is not None
    tokens = auth.ClientCredentials(oauth_portal.token_url, "workstation", "wrong")
    with PortalClient(oauth_portal.base_url, tokens, retry=FAST) as c, \
            pytest.raises(PortalAuthError, match="rejected the credentials"):
        c.read("Task", "1")
    assert all(r.target.startswith("/oauth/token") for r in oauth_portal.request_log)


def test_oauth_settings_keep_the_secret_in_the_keyring(tmp_path: Path,
                                                       oauth_portal: ReferencePortal) -> None:
    settings = auth.PortalSettings(base_url=oauth_portal.base_url,
                                   auth=auth.AUTH_CLIENT_CREDENTIALS,
                                   token_url=oauth_portal.token_url, client_id="workstation")
    auth.store_client_secret(settings.base_url, "s3cret")
    settings.save(tmp_path)
    assert "s3cret" not in (tmp_path / auth.SETTINGS_FILE).read_text()
    loaded = auth.PortalSettings.load(tmp_path)
    assert loaded is not None
    provider = auth.provider_from_settings(loaded)
    with PortalClient(loaded.base_url, provider, retry=FAST) as c:
        with pytest.raises(Exception) as err:
            c.read("Task", "nope")
        assert getattr(err.value, "status", None) == 404  # authorised, just not found
    with pytest.raises(InputError):
        auth.PortalSettings(base_url=BASE, auth=auth.AUTH_CLIENT_CREDENTIALS)
