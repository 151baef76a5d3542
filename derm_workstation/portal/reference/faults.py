"""Fault injection for the reference portal: the network and server misbehaviour a clinic sees.

A :class:`FaultSpec` is parsed from ``latency=0.2,error_rate=0.1,drop=0.05,truncate=0.05,
bad_hash=0.1,seed=7``:

``latency``
    seconds added to every FHIR request before it is handled;
``error_rate``
    probability that a request is answered, without being processed, by a 500, a 503
    with ``Retry-After: 1`` or a 429 with ``Retry-After: 1``;
``drop``
    probability that the connection is reset half-way through the response body. A write
    (POST/PUT/DELETE) is committed first, so the client loses the answer to a change
    that did happen: exactly what conditional create and ``If-Match`` must survive;
``truncate``
    probability that a ``Binary`` read sends fewer bytes than its ``Content-Length``
    and then closes the connection;
``bad_hash``
    probability that each ``Media`` in a response carries a ``content.hash`` that does
    not match the photo;
``seed``
    makes every decision reproducible;
``or_lists``
    ``honour`` (the default: standard FHIR OR-lists), ``literal`` or ``reject``: how
    ``_id`` and reference search parameters treat a comma-separated list, so a client
    can be tried against a minimal server that only does the contract's single-value
    searches (``literal``: the comma is part of the value and nothing matches;
    ``reject``: a 400). Token parameters (``status=a,b``) keep their OR-lists.

Decisions are drawn from a random stream keyed by ``(seed, method, request target,
n-th time that request was made)``, so the same requests get the same faults whatever
order concurrent clients send them in, and a retry of a failed request gets a fresh
draw. Faults only ever change what is sent; the stored data is never touched.
``/fhir/metadata`` and the OAuth token endpoint are exempt.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, fields

from derm_workstation.core.errors import InputError
from derm_workstation.portal.reference.search import OR_LIST_MODES

__all__ = ["FaultDecision", "FaultPlan", "FaultSpec", "FaultSpecError"]

_RATES = ("error_rate", "drop", "truncate", "bad_hash")


class FaultSpecError(InputError, ValueError):
    """A ``--faults`` specification that cannot be understood."""


@dataclass(frozen=True)
class FaultSpec:
    """What to break, and how often (probabilities in 0..1, latency in seconds)."""

    latency: float = 0.0
    error_rate: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    bad_hash: float = 0.0
    seed: int = 0
    or_lists: str = "honour"

    def __post_init__(self) -> None:
        if self.or_lists not in OR_LIST_MODES:
            raise FaultSpecError(f"or_lists must be one of {', '.join(OR_LIST_MODES)}.")
        if not 0.0 <= self.latency <= 60.0:
            raise FaultSpecError("latency must be between 0 and 60 seconds.")
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultSpecError(f"{name} must be a probability between 0 and 1.")

    @classmethod
    def parse(cls, spec: str) -> FaultSpec:
        """``"latency=0.2,error_rate=0.1,seed=7"`` → FaultSpec; ``""``/``"none"`` → no faults."""
        text = spec.strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int | str] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                names = ", ".join(known)
                raise FaultSpecError(f"unknown fault {part!r} (known: {names}).")
            if key == "or_lists":
                values[key] = raw.strip()
                continue
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise FaultSpecError(f"fault {key} needs a number, not {raw.strip()!r}.") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return bool(self.latency or any(getattr(self, n) for n in _RATES)
                    or self.or_lists != "honour")

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                 if (getattr(self, f.name) or f.name == "seed")
                 and not (f.name == "or_lists" and self.or_lists == "honour")]
        return ",".join(parts)


@dataclass(frozen=True)
class FaultDecision:
    """The faults chosen for one request."""

    latency: float = 0.0
    error: int | None = None  # 500, 503 or 429: answered without being processed
    drop: bool = False
    truncate: bool = False
    bad_hash: random.Random | None = None  # draws one number per Media in the response
    bad_hash_rate: float = 0.0

    def corrupt_hash(self) -> bool:
        """True when the next Media in the response should get a wrong hash."""
        return self.bad_hash is not None and self.bad_hash.random() < self.bad_hash_rate


NO_FAULT = FaultDecision()


class FaultPlan:
    """Thread-safe, reproducible fault decisions for a running portal."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}

    def decide(self, method: str, target: str) -> FaultDecision:
        spec = self.spec
        if not spec.active:
            return NO_FAULT
        key = f"{method} {target}"
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        rng = random.Random(f"{spec.seed}|{key}|{n}")
        # Always draw every number, so one setting does not shift the others' stream.
        err_draw, err_kind, drop_draw, trunc_draw = (rng.random(), rng.random(), rng.random(),
                                                     rng.random())
        error: int | None = None
        if err_draw < spec.error_rate:
            error = 500 if err_kind < 1 / 3 else 503 if err_kind < 2 / 3 else 429
        return FaultDecision(
            latency=spec.latency,
            error=error,
            drop=error is None and drop_draw < spec.drop,
            truncate=error is None and trunc_draw < spec.truncate,
            bad_hash=random.Random(f"{spec.seed}|{key}|{n}|hash") if spec.bad_hash else None,
            bad_hash_rate=spec.bad_hash,
        )
