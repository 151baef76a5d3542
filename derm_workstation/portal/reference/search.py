"""The resource types and search parameters the reference portal knows, as in FHIR R4.

Only what the portal contract uses is supported, and anything else is refused with a
400 (a real server might ignore an unknown parameter; refusing it makes client bugs
show). Parameters are the R4 ones with their R4 names, so a query that works here
works on HAPI, Medplum or Firely too: ``based-on`` exists on Task, ServiceRequest,
Media, QuestionnaireResponse, Communication, DiagnosticReport, Observation and
Appointment but not on MedicationRequest, for instance.

Supported on every type: ``_id``, ``_lastUpdated`` (prefixes ``gt ge lt le eq``),
``_sort`` (``_lastUpdated`` or ``-_lastUpdated``), ``_count`` (default 50, at most
1000; 0 = total only) and ``_format`` (JSON only). Token parameters take
``code``, ``system|code``, ``|code`` and ``system|``; reference parameters take
``Type/id``, a bare ``id`` or an absolute URL on this server. Commas mean OR, a
repeated parameter means AND. Modifiers (``:missing``, ``:exact``…) are refused.

``or_lists`` (a fault of :mod:`.faults`) makes the server behave like a minimal
contract-only one for ``_id`` and reference parameters (token parameters such as the
contract's ``status=requested,received,…`` keep their OR-lists): ``literal`` takes the
comma as part of one value (so an OR-list matches nothing), ``reject`` answers an
OR-list with a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DEFAULT_COUNT",
    "ID_RE",
    "MAX_COUNT",
    "OR_LIST_MODES",
    "RESOURCE_TYPES",
    "Condition",
    "FhirError",
    "ParsedQuery",
    "extract_index",
    "format_instant",
    "normalize_reference",
    "parse_query",
]

DEFAULT_COUNT = 50
MAX_COUNT = 1000
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(
    r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


class FhirError(Exception):
    """A request the server refuses: HTTP status, OperationOutcome issue code and text."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class _P:
    kind: str  # "token" | "reference"
    path: str  # dotted FHIRPath-like element path
    target: str | None = None  # reference parameters restricted to one type


def _tok(path: str) -> _P:
    return _P("token", path)


def _ref(path: str, target: str | None = None) -> _P:
    return _P("reference", path, target)


_IDENT = {"identifier": _tok("identifier")}


def _clinical(subject: str = "subject", based_on: bool = True, status: bool = True
              ) -> dict[str, _P]:
    d = {**_IDENT, "patient": _ref(subject, "Patient"), "subject": _ref(subject)}
    if based_on:
        d["based-on"] = _ref("basedOn")
    if status:
        d["status"] = _tok("status")
    return d


#: resource type → search parameter → how to index it.
RESOURCE_TYPES: dict[str, dict[str, _P]] = {
    "Patient": dict(_IDENT),
    "Practitioner": dict(_IDENT),
    "PractitionerRole": {**_IDENT, "practitioner": _ref("practitioner", "Practitioner")},
    "Organization": dict(_IDENT),
    "Task": {
        **_IDENT,
        "status": _tok("status"),
        "priority": _tok("priority"),
        "business-status": _tok("businessStatus"),
        "patient": _ref("for", "Patient"),
        "subject": _ref("for"),
        "owner": _ref("owner"),
        "focus": _ref("focus"),
        "based-on": _ref("basedOn"),
    },
    "ServiceRequest": {**_clinical(), "intent": _tok("intent"), "category": _tok("category")},
    "Media": _clinical(),
    "QuestionnaireResponse": _clinical(),
    "Communication": {**_clinical(), "sender": _ref("sender"), "recipient": _ref("recipient")},
    "AllergyIntolerance": {**_IDENT, "patient": _ref("patient", "Patient"),
                           "clinical-status": _tok("clinicalStatus")},
    "MedicationStatement": _clinical(based_on=False),
    "MedicationRequest": {**_clinical(based_on=False), "intent": _tok("intent")},
    "DiagnosticReport": _clinical(),
    "Observation": {**_clinical(), "code": _tok("code")},
    "Appointment": {**_IDENT, "status": _tok("status"),
                    "patient": _ref("participant.actor", "Patient"),
                    "actor": _ref("participant.actor"), "based-on": _ref("basedOn")},
    "Binary": {},
}

_CONTROL = ("_id", "_lastUpdated", "_count", "_sort", "_format", "_pageToken")
#: How ``_id`` and reference parameters treat a comma: standard OR, part of the value,
#: or refused (see the module docstring).
OR_LIST_MODES = ("honour", "literal", "reject")


# --------------------------------------------------------------------------- time


