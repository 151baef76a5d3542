"""Portal credentials: a bearer token or OAuth2 client credentials.

Secrets (the token, the client secret) live only in the operating system's
keyring, under the service name :data:`KEYRING_SERVICE` and a key that names
the portal's base URL. The portal's address and the non-secret OAuth settings
are kept in ``portal.json`` in the data folder (:class:`PortalSettings`).

A :class:`TokenProvider` hands the client the current token and, after a 401,
gets one fresh token (:meth:`TokenProvider.refresh`); the client never asks twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from derm_workstation.core.errors import DermError, InputError
from derm_workstation.portal.errors import PortalAuthError, PortalUnavailableError

log = logging.getLogger(__name__)

KEYRING_SERVICE = "derm-workstation"
SETTINGS_FILE = "portal.json"
SETTINGS_SCHEMA = 1
AUTH_BEARER = "bearer"
AUTH_CLIENT_CREDENTIALS = "client_credentials"


class KeyringUnavailableError(DermError):
    """The operating system keyring cannot be used."""


def normalize_base_url(url: str) -> str:
    """Check a portal base URL (http/https, a host, no credentials) and drop a trailing '/'."""
    raw = (url or "").strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"'{raw}' is not a portal address; give the FHIR base URL, "
            "e.g. https://portal.example.org/fhir"
        )
    if parts.username or parts.password:
        raise InputError("Do not put credentials in the portal address; use login instead.")
    if parts.query or parts.fragment:
        raise InputError("The portal address must not have a query or fragment.")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in; compared case-insensitively."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "").lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, host, port


# ----------------------------------------------------------------------------- settings


@dataclass
class PortalSettings:
    """The portal this workstation syncs with. Never holds a secret."""

    base_url: str
    auth: str = AUTH_BEARER
    token_url: str | None = None
    client_id: str | None = None
    scope: str | None = None
    #: Reference used as Task.owner / Communication.sender, e.g. "Practitioner/123";
    #: empty means a logical reference by the workstation user's name.
    practitioner: str | None = None
    #: A CA bundle file for a clinic's own certificate authority (TLS is always verified).
    ca_bundle: str | None = None
    sync_interval_s: int = 300
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_url = normalize_base_url(self.base_url)
        if self.auth not in (AUTH_BEARER, AUTH_CLIENT_CREDENTIALS):
            raise InputError(f"Unknown portal authentication '{self.auth}'.")
        if self.auth == AUTH_CLIENT_CREDENTIALS and not (self.token_url and self.client_id):
            raise InputError("OAuth2 client credentials need a token URL and a client id.")

    @staticmethod
    def path(data_dir: Path) -> Path:
        return Path(data_dir) / SETTINGS_FILE

    @classmethod
    def load(cls, data_dir: Path) -> PortalSettings | None:
        """The saved settings, or None when the workstation was never connected."""
        path = cls.path(data_dir)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(f"The portal settings file {path} cannot be read: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("base_url"), str):
            raise InputError(f"The portal settings file {path} is damaged; log in again.")
        known = {k: raw[k] for k in (
            "base_url", "auth", "token_url", "client_id", "scope", "practitioner", "ca_bundle",
            "sync_interval_s",
        ) if k in raw}
        return cls(**known)

    def save(self, data_dir: Path) -> Path:
        path = self.path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"schema_version": SETTINGS_SCHEMA, **asdict(self)}
        data.pop("extra", None)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
        return path


# ----------------------------------------------------------------------------- keyring


def _key(base_url: str, what: str) -> str:
    return f"{what}@{normalize_base_url(base_url)}"


def _keyring() -> Any:
    try:
        import keyring
    except Exception as exc:  # pragma: no cover - keyring is a dependency
        raise KeyringUnavailableError(f"The system keyring cannot be used: {exc}") from exc
    return keyring


def _kr_get(key: str) -> str | None:
    kr = _keyring()
    try:
        value = kr.get_password(KEYRING_SERVICE, key)
    except Exception as exc:
        raise KeyringUnavailableError(
            f"The system keyring cannot be read ({type(exc).__name__}); "
            "portal credentials are kept only there."
        ) from exc
    return value if isinstance(value, str) and value else None


def _kr_set(key: str, secret: str) -> None:
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, key, secret)
    except Exception as exc:
        raise KeyringUnavailableError(
            f"The system keyring cannot store the portal credentials ({type(exc).__name__}). "
            "They are never written to a file."
        ) from exc


def _kr_delete(key: str) -> None:
    kr = _keyring()
    try:
        kr.delete_password(KEYRING_SERVICE, key)
    except Exception:  # absent already, or no backend: nothing to forget
        log.debug("nothing to delete in the keyring for this portal")


def store_token(base_url: str, token: str) -> None:
    token = token.strip()
    if not token:
        raise InputError("The token is empty.")
    _kr_set(_key(base_url, "token"), token)


def load_token(base_url: str) -> str | None:
    return _kr_get(_key(base_url, "token"))


def store_client_secret(base_url: str, secret: str) -> None:
    secret = secret.strip()
    if not secret:
        raise InputError("The client secret is empty.")
    _kr_set(_key(base_url, "client-secret"), secret)


def load_client_secret(base_url: str) -> str | None:
    return _kr_get(_key(base_url, "client-secret"))


def forget(base_url: str) -> None:
    """Remove this portal's secrets from the keyring."""
    _kr_delete(_key(base_url, "token"))
    _kr_delete(_key(base_url, "client-secret"))


