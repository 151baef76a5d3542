"""Reference portal: bearer tokens and the OAuth2 client-credentials endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from derm_workstation.portal.reference.server import ReferencePortal

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[ReferencePortal]:
    with ReferencePortal.start(tmp_path / "p.sqlite3", token=TOKEN) as p:
        p.store.create({"resourceType": "Task", "status": "requested", "intent": "order"})
        yield p


@pytest.fixture
def oauth(tmp_path: Path) -> Iterator[ReferencePortal]:
    with ReferencePortal.start(tmp_path / "p.sqlite3", client_id="workstation",
                               client_secret="client-secret") as p:
        yield p


def _token(portal: ReferencePortal, **form: str) -> requests.Response:
    assert portal.token_url is not None
    data = {"grant_type": "client_credentials", "client_id": "workstation",
            "client_secret": "client-secret", **form}
    return requests.post(portal.token_url, data=data, timeout=30)


def test_requests_without_the_token_get_401(locked: ReferencePortal) -> None:
    url = f"{locked.base_url}/Task"
    r = requests.get(url, timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "rejected the credentials" in r.json()["issue"][0]["diagnostics"]
    r = requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = requests.get(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30)
    assert r.status_code == 401
    r = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.json()["total"] == 1
    # writes are guarded too; metadata is public
    r = requests.post(url, json={"resourceType": "Task"}, timeout=30)
    assert r.status_code == 401 and locked.store.count() == 1
    assert requests.get(f"{locked.base_url}/metadata", timeout=30).status_code == 200


def test_oauth_client_credentials_flow(oauth: ReferencePortal) -> None:
    url = f"{oauth.base_url}/Task"
    assert requests.get(url, timeout=30).status_code == 401
    r = _token(oauth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert r.headers["Cache-Control"] == "no-store"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert requests.get(url, headers=auth, timeout=30).status_code == 200
    # HTTP Basic client authentication works as well
    r = requests.post(oauth.token_url or "", data={"grant_type": "client_credentials"},
                      auth=("workstation", "client-secret"), timeout=30)
    assert r.status_code == 200
    # revoked (e.g. expired) tokens are refused until a new one is fetched
    oauth.expire_tokens()
    assert requests.get(url, headers=auth, timeout=30).status_code == 401
    fresh = {"Authorization": f"Bearer {_token(oauth).json()['access_token']}"}
    assert requests.get(url, headers=fresh, timeout=30).status_code == 200
    oauth.token_lifetime = 0
    dead = {"Authorization": f"Bearer {_token(oauth).json()['access_token']}"}
    assert requests.get(url, headers=dead, timeout=30).status_code == 401


def test_oauth_errors(oauth: ReferencePortal) -> None:
    r = _token(oauth, client_secret="guess")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = _token(oauth, grant_type="password")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = requests.post(oauth.token_url or "", json={"grant_type": "client_credentials"},
                      timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert requests.get(oauth.token_url or "", timeout=30).status_code == 405


def test_capability_statement_names_the_token_url(oauth: ReferencePortal) -> None:
    cs = requests.get(f"{oauth.base_url}/metadata", timeout=30).json()
    ext = cs["rest"][0]["security"]["extension"][0]
    assert ext["extension"][0] == {"url": "token", "valueUri": oauth.token_url}


def test_no_token_endpoint_without_a_client(locked: ReferencePortal) -> None:
    assert locked.token_url is None
    r = requests.post(f"{locked.origin}/oauth/token",
                      data={"grant_type": "client_credentials"}, timeout=30)
    assert r.status_code == 404
