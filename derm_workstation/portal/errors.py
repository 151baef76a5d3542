"""What can go wrong talking to the portal, as errors a clinician or operator understands.

All are :class:`~derm_workstation.core.errors.DermError` (exit code 1 on the CLI).
``transient`` tells the outbox and the sync engine whether trying again later may
help (the network, a busy server) or a person must look (credentials, a refused
request, a conflict, data the portal sent that cannot be used).
"""

from __future__ import annotations

from derm_workstation.core.errors import DermError


class PortalError(DermError):
    """Base class of every portal failure."""

    transient: bool = False


class PortalUnavailableError(PortalError):
    """The portal could not be reached or kept failing (network down, 5xx, timeouts)."""

    transient = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (429/503 ``Retry-After``), when it said.
        self.retry_after = retry_after


class PortalAuthError(PortalError):
    """The portal rejected the credentials (401 after one token refresh) or has none."""


class PortalRequestError(PortalError):
    """The portal refused a request (4xx other than 401/412); carries its OperationOutcome."""

    def __init__(self, message: str, status: int, outcome: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class PortalConflictError(PortalRequestError):
    """412 Precondition Failed: the resource changed since the version we hold."""


class PortalDataError(PortalError):
    """The portal answered with something unusable (malformed JSON, wrong resource type)."""


class DownloadError(PortalError):
    """A photo download failed verification (size, hash) or was cut short."""

    transient = True


__all__ = [
    "DownloadError",
    "PortalAuthError",
    "PortalConflictError",
    "PortalDataError",
    "PortalError",
    "PortalRequestError",
    "PortalUnavailableError",
]
