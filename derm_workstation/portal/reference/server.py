"""The reference portal: a small FHIR R4 server for demos, training and tests.

It implements exactly the interactions of docs/PORTAL_CONTRACT.md, on the standard
library's ``ThreadingHTTPServer`` with a SQLite file behind it (:mod:`.store`):

* ``GET [type]/[id]`` (read; ETag + Last-Modified; ``If-None-Match`` → 304; 404 for an
  id that never existed, 410 for a deleted one), ``GET [type]/[id]/_history/[vid]``;
* ``GET [type]?…`` (search → ``Bundle`` searchset with ``total``, ``self`` and ``next``
  links; see :mod:`.search` for the parameters; unknown ones are a 400);
* ``POST [type]`` (201 + ``Location: …/_history/1`` + ``ETag: W/"1"``), conditional with
  ``If-None-Exist: identifier=system|value`` (200 + the existing resource when one
  matches, 412 when several do);
* ``PUT [type]/[id]`` with optional ``If-Match: W/"<version>"`` (412 + OperationOutcome
  when the resource has changed since); ``DELETE [type]/[id]``;
* ``Binary``: a read answers the raw bytes with the stored ``Content-Type`` unless the
  ``Accept`` header prefers ``application/fhir+json`` (then a ``Binary`` resource with
  base64 ``data``); ``POST Binary`` takes raw bytes with an image ``Content-Type`` or a
  ``Binary`` resource;
* ``GET metadata`` (a CapabilityStatement, no auth needed);
* bearer auth with a fixed token and/or tokens from an OAuth2 client-credentials
  endpoint at ``/oauth/token``; anything else under ``/fhir`` without a valid
  ``Authorization: Bearer`` header is a 401 with ``WWW-Authenticate: Bearer``.

Paging is keyset paging on ``meta.lastUpdated`` (unique and strictly increasing in this
store): the ``next`` link repeats the search with an opaque ``_pageToken``, so a
resource changed while a client pages is found again later, never skipped.

Nothing is logged per request (a request target can carry an identifier);
:attr:`ReferencePortal.request_log` keeps method, target and status in memory for tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from derm_workstation import __version__
from derm_workstation.portal.reference.faults import (
    NO_FAULT,
    FaultDecision,
    FaultPlan,
    FaultSpec,
    FaultSpecError,
)
from derm_workstation.portal.reference.search import (
    ID_RE,
    RESOURCE_TYPES,
    FhirError,
    encode_page_token,
    normalize_reference,
    parse_query,
)
from derm_workstation.portal.reference.store import BASE_TOKEN, PortalStore, Stored

__all__ = ["FaultSpec", "FaultSpecError", "ReferencePortal", "RequestRecord"]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
BASE_PATH = "/fhir"
TOKEN_PATH = "/oauth/token"
MAX_BODY = 256 * 1024 * 1024
LOG_SIZE = 100_000  # requests kept in ReferencePortal.request_log
_IF_MATCH_RE = re.compile(r'^(?:W/)?"(\d+)"$')


class RequestRecord(NamedTuple):
    """One request as the portal saw it (kept in memory for tests and benchmarks)."""

    method: str
    target: str
    status: int
    fault: str | None  # "error", "drop", "truncate", "bad_hash" or None


@dataclass
class Request:
    method: str
    path: str  # below the base path, e.g. "/Task/12"
    query: list[tuple[str, str]]
    headers: Message
    body: bytes
    target: str  # the raw request target


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = f"{FHIR_JSON}; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    truncatable: bool = False  # a Binary read: the ``truncate`` fault applies
    fault: str | None = None


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_body(value: Any) -> bytes:
    return _json_text(value).encode("utf-8")


def outcome(status: int, code: str, message: str, severity: str = "error",
            headers: dict[str, str] | None = None) -> Response:
    """An OperationOutcome response; ``diagnostics`` carries the sentence."""
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}]}
    return Response(status, _json_body(body), headers=dict(headers or {}))


def _http_date(ms: int) -> str:
    return formatdate(ms / 1000, usegmt=True)


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _prefers_json(accept: str | None, content_type: str) -> bool:
    """Content negotiation for Binary: JSON only when Accept prefers a FHIR/JSON type."""
    if not accept:
        return False
    best_json: tuple[float, int] = (0.0, -1)
    best_raw: tuple[float, int] = (0.0, -1)
    ct = content_type.lower()
    for part in accept.split(","):
        mt, *params = (p.strip() for p in part.split(";"))
        mt = mt.lower()
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if mt in _JSON_TYPES:
            best_json = max(best_json, (q, 2))
        elif mt == ct:
            best_raw = max(best_raw, (q, 3))
        elif mt == "*/*":
            best_raw = max(best_raw, (q, 0))
        elif (mt.endswith("/*") and ct.startswith(mt[:-1])) or mt.startswith("image/"):
            best_raw = max(best_raw, (q, 1))
    return best_json > best_raw


def r4b_validator() -> Callable[[dict[str, Any]], None]:
    """Checks a resource with the ``fhir.resources`` R4B models; a failure is a 400."""
    try:
        from fhir.resources.R4B import get_fhir_model_class
    except ImportError as exc:  # pragma: no cover - a test dependency
        raise RuntimeError("validate=True needs the fhir.resources package") from exc

    def validate(resource: dict[str, Any]) -> None:
        try:
            model = get_fhir_model_class(str(resource.get("resourceType")))
            model.model_validate(resource)
        except Exception as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()][:6]
            raise FhirError(400, "structure",
                            "Not a valid FHIR R4 resource: " + " | ".join(lines)) from None

    return validate


class PortalApp:
    """Request → Response, independent of the socket handling."""

    def __init__(self, store: PortalStore, *, token: str | None, client_id: str | None,
                 client_secret: str | None, faults: FaultSpec | None) -> None:
        self.store = store
        self.token = token or None
        self.client_id = client_id or None
        self.client_secret = client_secret or None
        self.base_url = ""
        self.origin = ""
        self.token_lifetime = 3600
        self.plan = FaultPlan(faults or FaultSpec())
        self.validator: Callable[[dict[str, Any]], None] | None = None
        self._lock = threading.Lock()
        self._issued: dict[str, float] = {}
        self.log: deque[RequestRecord] = deque(maxlen=LOG_SIZE)

    # ------------------------------------------------------------------ auth

    @property
    def auth_required(self) -> bool:
        return bool(self.token or (self.client_id and self.client_secret))

    def _authorized(self, req: Request) -> tuple[bool, bool]:
        """(accepted, a token was presented)."""
        scheme, _, cred = (req.headers.get("Authorization") or "").strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() != "bearer" or not cred:
            return False, False
        if self.token and hmac.compare_digest(cred.encode(), self.token.encode()):
            return True, True
        with self._lock:
            expiry = self._issued.get(cred)
        return expiry is not None and expiry > time.monotonic(), True

    def expire_tokens(self) -> None:
        with self._lock:
            self._issued.clear()

    def _token_endpoint(self, req: Request) -> Response:
        def oauth_error(status: int, error: str, description: str,
                        headers: dict[str, str] | None = None) -> Response:
            return Response(status, _json_body({"error": error,
                                                "error_description": description}),
                            "application/json", {"Cache-Control": "no-store", **(headers or {})})

        if not (self.client_id and self.client_secret):
            return outcome(404, "not-found", "This portal has no OAuth2 client configured.")
        if req.method != "POST":
            return outcome(405, "not-supported", "Use POST for the token endpoint.",
                           headers={"Allow": "POST"})
        if _media_type(req.headers.get("Content-Type")) != "application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request",
                               "Send application/x-www-form-urlencoded.")
        try:
            form = dict(parse_qsl(req.body.decode("ascii"), keep_blank_values=True))
        except UnicodeDecodeError:
            return oauth_error(400, "invalid_request", "The form is not ASCII.")
        cid, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, basic = (req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, pw = base64.b64decode(basic.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return oauth_error(400, "invalid_request", "Malformed Basic credentials.")
            cid, secret = unquote(user), unquote(pw)
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type",
                               "Only grant_type=client_credentials is supported.")
        if not (cid and secret
                and hmac.compare_digest(cid.encode(), self.client_id.encode())
                and hmac.compare_digest(secret.encode(), self.client_secret.encode())):
            return oauth_error(401, "invalid_client", "Unknown client or wrong secret.",
                               {"WWW-Authenticate": 'Basic realm="reference-portal"'})
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._issued = {t: e for t, e in self._issued.items() if e > now}
            self._issued[token] = now + self.token_lifetime
        body = {"access_token": token, "token_type": "bearer",
                "expires_in": self.token_lifetime, "scope": form.get("scope") or "system/*.*"}
        return Response(200, _json_body(body), "application/json",
                        {"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ------------------------------------------------------------------ dispatch

    def decide(self, req: Request) -> FaultDecision:
        if not req.path.startswith(BASE_PATH + "/") or req.path == BASE_PATH + "/metadata":
            return NO_FAULT
        return self.plan.decide(req.method, req.target)

    def handle(self, req: Request, decision: FaultDecision) -> Response:
        try:
            return self._route(req, decision)
        except FhirError as exc:
            return outcome(exc.status, exc.code, exc.message, headers=exc.headers)

    def _route(self, req: Request, decision: FaultDecision) -> Response:
        path = req.path
        if path == TOKEN_PATH:
            return self._token_endpoint(req)
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            return outcome(404, "not-found", f"Nothing here; the FHIR base is {self.base_url}.")
        parts = [p for p in path[len(BASE_PATH):].split("/") if p]
        if parts == ["metadata"]:
            if req.method != "GET":
                return outcome(405, "not-supported", "metadata is read-only.")
            return Response(200, _json_body(self.capability_statement()))
        if self.auth_required:
            ok, presented = self._authorized(req)
            if not ok:
                challenge = 'Bearer realm="reference-portal"'
                if presented:
                    challenge += ', error="invalid_token"'
                return outcome(401, "login",
                               "The portal rejected the credentials: this request needs a "
                               "valid bearer token.",
                               headers={"WWW-Authenticate": challenge})
        if not parts:
            return outcome(404, "not-found", "Name a resource type, e.g. Task.")
        rtype = parts[0]
        if rtype not in RESOURCE_TYPES:
            return outcome(404, "not-supported", f"Unknown resource type {rtype!r}.")
        m = req.method
        if len(parts) == 1:
            if m == "GET":
                return self._search(rtype, req, decision)
            if m == "POST":
                return self._create(rtype, req)
            return outcome(405, "not-supported", f"{m} is not supported on {rtype}.")
        rid = parts[1]
        if not ID_RE.match(rid):
            return outcome(400, "invalid", f"Invalid id {rid!r}.")
        if len(parts) == 2:
            if m == "GET":
                return self._read(rtype, rid, None, req, decision)
            if m == "PUT":
                return self._update(rtype, rid, req)
            if m == "DELETE":
                self.store.remove(rtype, rid)
                return Response(204, content_type=None)
            return outcome(405, "not-supported", f"{m} is not supported on {rtype}/{rid}.")
        if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit() and m == "GET":
            return self._read(rtype, rid, int(parts[3]), req, decision)
        return outcome(404, "not-found", f"Unknown path {path}.")

    # ------------------------------------------------------------------ interactions

    def _resource(self, stored: Stored, decision: FaultDecision, resp_fault: list[str]
                  ) -> dict[str, Any]:
        res = stored.resource(self.base_url)
        if stored.rtype == "Media" and decision.bad_hash is not None:
            content = res.get("content")
            if isinstance(content, dict) and isinstance(content.get("hash"), str) \
                    and decision.corrupt_hash():
                wrong = hashlib.sha1(b"wrong" + content["hash"].encode()).digest()
                content["hash"] = base64.b64encode(wrong).decode("ascii")
                resp_fault.append("bad_hash")
        return res

    def _headers(self, stored: Stored) -> dict[str, str]:
        return {"ETag": stored.etag, "Last-Modified": _http_date(stored.lu_ms)}

    def _read(self, rtype: str, rid: str, version: int | None, req: Request,
              decision: FaultDecision) -> Response:
        fmt = None
        for k, v in req.query:
            if k == "_format":
                fmt = v
            elif k != "_pretty":
                raise FhirError(400, "not-supported", f"Parameter {k!r} is not allowed on a read.")
        if fmt is not None and fmt not in ("json", *_JSON_TYPES):
            raise FhirError(406, "not-supported", "Only JSON is supported.")
        stored = (self.store.read(rtype, rid) if version is None
                  else self.store.vread(rtype, rid, version))
        if stored is None:
            what = f"{rtype}/{rid}" + (f"/_history/{version}" if version is not None else "")
            return outcome(404, "not-found", f"{what} does not exist.")
        if stored.deleted:
            return outcome(410, "deleted", f"{rtype}/{rid} has been deleted.",
                           headers=self._headers(stored))
        headers = self._headers(stored)
        if version is None and req.headers.get("If-None-Match") == stored.etag:
            return Response(304, content_type=None, headers=headers)
        if rtype == "Binary":
            data = self.store.binary_data(rid) or b""
            meta = stored.resource(self.base_url)
            content_type = str(meta.get("contentType") or "application/octet-stream")
            if fmt is None and not _prefers_json(req.headers.get("Accept"), content_type):
                headers["X-Content-Type-Options"] = "nosniff"
                return Response(200, data, content_type, headers, truncatable=True)
            meta["data"] = base64.b64encode(data).decode("ascii")
            return Response(200, _json_body(meta), headers=headers, truncatable=True)
        if decision.bad_hash is None:  # the stored JSON as it is: nothing to change in it
            return Response(200, self._text(stored).encode("utf-8"), headers=headers)
        faults: list[str] = []
        res = self._resource(stored, decision, faults)
        return Response(200, _json_body(res), headers=headers,
                        fault=faults[0] if faults else None)

    def _text(self, stored: Stored) -> str:
        """A stored resource's JSON text with the real base URL (no parse, no re-encode)."""
        return stored.text.replace(BASE_TOKEN, self.base_url)

    def _link(self, rtype: str, params: list[tuple[str, str]]) -> str:
        query = urlencode(params, quote_via=quote, safe=",|:")
        return f"{self.base_url}/{rtype}" + (f"?{query}" if query else "")

    def _search(self, rtype: str, req: Request, decision: FaultDecision) -> Response:
        q = parse_query(rtype, req.query, self.base_url, or_lists=self.plan.spec.or_lists)
        page = self.store.query(q)
        self_params = list(q.echo)
        if q.after is not None:
            self_params.append(("_pageToken", encode_page_token(q.after)))
        links = [{"relation": "self", "url": self._link(rtype, self_params)}]
        if page.next_after is not None:
            next_params = [(k, v) for k, v in q.echo if k != "_count"]
            next_params += [("_count", str(q.count)),
                             ("_pageToken", encode_page_token(page.next_after))]
            links.append({"relation": "next", "url": self._link(rtype, next_params)})
        faults: list[str] = []
        entries: list[dict[str, Any]] = []
        spliced: list[str] = []
        if decision.bad_hash is None:  # stored JSON spliced in as it is (same document)
            spliced = [f'{{"fullUrl":{_json_text(f"{self.base_url}/{s.rtype}/{s.id}")},'
                       f'"resource":{self._text(s)},"search":{{"mode":"match"}}}}'
                       for s in page.items]
        else:
            entries = [{"fullUrl": f"{self.base_url}/{s.rtype}/{s.id}",
                        "resource": self._resource(s, decision, faults),
                        "search": {"mode": "match"}} for s in page.items]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": secrets.token_hex(16),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds")
                     .replace("+00:00", "Z")},
            "type": "searchset",
            "total": page.total,
            "link": links,
        }
        if entries:
            bundle["entry"] = entries
        body = _json_body(bundle)
        if spliced:
            body = body[:-1] + b',"entry":[' + ",".join(spliced).encode("utf-8") + b"]}"
        return Response(200, body, fault=faults[0] if faults else None)

    def _parse_body(self, rtype: str, req: Request
                    ) -> tuple[dict[str, Any], bytes | None, bool]:
        """The resource in the request body, a Binary's bytes, and whether they came raw."""
        ctype = _media_type(req.headers.get("Content-Type"))
        if rtype == "Binary" and ctype not in _JSON_TYPES:
            if not ctype:
                raise FhirError(400, "invalid", "POST Binary needs a Content-Type.")
            full = (req.headers.get("Content-Type") or "").strip()
            return {"resourceType": "Binary", "contentType": full}, req.body, True
        if ctype not in _JSON_TYPES:
            raise FhirError(415, "not-supported",
                            f"Send {FHIR_JSON}, not {ctype or 'no Content-Type'}.")
        try:
            res = json.loads(req.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FhirError(400, "structure", f"The body is not valid JSON: {exc}.") from None
        if not isinstance(res, dict):
            raise FhirError(400, "structure", "The body must be a JSON object (a resource).")
        if res.get("resourceType") != rtype:
            raise FhirError(400, "invalid", f"The body is a {res.get('resourceType')!r}, "
                                            f"not a {rtype}.")
        if self.validator is not None:
            self.validator(res)
        data = None
        if rtype == "Binary":
            if not isinstance(res.get("contentType"), str) or not res["contentType"]:
                raise FhirError(400, "required", "Binary.contentType is required.")
            try:
                data = base64.b64decode(str(res.get("data") or ""), validate=True)
            except (binascii.Error, ValueError):
                raise FhirError(400, "invalid", "Binary.data is not valid base64.") from None
        return res, data, False

    def _check_references(self, res: dict[str, Any]) -> None:
        """Referential integrity, as HAPI enforces it by default: every relative (or
        own-server absolute) ``reference`` must name a resource that exists here."""

        def walk(value: Any, path: str) -> None:
            if isinstance(value, list):
                for v in value:
                    walk(v, path)
            elif isinstance(value, dict):
                ref = value.get("reference")
                if isinstance(ref, str) and not ref.startswith("#"):
                    self._check_reference(ref, path)
                for k, v in value.items():
                    if k not in ("contained", "reference"):
                        walk(v, f"{path}.{k}")

        for key, value in res.items():
            if key not in ("contained", "meta", "text"):
                walk(value, f"{res.get('resourceType')}.{key}")

    def _check_reference(self, ref: str, path: str) -> None:
        norm = normalize_reference(ref, self.base_url)
        if norm.startswith(("http://", "https://", "urn:")):
            return  # another server's resource, or a placeholder: not ours to check
        rtype, _, rid = norm.partition("/")
        if rtype not in RESOURCE_TYPES or not ID_RE.match(rid) or "/" in rid:
            raise FhirError(400, "invalid", f"{path} refers to {ref!r}, which this server "
                                            "cannot hold.")
        found = self.store.read(rtype, rid)
        if found is None or found.deleted:
            raise FhirError(400, "invalid",
                            f"{path} refers to {norm}, which does not exist on this server.")

    def _write_response(self, stored: Stored, created: bool, req: Request) -> Response:
        headers = self._headers(stored)
        headers["Location"] = f"{self.base_url}/{stored.rtype}/{stored.id}/_history/" \
                              f"{stored.version}"
        status = 201 if created else 200
        prefer = (req.headers.get("Prefer") or "").replace(" ", "").lower()
        if "return=minimal" in prefer:
            return Response(status, content_type=None, headers=headers)
        if "return=operationoutcome" in prefer:
            r = outcome(status, "informational",
                        f"{stored.rtype}/{stored.id} {'created' if created else 'matched'}.",
                        severity="information")
            r.headers.update(headers)
            return r
        return Response(status, _json_body(stored.resource(self.base_url)), headers=headers)

    def _create(self, rtype: str, req: Request) -> Response:
        res, data, _raw = self._parse_body(rtype, req)
        self._check_references(res)
        cond = req.headers.get("If-None-Exist")
        criteria = None
        if cond is not None:
            criteria = parse_qsl(cond.strip().lstrip("?"), keep_blank_values=True)
            if not criteria:
                raise FhirError(400, "invalid", "If-None-Exist is empty.")
        stored, created = self.store.insert(res, data=data, if_none_exist=criteria)
        return self._write_response(stored, created, req)

    def _update(self, rtype: str, rid: str, req: Request) -> Response:
        res, data, raw = self._parse_body(rtype, req)
        if not raw and res.get("id") != rid:
            raise FhirError(400, "invalid",
                            f"The body's id {res.get('id')!r} must equal the URL's {rid!r}.")
        self._check_references(res)
        if_match = None
        header = req.headers.get("If-Match")
        if header is not None:
            m = _IF_MATCH_RE.match(header.strip())
            if not m:
                raise FhirError(400, "invalid", f'If-Match must look like W/"3", not {header!r}.')
            if_match = int(m.group(1))
        stored, created = self.store.write(rtype, rid, res, data=data, if_match=if_match)
        return self._write_response(stored, created, req)

    # ------------------------------------------------------------------ metadata

    def capability_statement(self) -> dict[str, Any]:
        interactions = [{"code": c} for c in ("read", "vread", "update", "delete",
                                              "create", "search-type")]
        resources = []
        for rtype, params in RESOURCE_TYPES.items():
            search = [{"name": n, "type": p.kind} for n, p in params.items()]
            search += [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
            resources.append({"type": rtype, "interaction": interactions,
                              "versioning": "versioned-update", "updateCreate": True,
                              "conditionalCreate": True, "conditionalUpdate": False,
                              "searchParam": search})
        security: dict[str, Any] = {"cors": False}
        if self.client_id and self.client_secret:
            security["service"] = [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"}]}]
            security["extension"] = [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": self.origin + TOKEN_PATH}]}]
        if self.auth_required:
            security["description"] = "Authorization: Bearer <token> on every request."
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": datetime.now(UTC).date().isoformat(),
            "publisher": "Derm Review Workstation",
            "kind": "instance",
            "software": {"name": "Derm Review Workstation reference portal",
                         "version": __version__},
            "implementation": {"description": "Reference FHIR R4 portal for demos, training "
                                              "and tests", "url": self.base_url},
            "fhirVersion": "4.0.1",
            "format": [FHIR_JSON, "json"],
            "rest": [{"mode": "server", "security": security, "resource": resources}],
        }

    def record(self, req: Request, status: int, fault: str | None) -> None:
        with self._lock:
            self.log.append(RequestRecord(req.method, req.target, status, fault))


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DermReferencePortal/1"
    sys_version = ""
    timeout = 60
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: request targets can carry patient identifiers

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _BodyError(400, "Malformed chunked body.") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise _BodyError(413, "The body is too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command in ("POST", "PUT"):
                raise _BodyError(411, "Content-Length is required.")
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BodyError(400, "Malformed Content-Length.") from None
        if n < 0 or n > MAX_BODY:
            raise _BodyError(413, "The body is too large.")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _BodyError(400, "The body is shorter than its Content-Length.")
        return data

    def _serve(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        req = Request(self.command, url.path, [], self.headers, b"", self.path)
        try:
            req.body = self._read_body()
            req.query = parse_qsl(url.query, keep_blank_values=True)
        except _BodyError as exc:
            self.close_connection = True
            resp = outcome(exc.status, "invalid", exc.message)
            self._send(resp, NO_FAULT)
            app.record(req, resp.status, None)
            return
        decision = app.decide(req)
        if decision.latency:
            time.sleep(decision.latency)
        if decision.error is not None:
            status = decision.error
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            text = {500: "Internal server error (injected fault).",
                    503: "Service unavailable (injected fault).",
                    429: "Too many requests (injected fault)."}[status]
            resp = outcome(status, "transient" if status != 500 else "exception", text,
                           headers=headers)
            resp.fault = "error"
        else:
            try:
                resp = app.handle(req, decision)
            except Exception:
                log.exception("reference portal: unexpected failure handling %s",
                              req.method)
                resp = outcome(500, "exception", "Unexpected server error.")
        fault = resp.fault
        if decision.drop:
            fault = "drop"
        elif decision.truncate and resp.truncatable and resp.body:
            fault = "truncate"
        app.record(req, resp.status, fault)
        self._send(resp, decision)

    def _send(self, resp: Response, decision: FaultDecision) -> None:
        body = resp.body
        if decision.drop and not body:
            self._abort()
            return
        self.send_response(resp.status)
        if resp.content_type and resp.status not in (204, 304):
            self.send_header("Content-Type", resp.content_type)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        cut = decision.drop or (decision.truncate and resp.truncatable and bool(body))
        if cut:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if resp.status in (204, 304):
            return
        if decision.drop:
            self.wfile.write(body[: len(body) // 2])
            self._abort()
        elif cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
        else:
            self.wfile.write(body)

    def _abort(self) -> None:
        """Reset the connection (RST, not an orderly close)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.wfile.close()
        self.rfile.close()
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR would let a second server take over a busy port on Windows
    allow_reuse_address = os.name != "nt"

    def __init__(self, address: tuple[str, int], app: PortalApp, family: int) -> None:
        self.address_family = family
        self.app = app
        self._conn_threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._track = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread,
                             args=(request, client_address), daemon=True,
                             name="reference-portal-connection")
        with self._track:
            self._conn_threads = [x for x in self._conn_threads if x.is_alive()]
            self._conn_threads.append(t)
            self._sockets.add(request)
        t.start()

    def shutdown_request(self, request: Any) -> None:
        with self._track:
            self._sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("reference portal: connection error", exc_info=True)

    def close_connections(self, timeout: float = 5.0) -> None:
        with self._track:
            sockets = list(self._sockets)
            threads = list(self._conn_threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class ReferencePortal:
    """A running reference portal (HTTP on a background thread, SQLite store)."""

    def __init__(self, store: PortalStore, server: _Server, thread: threading.Thread,
                 seeded: Any = None) -> None:
        self.store = store
        self._server = server
        self._thread = thread
        self._app = server.app
        self.seed_summary = seeded
        self._stopped = False

    @classmethod
    def start(cls, db_path: Path, *, host: str = "127.0.0.1", port: int = 0,
              token: str | None = None, client_id: str | None = None,
              client_secret: str | None = None, seed_cases: int = 0, seed: int = 1729,
              faults: FaultSpec | None = None, now: datetime | None = None,
              cache_dir: Path | None = None, validate: bool = False,
              progress: Callable[[int, int], None] | None = None) -> ReferencePortal:
        """Open (or create) the portal database, seed it when empty, and start serving.

        ``seed_cases``: open demo cases to add when the database holds nothing yet;
        ``now``: the demo dataset's "now" (default: the real time); ``cache_dir``: demo
        photo render cache (default: the workstation's ``demo-photos`` cache);
        ``validate``: refuse (400) any POSTed or PUT resource that is not valid FHIR R4
        by the ``fhir.resources`` R4B models (a test dependency, so off by default).
        """
        if (client_id is None) != (client_secret is None):
            raise ValueError("client_id and client_secret go together")
        store = PortalStore(Path(db_path))
        try:
            seeded = None
            if seed_cases > 0 and store.count() == 0:
                from derm_workstation.portal.reference.seed import seed_portal

                seeded = seed_portal(store, n_cases=seed_cases, seed=seed, now=now,
                                     cache_dir=cache_dir, progress=progress)
            app = PortalApp(store, token=token, client_id=client_id,
                            client_secret=client_secret, faults=faults)
            if validate:
                app.validator = r4b_validator()
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            server = _Server((host, port), app, family)
        except BaseException:
            store.close()
            raise
        bound_port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        app.origin = f"http://{shown}:{bound_port}"
        app.base_url = app.origin + BASE_PATH
        store.base_url = app.base_url
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="reference-portal", daemon=True)
        thread.start()
        return cls(store, server, thread, seeded)

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """The FHIR base, e.g. ``http://127.0.0.1:54321/fhir``."""
        return self._app.base_url

    @property
    def origin(self) -> str:
        return self._app.origin

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def token_url(self) -> str | None:
        """The OAuth2 token endpoint, when a client id/secret was given."""
        return self._app.origin + TOKEN_PATH if self._app.client_id else None

    @property
    def faults(self) -> FaultSpec:
        return self._app.plan.spec

    @faults.setter
    def faults(self, spec: FaultSpec | None) -> None:
        """Change the faults while running (the decision counters start afresh)."""
        self._app.plan = FaultPlan(spec or FaultSpec())

    @property
    def token_lifetime(self) -> int:
        return self._app.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self._app.token_lifetime = seconds

    @property
    def request_log(self) -> list[RequestRecord]:
        """The requests so far (method, target, status, injected fault), oldest first
        (the last 100,000)."""
        with self._app._lock:
            return list(self._app.log)

    def clear_log(self) -> None:
        with self._app._lock:
            self._app.log.clear()

    def expire_tokens(self) -> None:
        """Invalidate every OAuth-issued token (the fixed token, if any, stays valid)."""
        self._app.expire_tokens()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop serving, close open connections and the database. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(5)
        self.store.close()

    def __enter__(self) -> ReferencePortal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
