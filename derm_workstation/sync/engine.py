"""One full sync: pull from the portal, then push the outbox.

:func:`run_sync` is what the CLI's ``sync`` command, the GUI's "Sync now" and its
periodic timer call (the GUI on its network lane). :func:`connect` builds the
portal client from the saved settings and the keyring, or from a URL and a token
given for one run. Everything already on the workstation stays usable whatever
happens here: a portal that cannot be reached is one clear error in the summary.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from derm_workstation.core import audit
from derm_workstation.core.errors import DermError, InputError
from derm_workstation.core.models import utcnow
from derm_workstation.core.users import SYSTEM, Actor
from derm_workstation.core.workspace import Workspace
from derm_workstation.portal.auth import PortalSettings, StaticToken, provider_from_settings
from derm_workstation.portal.client import PortalClient, RetryPolicy
from derm_workstation.portal.errors import (
    PortalAuthError,
    PortalError,
    PortalUnavailableError,
)
from derm_workstation.sync import state
from derm_workstation.sync.outbox import OutboxSender
from derm_workstation.sync.pull import Progress, Puller, SyncCancelled
from derm_workstation.sync.summary import SyncSummary

log = logging.getLogger(__name__)

_RUNNING = threading.Lock()
OFFLINE_HINT = "Everything already on this workstation can still be used."


class SyncBusyError(DermError):
    """Another sync is running in this process."""


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
             push: bool = True) -> SyncSummary:
    """Pull, then push. Never raises for portal trouble: it is in ``summary.errors``."""
    actor.require("case.edit")
    if not _RUNNING.acquire(blocking=False):
        raise SyncBusyError("A sync is already running.")
    summary = SyncSummary()
    start_requests = client.stats.requests
    try:
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
        else:
            sender.count()
        summary.requests = client.stats.requests - start_requests
        summary.finished_at = utcnow()
        with ws.db.session() as s:
            state.put(s, state.LAST_ERROR, summary.errors[0] if summary.errors else None)
            if summary.completed:
                state.put(s, state.LAST_SUCCESS, summary.finished_at.isoformat())
            state.put(s, state.LAST_SUMMARY, json.dumps(summary.as_json()))
            audit.record(s, actor, "portal.sync", "workspace", None, {
                "completed": summary.completed, "cases_new": summary.cases_new,
                "cases_updated": summary.cases_updated,
                "photos": summary.photos_downloaded, "outbox_sent": summary.outbox_sent,
                "errors": len(summary.errors), "requests": summary.requests,
            })
        log.info("sync finished: completed=%s new=%d updated=%d photos=%d sent=%d requests=%d",
                 summary.completed, summary.cases_new, summary.cases_updated,
                 summary.photos_downloaded, summary.outbox_sent, summary.requests)
        return summary
    finally:
        _RUNNING.release()


__all__ = ["OFFLINE_HINT", "SyncBusyError", "connect", "run_sync"]
