"""FHIR R4 REST client for the patient portal (PORTAL_CONTRACT.md, "Connection").

* One pooled :class:`requests.Session`; a connect and a read timeout on every request;
  TLS verified (optionally against a clinic CA bundle).
* Retries: 429/503 wait for ``Retry-After`` (seconds or an HTTP date); other 5xx,
  connection errors, timeouts and bodies cut short retry with exponential backoff and
  jitter, a bounded number of times; other 4xx raise
  :class:`~derm_workstation.portal.errors.PortalRequestError` with the server's
  OperationOutcome text and are never retried (412 is
  :class:`~derm_workstation.portal.errors.PortalConflictError`).
* A 401 from the portal triggers exactly one token refresh; a second 401 (or a refresh
  that yields nothing new) raises :class:`PortalAuthError` and the client refuses
  further requests instead of looping.
* The ``Authorization`` header is attached only to requests whose origin (scheme, host,
  port) is the portal's. Redirects are followed by hand so every hop is checked; a
  write is never redirected to another origin.
* Photos stream from the Attachment URL into the image store, verified against
  ``Attachment.size`` and ``Attachment.hash`` (base64 SHA-1), whether the server
  answers with raw bytes or with a FHIR ``Binary`` JSON.

Nothing here logs patient data: log lines carry methods, resource types, ids and status
codes only.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from derm_workstation import __version__
from derm_workstation.core.imagestore import ImageStore
from derm_workstation.portal.auth import TokenProvider, normalize_base_url, origin_of
from derm_workstation.portal.binary_json import binary_json_chunks
from derm_workstation.portal.errors import (
    DownloadError,
    PortalAuthError,
    PortalConflictError,
    PortalDataError,
    PortalError,
    PortalRequestError,
    PortalUnavailableError,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 256 * 1024
#: Photo bodies are read in large pieces: hashing and writing then run outside the GIL
#: for most of the transfer (measured in benchmarks/sync_pull.py).
PHOTO_CHUNK = 1024 * 1024
#: How much of a photo's start :class:`Downloaded` keeps, for a header check without
#: reading the file back (a JPEG's frame header and EXIF are in its first few KB).
HEAD_BYTES = 128 * 1024
#: Largest JSON body accepted (a search page or a resource).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Largest photo accepted (the image decoder's own limit).
MAX_PHOTO_BYTES = 200 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try one request."""

    #: Tries in all for network errors, 5xx, 429/503 (the first try included).
    max_tries: int = 5
    #: Tries in all when the body itself was unusable (malformed JSON, wrong type,
    #: a photo failing verification): a lying network may fix itself, a broken
    #: server will not.
    data_tries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: Longest ``Retry-After`` slept through; a longer one gives up (and is reported).
    max_retry_after: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with "equal jitter" before try ``attempt + 1``."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** max(0, attempt - 1)))
        return cap / 2 + rng.uniform(0, cap / 2)


@dataclass(frozen=True)
class AttachmentRef:
    """Where a photo's bytes are and what they must be (from ``Media.content``)."""

    url: str | None = None
    data: str | None = None  # inline base64
    content_type: str | None = None
    size: int | None = None
    sha1: str | None = None  # Attachment.hash: base64 SHA-1 (hex tolerated)


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int
    #: The first :data:`HEAD_BYTES` of the photo (all of it when smaller).
    head: bytes = b""
    #: Whether the bytes were checked against the portal's own ``size`` or ``hash``.
    verified: bool = False


@dataclass(frozen=True)
class WriteResult:
    """The outcome of a create or update."""

    resource_type: str
    id: str | None
    version: str | None
    created: bool
    status: int
    resource: dict[str, Any] | None = None


@dataclass(frozen=True)
class Page:
    """One page of search results."""

    resources: list[dict[str, Any]]
    next_url: str | None
    #: Entries that were not the searched type (ignored, counted for warnings).
    skipped: int = 0
    total: int | None = None
    #: The server's clock (HTTP ``Date``) when it answered, if it said.
    server_date: datetime | None = None


@dataclass
class ClientStats:
    requests: int = 0
    bytes_downloaded: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, bytes_downloaded: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_downloaded += bytes_downloaded
            self.retries += retries


