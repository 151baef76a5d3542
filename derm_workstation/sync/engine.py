"""One full sync: pull from the portal, then push the outbox.

:func:`run_sync` is what the CLI's ``sync`` command, the GUI's "Sync now" and its
periodic timer call (the GUI on its network lane); ``run_sync(..., pull=False)`` only
pushes the outbox (a claim sent the moment a case is opened). :func:`connect` builds the
portal client from the saved settings and the keyring, or from a URL and a token
given for one run; :func:`check_portal` tries credentials before they are saved.
Everything already on the workstation stays usable whatever happens here: a portal that
cannot be reached is one clear error in the summary.

Only one sync per data folder runs at a time, across processes
(:func:`derm_workstation.sync.lock.sync_lock`); a second one raises
:class:`SyncBusyError` at once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from derm_workstation.core import audit
from derm_workstation.core.errors import InputError
from derm_workstation.core.models import utcnow
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.auth import (
    AUTH_CLIENT_CREDENTIALS,
    ClientCredentials,
    PortalSettings,
    StaticToken,
    TokenProvider,
    provider_from_settings,
)
from derm_workstation.portal.client import PortalClient, RetryPolicy
from derm_workstation.portal.errors import (
    PortalAuthError,
    PortalDataError,
    PortalError,
    PortalRequestError,
    PortalUnavailableError,
)
from derm_workstation.sync import state
from derm_workstation.sync.lock import SyncBusyError, sync_lock
from derm_workstation.sync.outbox import OutboxSender
from derm_workstation.sync.pull import Progress, Puller, SyncCancelled
from derm_workstation.sync.summary import SyncSummary

log = logging.getLogger(__name__)

OFFLINE_HINT = "Everything already on this workstation can still be used."
#: How the outbox sender ends the error of a change that stays queued (portal unreachable).
QUEUED_HINT = "The change stays queued."


def connect(data_dir: Path, *, portal_url: str | None = None, token: str | None = None,
            retry: RetryPolicy | None = None, pool_size: int = 16,
            **client_options: Any) -> tuple[PortalClient, PortalSettings | None]:
    """The portal client: for ``portal_url`` + ``token`` (one run, nothing stored), else
    from the saved settings and the keyring. Returns (client, saved settings or None)."""
    saved = PortalSettings.load(data_dir)
    if portal_url:
        settings = PortalSettings(base_url=portal_url)
        if saved is not None and saved.base_url == settings.base_url:
            settings = saved
    elif saved is not None:
        settings = saved
    else:
        raise InputError(
            "No portal is set up. Give --portal-url (and --token-stdin), or run "
            "derm-workstation login first."
        )
    tokens = StaticToken(token) if token is not None else provider_from_settings(settings)
    client = PortalClient(settings.base_url, tokens, retry=retry, pool_size=pool_size,
                          verify=settings.ca_bundle or True, **client_options)
    return client, saved


def run_sync(ws: Workspace, client: PortalClient, *, actor: Actor = SYSTEM,
             practitioner: str | None = None, concurrency: int = 4,
             progress: Progress | None = None, cancel: threading.Event | None = None,
             push: bool = True, pull: bool = True) -> SyncSummary:
    """Pull, then push. Never raises for portal trouble: it is in ``summary.errors``.

    ``pull=False`` only sends what is due in the outbox (it does not count as a
    "last successful sync"). Raises :class:`SyncBusyError` when another sync of this
    data folder is running, in this process or another one.
    """
    actor.require("case.edit")
    with sync_lock(Path(ws.paths.root)):
        return _run_locked(ws, client, actor=actor, practitioner=practitioner,
                           concurrency=concurrency, progress=progress, cancel=cancel,
                           push=push, pull=pull)


def _run_locked(ws: Workspace, client: PortalClient, *, actor: Actor,
                practitioner: str | None, concurrency: int, progress: Progress | None,
                cancel: threading.Event | None, push: bool, pull: bool) -> SyncSummary:
    summary = SyncSummary()
    start_requests = client.stats.requests
    if pull:
        with ws.db.session() as s:
            state.put(s, state.LAST_ATTEMPT, utcnow().isoformat())
        try:
            Puller(ws, client, summary, actor=actor, concurrency=concurrency,
                   progress=progress, cancel=cancel).run()
        except SyncCancelled as exc:
            summary.aborted = True
            summary.error(exc.message)
            push = False
        except PortalUnavailableError as exc:
            summary.aborted = True
            summary.error(f"{exc.message} {OFFLINE_HINT}")
            push = False
        except PortalAuthError as exc:
            summary.aborted = True
            summary.error(exc.message)
            push = False
        except PortalError as exc:  # an unusable search page: the cursor did not move
            summary.aborted = True
            summary.error(exc.message)
    sender = OutboxSender(ws, client, summary, actor=actor, practitioner=practitioner)
    if push:
        sender.send_due()
        if not pull:  # an unreachable portal reads the same as after a pull
            summary.errors[:] = [f"{e} {OFFLINE_HINT}" if e.endswith(QUEUED_HINT) else e
                                 for e in summary.errors]
    else:
        sender.count()
    summary.requests = client.stats.requests - start_requests
    summary.finished_at = utcnow()
    with ws.db.session() as s:
        if pull:
            state.put(s, state.LAST_ERROR, summary.errors[0] if summary.errors else None)
            if summary.completed:
                state.put(s, state.LAST_SUCCESS, summary.finished_at.isoformat())
            state.put(s, state.LAST_SUMMARY, json.dumps(summary.as_json()))
        audit.record(s, actor, "portal.sync" if pull else "portal.push", "workspace", None, {
            "completed": summary.completed, "cases_new": summary.cases_new,
            "cases_updated": summary.cases_updated,
            "photos": summary.photos_downloaded, "outbox_sent": summary.outbox_sent,
            "errors": len(summary.errors), "requests": summary.requests,
        })
    log.info("%s finished: completed=%s new=%d updated=%d photos=%d sent=%d requests=%d",
             "sync" if pull else "push", summary.completed, summary.cases_new,
             summary.cases_updated, summary.photos_downloaded, summary.outbox_sent,
             summary.requests)
    return summary


def check_portal(settings: PortalSettings, secret: str, *, timeout: float = 10.0) -> str:
    """Try a portal address and its credentials before they are saved: one search for a
    Task (at most one try per request). Returns a sentence ("Connected to host."); raises
    a :class:`~derm_workstation.portal.errors.PortalError` whose message says plainly
    what is wrong (wrong token, cannot reach, not a FHIR server)."""

    secret = (secret or "").strip()
    if not secret:
        raise InputError("Enter the client secret." if settings.auth == AUTH_CLIENT_CREDENTIALS
                         else "Enter the access token.")
    verify: bool | str = settings.ca_bundle or True
    tokens: TokenProvider
    if settings.auth == AUTH_CLIENT_CREDENTIALS:
        assert settings.token_url and settings.client_id
        tokens = ClientCredentials(settings.token_url, settings.client_id, secret,
                                   scope=settings.scope, timeout=timeout, verify=verify)
    else:
        tokens = StaticToken(secret)
    once = RetryPolicy(max_tries=1, data_tries=1)
    with PortalClient(settings.base_url, tokens, retry=once, connect_timeout=min(5.0, timeout),
                      read_timeout=timeout, verify=verify) as client:
        host = client.host
        try:
            next(iter(client.search_pages("Task", {"status": "requested", "_count": "1"})))
        except PortalAuthError as exc:
            raise PortalAuthError(
                f"The portal at {host} refused the credentials: check the "
                + ("client id and secret." if settings.auth == AUTH_CLIENT_CREDENTIALS
                   else "access token.")) from exc
        except PortalUnavailableError as exc:
            why = re.search(r"\(([^()]+)\)\.?$", exc.message)
            raise PortalUnavailableError(
                f"Cannot reach the portal at {host}" + (f" ({why.group(1)})" if why else "")
                + ": check the address and the network.") from exc
        except PortalDataError as exc:
            raise PortalDataError(
                f"The address answers, but not like a FHIR server ({exc.message}) — "
                "check that it is the portal's FHIR base URL.") from exc
        except PortalRequestError as exc:
            if exc.status == 404:
                raise PortalRequestError(
                    f"{host} answers, but has no FHIR Task search at this address (HTTP 404)"
                    " — check that it is the portal's FHIR base URL.", 404, exc.outcome
                ) from exc
            raise
    return f"Connected to {host}: the portal accepted the credentials."


__all__ = ["OFFLINE_HINT", "SyncBusyError", "check_portal", "connect", "run_sync"]