def save_login(data_dir: Path, settings: PortalSettings, secret: str) -> Path:
    """Keep a portal for later syncs (what ``derm-workstation login`` and the window's
    "Connect to portal" both do): the secret (token, or OAuth2 client secret) goes to
    the keyring, the address and non-secret settings to ``portal.json``. Secrets of a
    portal saved before at another address are forgotten. Returns the settings file."""
    if settings.auth == AUTH_CLIENT_CREDENTIALS:
        store_client_secret(settings.base_url, secret)
    else:
        store_token(settings.base_url, secret)
    try:
        previous = PortalSettings.load(data_dir)
    except InputError:  # a damaged file is replaced
        previous = None
    path = settings.save(data_dir)
    if previous is not None and previous.base_url != settings.base_url:
        forget(previous.base_url)
    elif previous is not None and previous.auth != settings.auth:
        # same portal, other way of signing in: drop the secret of the old way
        _kr_delete(_key(settings.base_url, "client-secret" if settings.auth == AUTH_BEARER
                        else "token"))
    log.info("portal saved (%s)", settings.auth)
    return path


def disconnect(data_dir: Path) -> str | None:
    """Forget the saved portal: its secrets leave the keyring and ``portal.json`` is
    removed. Returns the address that was forgotten (None: none was saved)."""
    path = PortalSettings.path(data_dir)
    try:
        saved = PortalSettings.load(data_dir)
    except InputError:
        saved = None
    if saved is not None:
        forget(saved.base_url)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InputError(f"The portal settings file {path} cannot be removed: "
                         f"{exc.strerror or exc}.") from exc
    log.info("portal settings forgotten")
    return saved.base_url if saved is not None else None


def portal_host(base_url: str | None) -> str:
    """The host (and port) of a portal address, for display: no path, never credentials."""
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


# ----------------------------------------------------------------------------- providers


class TokenProvider(Protocol):
    def token(self) -> str | None:
        """The token to send now (None: send no Authorization header)."""

    def refresh(self) -> bool:
        """Try once to get a different, fresh token; True when one is available."""


class StaticToken:
    """A token entered once (kept in the keyring) or given for one run.

    ``reload`` (e.g. reading the keyring again) lets a 401 pick up a token that
    ``login`` stored meanwhile; without it a 401 is final.
    """

    def __init__(self, token: str | None, reload: Any = None) -> None:
        self._token = token.strip() if token else None
        self._reload = reload
        self._lock = threading.Lock()

    def token(self) -> str | None:
        return self._token

    def refresh(self) -> bool:
        if self._reload is None:
            return False
        with self._lock:
            fresh = self._reload()
            if fresh and fresh != self._token:
                self._token = fresh
                return True
            return False