class Slot:
    """One place of a semaphore, taken and given back at most once per try."""

    def __init__(self, sem: threading.Semaphore | None) -> None:
        self._sem = sem
        self._held = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self._sem is None:
            return
        with self._lock:
            if self._held:
                return
        self._sem.acquire()
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held or self._sem is None:
                return
            self._held = False
        self._sem.release()


class _RetryableData(PortalDataError):
    """An unusable body that may be a transmission problem: tried ``data_tries`` times."""


def _parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _server_date(resp: requests.Response) -> datetime | None:
    raw = resp.headers.get("Date")
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def outcome_text(body: bytes | str, limit: int = 400) -> str:
    """The human text of an OperationOutcome (diagnostics, details), else a short body."""
    if isinstance(body, bytes):
        body = body[:200_000].decode("utf-8", errors="replace")
    text = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in data.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details")
            if not isinstance(details, dict):
                details = {}
            msg = issue.get("diagnostics") or details.get("text") or issue.get("code") or ""
            if isinstance(msg, str) and msg.strip():
                parts.append(msg.strip())
        text = "; ".join(parts)
    elif isinstance(data, dict) and isinstance(data.get("error_description"), str):
        text = data["error_description"]
    elif body.strip() and not body.lstrip().startswith(("<", "{", "[")):
        text = " ".join(body.split())
    return text[:limit]


def parse_etag(value: str | None) -> str | None:
    """``W/"3"`` → ``3``."""
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"') or None


def parse_location(location: str | None) -> tuple[str | None, str | None]:
    """(id, version) from a Location like ``…/Communication/12/_history/1``."""
    if not location:
        return None, None
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-3], parts[-1]
    if len(parts) >= 2:
        return parts[-1], None
    return None, None


def _sha1_matches(digest: bytes, expected: str) -> bool:
    exp = expected.strip()
    try:
        raw = base64.b64decode(exp, validate=True)
        if len(raw) == 20:
            return raw == digest
    except (binascii.Error, ValueError):
        pass
    return exp.lower() == digest.hex()


class _PortalAuth(AuthBase):
    """Adds the bearer token only when the request goes to the portal's origin."""

    def __init__(self, client: PortalClient) -> None:
        self.client = client

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        tokens = self.client.tokens
        if tokens is not None and r.url and origin_of(r.url) == self.client.origin:
            token = tokens.token()
            if token:
                r.headers["Authorization"] = f"Bearer {token}"
        return r