def format_instant(ms: int) -> str:
    """Milliseconds since the epoch → ``2026-11-29T09:00:00.123Z``."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?"
    r"(Z|[+-]\d{2}:\d{2}))?)?)?$"
)


def _to_ms(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_date_range(text: str) -> tuple[int, int]:
    """A FHIR date/dateTime/instant → the [start, end) it covers, in epoch milliseconds."""
    m = _DATE_RE.match(text)
    if not m:
        raise FhirError(400, "invalid", f"Invalid date/time {text!r} (a time needs a time zone; "
                                        "'+' must be sent as %2B).")
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        if hh is None:
            start = datetime(int(y), int(mo or 1), int(d or 1), tzinfo=UTC)
            if d:
                end = start + timedelta(days=1)
            elif mo:
                end = (start.replace(year=start.year + 1, month=1) if start.month == 12
                       else start.replace(month=start.month + 1))
            else:
                end = start.replace(year=start.year + 1)
            return _to_ms(start), _to_ms(end)
        us = int((frac or ".0")[1:].ljust(6, "0")[:6])
        local = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), us)
        offset = timedelta(0) if tz == "Z" else (
            (1 if tz[0] == "+" else -1) * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        start = (local - offset).replace(tzinfo=UTC)
    except ValueError:
        raise FhirError(400, "invalid", f"Invalid date/time {text!r}.") from None
    if frac:
        step = timedelta(milliseconds=1) if len(frac) <= 4 else timedelta(microseconds=1)
    elif ss:
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    return _to_ms(start), max(_to_ms(start + step), _to_ms(start) + 1)


# --------------------------------------------------------------------------- indexing


def normalize_reference(ref: str, base_url: str) -> str:
    """``Patient/1``, ``Patient/1/_history/2`` or ``<base>/Patient/1`` → ``Patient/1``.

    Anything else (another server's URL, a contained ``#ref``) is returned unchanged.
    """
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1:]
    m = _REF_RE.match(ref)
    return f"{m.group(1)}/{m.group(2)}" if m else ref


def _walk(value: Any, parts: Sequence[str]) -> Iterator[Any]:
    if isinstance(value, list):
        for v in value:
            yield from _walk(v, parts)
        return
    if not parts:
        yield value
        return
    if isinstance(value, dict):
        yield from _walk(value.get(parts[0]), parts[1:])


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for c in value["coding"] if isinstance(value["coding"], list) else []:
                yield from _tokens(c)
        elif isinstance(value.get("code"), str):  # Coding
            system = value.get("system")
            yield (system if isinstance(system, str) else None), value["code"]
        elif isinstance(value.get("value"), str):  # Identifier
            system = value.get("system")
            yield (system if isinstance(system, str) else None), value["value"]


def extract_index(rtype: str, resource: dict[str, Any],
                  base_url: str) -> list[tuple[str, str | None, str]]:
    """The (param, system, value) rows that make ``resource`` findable."""
    rows: list[tuple[str, str | None, str]] = []
    for name, p in RESOURCE_TYPES.get(rtype, {}).items():
        for v in _walk(resource, p.path.split(".")):
            if p.kind == "token":
                rows.extend((name, s, val) for s, val in _tokens(v))
            elif isinstance(v, dict) and isinstance(v.get("reference"), str):
                ref = normalize_reference(v["reference"], base_url)
                if p.target is None or ref.startswith(p.target + "/"):
                    rows.append((name, None, ref))
    return rows


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Condition:
    """One comma-separated alternative of a search parameter, as SQL on ``search_index s``."""

    sql: str
    args: tuple[str, ...]


@dataclass
class ParsedQuery:
    rtype: str
    ids: list[list[str]] = field(default_factory=list)
    criteria: list[tuple[str, list[Condition]]] = field(default_factory=list)
    last_updated: list[tuple[str, int, int]] = field(default_factory=list)  # (op, start, end)
    count: int = DEFAULT_COUNT
    descending: bool = False
    after: int | None = None  # keyset: last lastUpdated (ms) of the previous page
    echo: list[tuple[str, str]] = field(default_factory=list)  # params for self/next links


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _token_condition(raw: str) -> Condition:
    if "|" in raw:
        system, _, code = raw.partition("|")
        if system and code:
            return Condition("(s.sys = ? AND s.val = ?)", (system, code))
        if system:
            return Condition("(s.sys = ?)", (system,))
        if code:
            return Condition("(s.sys IS NULL AND s.val = ?)", (code,))
        raise FhirError(400, "invalid", "Empty token '|'.")
    return Condition("(s.val = ?)", (raw,))


def _reference_condition(name: str, p: _P, raw: str, base_url: str) -> Condition:
    ref = normalize_reference(raw, base_url)
    if _REF_RE.match(ref):
        if p.target and not ref.startswith(p.target + "/"):
            raise FhirError(400, "invalid",
                            f"Parameter {name} refers to {p.target}, not {ref.split('/')[0]}.")
        return Condition("(s.val = ?)", (ref,))
    if ID_RE.match(ref):
        if p.target:
            return Condition("(s.val = ?)", (f"{p.target}/{ref}",))
        return Condition("(s.val LIKE ? ESCAPE '\\')", ("%/" + _escape_like(ref),))
    if ref.startswith(("http://", "https://")):
        return Condition("(s.val = ?)", (ref,))  # a reference to another server, stored as is
    raise FhirError(400, "invalid", f"Invalid reference {raw!r} for parameter {name}.")


def decode_page_token(token: str) -> int:
    m = re.fullmatch(r"lu(\d{1,16})", token)
    if not m:
        raise FhirError(400, "invalid", "Invalid or expired _pageToken.")
    return int(m.group(1))


def encode_page_token(last_ms: int) -> str:
    return f"lu{last_ms}"


def _or_list(name: str, value: str, mode: str) -> list[str] | None:
    """The alternatives of an ``_id``/reference value under ``mode``; None = match nothing."""
    if "," not in value or mode == "honour":
        return [v.strip() for v in value.split(",")]
    if mode == "reject":
        raise FhirError(400, "not-supported",
                        f"Comma-separated values (OR) are not supported for {name}.")
    return None


def parse_query(rtype: str, params: Sequence[tuple[str, str]], base_url: str,
                or_lists: str = "honour") -> ParsedQuery:
    """Validate a search; every unknown parameter or malformed value is a 400."""
    known = RESOURCE_TYPES[rtype]
    q = ParsedQuery(rtype)
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if modifier:
            raise FhirError(400, "not-supported",
                            f"Search modifier ':{modifier}' is not supported.")
        if name not in known and name not in _CONTROL:
            allowed = ", ".join(sorted([*known, "_id", "_lastUpdated"]))
            raise FhirError(400, "not-supported",
                            f"Unknown search parameter {name!r} for {rtype} "
                            f"(supported: {allowed}).")
        value = raw.strip()
        if name == "_pageToken":
            q.after = decode_page_token(value)
            continue
        q.echo.append((key, raw))
        if name == "_count":
            if not value.isdigit():
                raise FhirError(400, "invalid", f"_count must be a whole number, not {raw!r}.")
            q.count = min(int(value), MAX_COUNT)
        elif name == "_sort":
            if value not in ("_lastUpdated", "-_lastUpdated"):
                raise FhirError(400, "not-supported",
                                f"_sort={raw} is not supported (use _lastUpdated or "
                                "-_lastUpdated).")
            q.descending = value.startswith("-")
        elif name == "_format":
            if value not in ("json", "application/json", "application/fhir+json"):
                raise FhirError(406, "not-supported", "Only JSON is supported.")
        elif name == "_lastUpdated":
            op = value[:2] if value[:2] in ("gt", "ge", "lt", "le", "eq", "ne") else "eq"
            text = value[2:] if value[:2] == op else value
            start, end = parse_date_range(text)
            q.last_updated.append((op, start, end))
        elif name == "_id":
            ids = _or_list(name, value, or_lists)
            if ids is None:  # a literal "a,b": no resource has that id
                q.ids.append([value])
                continue
            if not all(ID_RE.match(i) for i in ids):
                raise FhirError(400, "invalid", f"Invalid _id {raw!r}.")
            q.ids.append(ids)
        else:
            p = known[name]
            literal = None if p.kind == "token" else _or_list(name, value, or_lists)
            if p.kind != "token" and literal is None:  # a literal "a,b": matches nothing
                q.criteria.append((name, [Condition("(s.val = ?)", (value,))]))
                continue
            alternatives = [v.strip() for v in value.split(",")]
            if not value or not all(alternatives):
                raise FhirError(400, "invalid", f"Empty value for search parameter {name}.")
            conds = [_token_condition(v) if p.kind == "token"
                     else _reference_condition(name, p, v, base_url) for v in alternatives]
            q.criteria.append((name, conds))
    return q


def date_sql(op: str, start: int, end: int) -> tuple[str, tuple[int, ...]]:
    """SQL on ``r.lu_ms`` for one ``_lastUpdated`` criterion.

    ``gt``/``ge``/``lt``/``le`` compare with the instant as written (missing parts are
    zero), so ``gt`` + the last ``meta.lastUpdated`` seen is exactly "changed since";
    ``eq``/``ne`` use the whole range the value's precision covers.
    """
    if op == "gt":
        return "r.lu_ms > ?", (start,)
    if op == "ge":
        return "r.lu_ms >= ?", (start,)
    if op == "lt":
        return "r.lu_ms < ?", (start,)
    if op == "le":
        return "r.lu_ms <= ?", (start,)
    if op == "ne":
        return "(r.lu_ms < ? OR r.lu_ms >= ?)", (start, end)
    return "(r.lu_ms >= ? AND r.lu_ms < ?)", (start, end)