class ClientCredentials:
    """OAuth2 client-credentials grant (RFC 6749 §4.4) against a token URL.

    The secret goes only to the token URL. The token is cached until shortly
    before it expires.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, *,
                 scope: str | None = None, timeout: float = 15.0,
                 verify: bool | str = True, session: Any = None) -> None:
        import requests

        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout = timeout
        self.verify = verify
        self._session = session or requests.Session()
        self._session.trust_env = True
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> str:
        import requests

        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        try:
            resp = self._session.post(
                self.token_url, data=data, auth=(self.client_id, self._secret),
                headers={"Accept": "application/json"}, timeout=self.timeout,
                verify=self.verify, allow_redirects=False,
            )
            if resp.status_code in (400, 401):
                # Some servers want the client credentials in the form instead of Basic.
                form = {**data, "client_id": self.client_id, "client_secret": self._secret}
                resp = self._session.post(
                    self.token_url, data=form, headers={"Accept": "application/json"},
                    timeout=self.timeout, verify=self.verify, allow_redirects=False,
                )
        except requests.RequestException as exc:
            raise PortalUnavailableError(
                f"The portal's token service could not be reached ({type(exc).__name__})."
            ) from exc
        if resp.status_code >= 500:
            raise PortalUnavailableError(
                f"The portal's token service failed (HTTP {resp.status_code})."
            )
        if resp.status_code != 200:
            raise PortalAuthError(
                "The portal rejected the credentials: its token service refused the client "
                f"credentials (HTTP {resp.status_code}). Check the client id and secret "
                "(derm-workstation login)."
            )
        try:
            body = resp.json()
            token = body["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError("empty access_token")
        except (ValueError, KeyError, TypeError) as exc:
            raise PortalAuthError(
                "The portal's token service answered without a usable access token."
            ) from exc
        try:
            expires_in = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600.0
        self._expires_at = time.monotonic() + max(10.0, expires_in - 30.0)
        self._token = token
        return token

    def token(self) -> str | None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                return self._fetch()
            return self._token

    def refresh(self) -> bool:
        with self._lock:
            old = self._token
            try:
                self._fetch()
            except PortalAuthError:
                return False
            return self._token is not None and (old is None or self._token != old)


def provider_from_settings(settings: PortalSettings,
                           token_override: str | None = None) -> TokenProvider:
    """The token provider for saved settings; ``token_override`` (e.g. from stdin) wins."""
    if token_override is not None:
        return StaticToken(token_override)
    if settings.auth == AUTH_CLIENT_CREDENTIALS:
        assert settings.token_url and settings.client_id
        secret = load_client_secret(settings.base_url)
        if not secret:
            raise PortalAuthError(
                "No client secret for this portal in the keyring; run derm-workstation login."
            )
        return ClientCredentials(settings.token_url, settings.client_id, secret,
                                 scope=settings.scope,
                                 verify=settings.ca_bundle or True)
    token = load_token(settings.base_url)
    if not token:
        raise PortalAuthError(
            "No token for this portal in the keyring; run derm-workstation login."
        )
    return StaticToken(token, reload=lambda: load_token(settings.base_url))


__all__ = [
    "AUTH_BEARER",
    "AUTH_CLIENT_CREDENTIALS",
    "KEYRING_SERVICE",
    "ClientCredentials",
    "KeyringUnavailableError",
    "PortalSettings",
    "StaticToken",
    "TokenProvider",
    "disconnect",
    "forget",
    "load_client_secret",
    "load_token",
    "normalize_base_url",
    "origin_of",
    "portal_host",
    "provider_from_settings",
    "save_login",
    "store_client_secret",
    "store_token",
]