class PortalClient:
    """The workstation's only way to talk to the portal. Safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider | None,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        download_deadline: float = 600.0,
        pool_size: int = 16,
        verify: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.origin = origin_of(self.base_url)
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.timeout = (connect_timeout, read_timeout)
        self.download_deadline = download_deadline
        self.verify = verify
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._refresh_lock = threading.Lock()
        self._auth_failed: str | None = None
        self.stats = ClientStats()
        #: Called with (method, url) for every HTTP request sent (tests count them).
        self.on_request: list[Callable[[str, str], None]] = []
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = _PortalAuth(self)
        self.session.headers["User-Agent"] = f"derm-workstation/{__version__}"
        # The environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is honoured, but
        # read once per origin instead of on every request (it cost ~1 ms a request);
        # ~/.netrc is never consulted: credentials come from the keyring only.
        self.session.trust_env = False
        self._proxies: dict[tuple[str, str, int], dict[str, str]] = {}
        if verify is True:
            import os

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                self.verify = bundle

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def url_for(self, path_or_url: str) -> str:
        """An absolute URL: absolute ones as given, others relative to the base URL."""
        try:
            scheme = urlsplit(path_or_url).scheme
        except ValueError as exc:
            raise PortalDataError("The portal gave an address that cannot be requested.") from exc
        if scheme:
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def is_portal_url(self, url: str) -> bool:
        return origin_of(url) == self.origin

    def _send(self, method: str, url: str, *, params: Any, headers: dict[str, str],
              body: bytes | None, stream: bool) -> requests.Response:
        """One request, following redirects by hand (credentials only to the portal)."""
        for _hop in range(6):
            for hook in self.on_request:
                hook(method, url)
            self.stats.add(requests=1)
            resp = self.session.request(
                method, url, params=params, headers=headers, data=body,
                timeout=self.timeout, allow_redirects=False, stream=stream, verify=self.verify,
                proxies=self._proxies_for(url),
            )
            if resp.status_code not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            target = urljoin(resp.url, resp.headers["Location"])
            resp.close()
            if method not in ("GET", "HEAD") and origin_of(target) != origin_of(url):
                raise PortalRequestError(
                    f"The portal redirected a {method} to another server "
                    f"({urlsplit(target).netloc}); nothing was sent there.",
                    resp.status_code,
                )
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
            url, params = target, None
        raise PortalRequestError("The portal redirected too many times.", 310)

    def _proxies_for(self, url: str) -> dict[str, str]:
        key = origin_of(url)
        found = self._proxies.get(key)
        if found is None:
            found = requests.utils.get_environ_proxies(url)
            self._proxies[key] = found
        return found

    def _pause(self, seconds: float, slot: Slot) -> None:
        slot.release()
        self._sleep(seconds)

    def _refresh(self, sent: str | None) -> bool:
        """One token refresh for a 401 (skipped when another thread already did it)."""
        if self.tokens is None:
            return False
        with self._refresh_lock:
            try:
                current = self.tokens.token()
            except PortalAuthError:
                return False
            if current and current != sent:
                return True
            return self.tokens.refresh()

    def _sent_token(self) -> str | None:
        if self.tokens is None:
            return None
        try:
            return self.tokens.token()
        except PortalError:
            return None

    def exchange(
        self,
        method: str,
        url: str,
        read: Callable[[requests.Response], T],
        *,
        params: Any = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
        what: str = "",
        slot: Slot | None = None,
    ) -> T:
        """Send a request with the contract's retry, auth and error rules; ``read`` the body.

        ``read`` runs inside the retry loop, so a body cut short, malformed JSON or a
        download failing verification are retried like the request itself. ``slot``
        (photo downloads) is held from sending until ``read`` gives it back or the try ends.
        """
        slot = slot or Slot(None)
        try:
            return self._exchange(method, url, read, params=params, headers=headers, body=body,
                                  stream=stream, what=what, slot=slot)
        finally:
            slot.release()

    def _exchange(self, method: str, url: str, read: Callable[[requests.Response], T], *,
                  params: Any, headers: dict[str, str] | None, body: bytes | None,
                  stream: bool, what: str, slot: Slot) -> T:
        url = self.url_for(url)
        hdrs = {"Accept": FHIR_JSON, **(headers or {})}
        what = what or f"{method} {urlsplit(url).path}"
        refreshed = False
        tries = 0
        data_tries = 0
        while True:
            if self._auth_failed:
                raise PortalAuthError(self._auth_failed)
            tries += 1
            if tries > 1:
                self.stats.add(retries=1)
            sent = self._sent_token()
            slot.acquire()
            try:
                resp = self._send(method, url, params=params, headers=hdrs, body=body,
                                  stream=stream)
            except requests.exceptions.SSLError as exc:
                raise PortalUnavailableError(
                    f"The portal's certificate at {self.host} could not be verified; "
                    "nothing was sent. (A clinic CA bundle can be set in the portal settings.)"
                ) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                    requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader,
                    ValueError) as exc:
                raise PortalDataError(
                    f"The portal gave an address that cannot be requested ({type(exc).__name__})."
                ) from exc
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                reason = _net_reason(exc)
                log.info("portal %s failed (%s), try %d", what, reason, tries)
                if tries >= self.retry.max_tries:
                    raise PortalUnavailableError(
                        f"The portal at {self.host} could not be reached ({reason})."
                    ) from exc
                self._pause(self.retry.backoff(tries, self._rng), slot)
                continue
            try:
                status = resp.status_code
                if status == 401 and self.is_portal_url(resp.url or url):
                    if not refreshed and self._refresh(sent):
                        refreshed = True
                        tries -= 1
                        continue
                    self._auth_failed = (
                        f"The portal rejected the credentials (HTTP 401 from {self.host}). "
                        "Log in again: derm-workstation login --portal-url "
                        f"{self.base_url} --token-stdin"
                    )
                    raise PortalAuthError(self._auth_failed)
                if status >= 500 or status == 429:
                    text = _small_outcome(resp)
                    wait = (_parse_retry_after(resp.headers.get("Retry-After"))
                            if status in (429, 503) else None)
                    busy = "is busy" if status in (429, 503) else "failed"
                    msg = f"The portal {busy} (HTTP {status}{': ' + text if text else ''})."
                    log.info("portal %s -> %d, try %d", what, status, tries)
                    if tries >= self.retry.max_tries or (
                        wait is not None and wait > self.retry.max_retry_after
                    ):
                        raise PortalUnavailableError(msg, retry_after=wait)
                    self._pause(wait if wait is not None
                                else self.retry.backoff(tries, self._rng), slot)
                    continue
                if status == 412:
                    text = _small_outcome(resp)
                    raise PortalConflictError(
                        "The portal refused the change because the record changed meanwhile "
                        f"(HTTP 412{': ' + text if text else ''}).", 412, text,
                    )
                if 400 <= status < 500:
                    text = _small_outcome(resp)
                    raise PortalRequestError(
                        f"The portal refused {what} (HTTP {status}"
                        f"{': ' + text if text else ''}).", status, text,
                    )
                if status >= 300:
                    raise PortalRequestError(
                        f"The portal answered {what} with HTTP {status}.", status
                    )
                return read(resp)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                reason = _net_reason(exc)
                log.info("portal %s body failed (%s), try %d", what, reason, tries)
                if tries >= self.retry.max_tries:
                    raise PortalUnavailableError(
                        f"The portal at {self.host} stopped answering mid-way ({reason})."
                    ) from exc
                self._pause(self.retry.backoff(tries, self._rng), slot)
            except (_RetryableData, DownloadError) as exc:
                data_tries += 1
                log.info("portal %s gave an unusable body (%s), try %d",
                         what, type(exc).__name__, data_tries)
                if data_tries >= self.retry.data_tries or tries >= self.retry.max_tries:
                    raise
                self._pause(self.retry.backoff(tries, self._rng), slot)
            finally:
                resp.close()
                slot.release()

    # ------------------------------------------------------------------ JSON

    @staticmethod
    def _json_reader(
        expected: str | None,
    ) -> Callable[[requests.Response], tuple[dict[str, Any], datetime | None]]:
        def read(resp: requests.Response) -> tuple[dict[str, Any], datetime | None]:
            raw = bytearray()
            for chunk in resp.iter_content(_CHUNK):
                raw += chunk
                if len(raw) > MAX_JSON_BYTES:
                    raise PortalDataError("The portal sent an unexpectedly large answer.")
            try:
                data = json.loads(bytes(raw))
            except ValueError as exc:
                raise _RetryableData(
                    "The portal sent malformed JSON" + (f" for a {expected}." if expected else ".")
                ) from exc
            if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                raise _RetryableData("The portal sent JSON that is not a FHIR resource.")
            if expected and data["resourceType"] != expected:
                raise _RetryableData(
                    f"The portal sent a {data['resourceType']} where a {expected} was expected."
                )
            return data, _server_date(resp)

        return read

    def get_json(self, url: str, *, params: Any = None,
                 expected: str | None = None) -> dict[str, Any]:
        data, _ = self.exchange("GET", url, self._json_reader(expected), params=params,
                                what=f"GET {expected or 'resource'}")
        return data

    def read(self, resource_type: str, rid: str) -> dict[str, Any]:
        """GET ``<type>/<id>``; the answer must be that type."""
        return self.get_json(f"{resource_type}/{rid}", expected=resource_type)

    def read_reference(self, reference: str, expected: str) -> dict[str, Any]:
        """GET a reference (relative ``Patient/1`` or absolute URL)."""
        return self.get_json(self.url_for(reference), expected=expected)

    def search_pages(self, resource_type: str, params: dict[str, str]) -> Iterator[Page]:
        """Search, following ``link[relation=next]`` page by page."""
        url: str | None = self.url_for(resource_type)
        query: dict[str, str] | None = dict(params)
        seen: set[str] = set()
        while url:
            data, server_date = self.exchange("GET", url, self._json_reader("Bundle"),
                                              params=query, what=f"search {resource_type}")
            resources: list[dict[str, Any]] = []
            skipped = 0
            for entry in data.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                mode = (entry.get("search") or {}).get("mode", "match") \
                    if isinstance(entry, dict) and isinstance(entry.get("search"), dict) \
                    else "match"
                if mode not in ("match", None):
                    continue
                if isinstance(res, dict) and res.get("resourceType") == resource_type:
                    resources.append(res)
                else:
                    skipped += 1
            nxt = None
            for link in data.get("link") or []:
                if isinstance(link, dict) and link.get("relation") == "next" \
                        and isinstance(link.get("url"), str) and link["url"]:
                    try:
                        nxt = urljoin(self.base_url + "/", link["url"])
                    except ValueError as exc:
                        raise PortalDataError(
                            "The portal's next-page link cannot be followed.") from exc
            if nxt is not None:
                if nxt in seen:
                    raise PortalDataError("The portal's search paging goes round in a circle.")
                seen.add(nxt)
            total = data.get("total") if isinstance(data.get("total"), int) else None
            yield Page(resources, nxt, skipped, total, server_date)
            url, query = nxt, None

    def search_all(self, resource_type: str, params: dict[str, str],
                   max_pages: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, page in enumerate(self.search_pages(resource_type, params)):
            out.extend(page.resources)
            if i + 1 >= max_pages and page.next_url:
                raise PortalDataError(
                    f"The portal's {resource_type} search went on for more than {max_pages} "
                    "pages; it was not read to the end."
                )
        return out

    # ------------------------------------------------------------------ writes

    def _write_reader(self, resource_type: str) -> Callable[[requests.Response], WriteResult]:
        def read(resp: requests.Response) -> WriteResult:
            body: dict[str, Any] | None = None
            raw = resp.content
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict) and parsed.get("resourceType") == resource_type:
                    body = parsed
            rid, version = parse_location(resp.headers.get("Location")
                                          or resp.headers.get("Content-Location"))
            if body is not None:
                rid = body.get("id") if isinstance(body.get("id"), str) else rid
                meta = body.get("meta")
                if isinstance(meta, dict) and isinstance(meta.get("versionId"), str):
                    version = meta["versionId"]
            version = parse_etag(resp.headers.get("ETag")) or version
            return WriteResult(resource_type, rid, version, resp.status_code == 201,
                               resp.status_code, body)

        return read

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> WriteResult:
        """POST a resource; with ``if_none_exist`` a conditional create (200 = it existed)."""
        rtype = resource["resourceType"]
        headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8",
                   "Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        body = json.dumps(resource, ensure_ascii=False).encode("utf-8")
        return self.exchange("POST", rtype, self._write_reader(rtype), headers=headers,
                             body=body, what=f"create {rtype}")

    def update(self, resource: dict[str, Any], *, if_match: str | None) -> WriteResult:
        """PUT ``<type>/<id>``, with ``If-Match: W/"<version>"`` when a version is given."""
        rtype = resource["resourceType"]
        rid = resource["id"]
        headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8",
                   "Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = f'W/"{if_match}"'
        body = json.dumps(resource, ensure_ascii=False).encode("utf-8")
        return self.exchange("PUT", f"{rtype}/{rid}", self._write_reader(rtype),
                             headers=headers, body=body, what=f"update {rtype}")

    # ------------------------------------------------------------------ photos

    def download(self, att: AttachmentRef, store: ImageStore, *,
                 max_bytes: int = MAX_PHOTO_BYTES,
                 slots: threading.Semaphore | None = None,
                 durable: bool = True) -> Downloaded:
        """Stream a photo into the image store, verified by size and SHA-1 when given.

        Raises :class:`DownloadError` (nothing stored) when the bytes do not match, and
        the usual portal errors when it cannot be fetched at all. ``slots`` bounds the
        concurrent transfers: a slot is held while bytes come over the network and given
        back before the image store's fsync and rename, so the disk work of one photo
        overlaps the transfer of the next. ``durable=False`` leaves the fsync to the
        caller (:meth:`ImageStore.make_durable` before anything refers to the photo).
        """
        slot = Slot(slots)
        if att.size is not None and att.size > max_bytes:
            raise DownloadError(
                f"The photo is larger ({att.size} bytes) than the workstation accepts."
            )
        if att.data:
            return self._store_inline(att, store, max_bytes, durable)
        if not att.url:
            raise PortalDataError("The photo has neither a URL nor inline data.")
        url = self.url_for(att.url)
        accept = att.content_type or "image/*"
        counted = [0]

        def read(resp: requests.Response) -> Downloaded:
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype in _JSON_TYPES:  # base64 text: smaller pieces keep its copies small
                chunks: Iterable[bytes] = binary_json_chunks(resp.iter_content(_CHUNK))
            else:
                clen = resp.headers.get("Content-Length")
                if clen and clen.isdigit() and att.size is not None and int(clen) != att.size:
                    raise DownloadError(
                        f"The portal's photo has {int(clen)} bytes but the case says "
                        f"{att.size}; it was not stored."
                    )
                chunks = resp.iter_content(PHOTO_CHUNK)
            counted[0] = 0
            head = bytearray()
            verified = _verified(chunks, att, max_bytes, counted,
                                 time.monotonic() + self.download_deadline, slot.release, head)
            sha = store.put_stream(verified, durable=durable)
            self.stats.add(bytes_downloaded=counted[0])
            return Downloaded(sha, counted[0], bytes(head), _checked(att))

        return self.exchange("GET", url, read, headers={"Accept": accept}, stream=True,
                             what="photo download", slot=slot)

    @staticmethod
    def _store_inline(att: AttachmentRef, store: ImageStore, max_bytes: int,
                      durable: bool = True) -> Downloaded:
        try:
            data = base64.b64decode("".join((att.data or "").split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PortalDataError("The photo's inline data is not valid base64.") from exc
        counted = [0]
        sha = store.put_stream(_verified([data], att, max_bytes, counted, None),
                               durable=durable)
        return Downloaded(sha, counted[0], data[:HEAD_BYTES], _checked(att))


def _checked(att: AttachmentRef) -> bool:
    return att.size is not None or bool(att.sha1)


def _verified(chunks: Iterable[bytes], att: AttachmentRef, max_bytes: int,
              counted: list[int], deadline: float | None,
              on_received: Callable[[], None] | None = None,
              head: bytearray | None = None) -> Iterator[bytes]:
    """Pass chunks through, counting and hashing; raise at the end when they don't match.

    ``on_received`` is called once the last byte has arrived and matched; ``head``
    collects the first :data:`HEAD_BYTES`.
    """
    h = hashlib.sha1(usedforsecurity=False) if att.sha1 else None  # only to compare
    n = 0
    for chunk in chunks:
        if not chunk:
            continue
        if head is not None and len(head) < HEAD_BYTES:
            head += chunk[:HEAD_BYTES - len(head)]
        n += len(chunk)
        if n > max_bytes:
            raise DownloadError("The photo is larger than the workstation accepts.")
        if att.size is not None and n > att.size:
            raise DownloadError(
                f"The portal sent more bytes than the photo's size ({att.size}); "
                "it was not stored."
            )
        if deadline is not None and time.monotonic() > deadline:
            raise DownloadError("The photo download took too long and was abandoned.")
        if h is not None:
            h.update(chunk)
        counted[0] = n
        yield chunk
    if att.size is not None and n != att.size:
        raise DownloadError(
            f"The photo arrived with {n} of {att.size} bytes; it was not stored."
        )
    if h is not None and att.sha1 and not _sha1_matches(h.digest(), att.sha1):
        raise DownloadError(
            "The photo did not match its checksum from the portal; it was not stored."
        )
    if n == 0:
        raise DownloadError("The portal sent an empty photo; it was not stored.")
    if on_received is not None:
        on_received()


def _small_outcome(resp: requests.Response) -> str:
    try:
        raw = b""
        for chunk in resp.iter_content(64 * 1024):
            raw += chunk
            if len(raw) > 256 * 1024:
                break
    except requests.RequestException:
        return ""
    return outcome_text(raw)


def _net_reason(exc: BaseException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut short"
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "connection dropped"
    if "Name or service not known" in text or "getaddrinfo" in text or "resolve" in text:
        return "the address could not be resolved"
    return type(exc).__name__


__all__ = [
    "FHIR_JSON",
    "AttachmentRef",
    "ClientStats",
    "Downloaded",
    "Page",
    "PortalClient",
    "RetryPolicy",
    "WriteResult",
    "outcome_text",
    "parse_etag",
    "parse_location",
]
