"""``sync``, ``login`` and ``outbox``: the portal from the command line.

* ``sync [--portal-url URL --token-stdin] [--json]`` — one full sync (pull, then push
  the outbox). A token read from stdin is used for this run only, never stored.
  Exit 0 only when the sync completed; otherwise the summary is still printed and one
  ``error:`` line says why.
* ``login --portal-url URL (--token-stdin | --client-id ID --token-url URL
  --secret-stdin)`` — keeps the portal address (``portal.json`` in the data folder)
  and the secret (OS keyring only).
* ``logout`` — forgets the saved portal (``portal.json``) and its keyring secrets.
* ``outbox list [--state S] [--json]``, ``outbox retry ID``.

Only one sync per data folder runs at a time (also against the window): a second one
exits 1 at once with "another sync is running on this workstation".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from derm_workstation.commands import Context, open_workspace, print_json, split_values
from derm_workstation.core.errors import InputError


def register(sub: Any, ctx: Context) -> None:
    sp = sub.add_parser("sync", help="pull new cases from the portal, then send the outbox",
                        parents=[ctx.store])
    sp.add_argument("--portal-url", metavar="URL",
                    help="the portal's FHIR base URL (default: the one saved by login)")
    sp.add_argument("--token-stdin", action="store_true",
                    help="read the bearer token from stdin; used for this run, not stored")
    sp.add_argument("--concurrency", type=int, default=4, metavar="N",
                    help="parallel downloads (default 4)")
    sp.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="seconds to wait for the portal to answer (default 30)")
    sp.add_argument("--tries", type=int, default=5, metavar="N",
                    help="tries per request on network errors and 5xx (default 5)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(func=cmd_sync)

    lg = sub.add_parser("login", help="store the portal address and credentials (keyring)",
                        parents=[ctx.store])
    lg.add_argument("--portal-url", metavar="URL", required=True,
                    help="the portal's FHIR base URL, e.g. https://portal.example.org/fhir")
    lg.add_argument("--token-stdin", action="store_true",
                    help="read a bearer token from stdin and keep it in the keyring")
    lg.add_argument("--client-id", metavar="ID", help="OAuth2 client-credentials client id")
    lg.add_argument("--token-url", metavar="URL", help="OAuth2 token endpoint")
    lg.add_argument("--secret-stdin", action="store_true",
                    help="read the OAuth2 client secret from stdin (kept in the keyring)")
    lg.add_argument("--scope", metavar="SCOPE", help="OAuth2 scope to ask for")
    lg.add_argument("--practitioner", metavar="REF",
                    help="FHIR reference for you as Task owner and sender, e.g. "
                         "Practitioner/123 (default: your user name)")
    lg.add_argument("--ca-bundle", metavar="FILE",
                    help="CA certificates for a clinic's own certificate authority")
    lg.add_argument("--check", action="store_true",
                    help="try the credentials against the portal before saving")
    lg.add_argument("--json", action="store_true", help="print JSON")
    lg.set_defaults(func=cmd_login)

    lo = sub.add_parser("logout", help="forget the saved portal and its credentials",
                        parents=[ctx.store])
    lo.add_argument("--json", action="store_true", help="print JSON")
    lo.set_defaults(func=cmd_logout)

    ob = ctx.group(sub, "outbox", "changes waiting to be sent to the portal")
    ol = ob.add_parser("list", help="list outbox items (newest first)", parents=[ctx.store])
    ol.add_argument("--state", action="append", metavar="S",
                    help="only pending, sent or failed (repeat or comma-separate)")
    ol.add_argument("--json", action="store_true", help="print JSON")
    ol.set_defaults(func=cmd_outbox_list)
    orr = ob.add_parser("retry", help="send a failed item again with the next sync",
                        parents=[ctx.store])
    orr.add_argument("item_id", metavar="ID", help="outbox item id (or its first 8+ characters)")
    orr.add_argument("--json", action="store_true", help="print JSON")
    orr.set_defaults(func=cmd_outbox_retry)


def read_secret(what: str) -> str:
    """A secret from stdin (a prompt without echo when stdin is a terminal)."""
    if sys.stdin is None:
        raise InputError(f"No {what} on stdin.")
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{what.capitalize()}: ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise InputError(f"The {what} read from stdin is empty.")
    return value


def _print_summary(summary: Any) -> None:
    print(f"New cases: {summary.cases_new}   Updated: {summary.cases_updated}")
    print(f"Photos downloaded: {summary.photos_downloaded} ({summary.bytes / 1e6:.1f} MB)")
    print(f"Sent to the portal: {summary.outbox_sent}   Waiting: {summary.outbox_pending}   "
          f"Failed (needs attention): {summary.outbox_failed}")
    for _case_id, notice in summary.notices:
        print(f"Notice: {notice}")
    for w in summary.warnings:
        print(f"Warning: {w}")
    for e in summary.errors:
        print(f"Problem: {e}")
    print(f"HTTP requests: {summary.requests}")


def cmd_sync(args: argparse.Namespace) -> int:
    from derm_workstation.core.users import local_actor
    from derm_workstation.portal.client import RetryPolicy
    from derm_workstation.sync.engine import connect, run_sync

    if args.concurrency < 1 or args.concurrency > 32:
        raise InputError("--concurrency must be between 1 and 32.")
    if args.timeout <= 0:
        raise InputError("--timeout must be more than 0 seconds.")
    if args.tries < 1:
        raise InputError("--tries must be at least 1.")
    if args.token_stdin and not args.portal_url:
        raise InputError("--token-stdin needs --portal-url.")
    token = read_secret("token") if args.token_stdin else None
    ws = open_workspace(args)
    try:
        client, saved = connect(ws.paths.root, portal_url=args.portal_url, token=token,
                                retry=RetryPolicy(max_tries=args.tries),
                                read_timeout=args.timeout,
                                pool_size=max(8, args.concurrency * 2 + 2))
        try:
            practitioner = saved.practitioner if saved and saved.base_url == client.base_url \
                else None
            summary = run_sync(ws, client, actor=local_actor(), practitioner=practitioner,
                               concurrency=args.concurrency)
        finally:
            client.close()
    finally:
        ws.close()
    if args.json:
        print_json(summary.as_json())
    else:
        _print_summary(summary)
    if not summary.completed:
        first = summary.errors[0] if summary.errors else "the sync did not complete"
        more = f" (and {len(summary.errors) - 1} more problem(s))" \
            if len(summary.errors) > 1 else ""
        print(f"error: {first}{more}", file=sys.stderr)
        return 1
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from derm_workstation.core.paths import resolve_data_paths
    from derm_workstation.portal import auth

    oauth = bool(args.client_id or args.token_url or args.secret_stdin)
    if oauth and args.token_stdin:
        raise InputError("Give either --token-stdin or the OAuth2 client credentials, not both.")
    if oauth and not (args.client_id and args.token_url and args.secret_stdin):
        raise InputError("OAuth2 client credentials need --client-id, --token-url and "
                         "--secret-stdin.")
    if not oauth and not args.token_stdin:
        raise InputError("Give --token-stdin (a bearer token) or OAuth2 client credentials.")
    if oauth:
        auth.normalize_base_url(args.token_url)  # same URL checks as the portal address
    settings = auth.PortalSettings(
        base_url=args.portal_url,
        auth=auth.AUTH_CLIENT_CREDENTIALS if oauth else auth.AUTH_BEARER,
        token_url=args.token_url if oauth else None,
        client_id=args.client_id if oauth else None,
        scope=args.scope,
        practitioner=args.practitioner,
        ca_bundle=args.ca_bundle,
    )
    secret = read_secret("client secret" if oauth else "token")
    checked = False
    if args.check:
        from derm_workstation.sync.engine import check_portal

        check_portal(settings, secret)
        checked = True
    paths = resolve_data_paths(args.data_dir).ensure(writable=True)
    saved = auth.save_login(paths.root, settings, secret)
    _audit_portal(args, audit_action="portal.connect", url=settings.base_url)
    result = {"portal_url": settings.base_url, "auth": settings.auth,
              "settings_file": str(saved), "keyring_service": auth.KEYRING_SERVICE,
              "checked": checked}
    if args.json:
        print_json(result)
    else:
        print(f"Portal {settings.base_url} saved ({settings.auth}); the secret is in the "
              "system keyring." + (" The portal accepted it." if checked else ""))
    return 0


def _audit_portal(args: argparse.Namespace, *, audit_action: str, url: str) -> None:
    """The audit trail of the data folder: the portal's host only, never the secret."""
    from derm_workstation.core import audit
    from derm_workstation.core.users import local_actor
    from derm_workstation.portal.auth import portal_host

    ws = open_workspace(args)
    try:
        audit.record_portal(ws, local_actor(), audit_action, portal_host(url))
    finally:
        ws.close()


def cmd_logout(args: argparse.Namespace) -> int:
    from derm_workstation.core.paths import resolve_data_paths
    from derm_workstation.portal import auth

    paths = resolve_data_paths(getattr(args, "data_dir", None)).ensure(writable=True)
    forgotten = auth.disconnect(paths.root)
    if forgotten:
        _audit_portal(args, audit_action="portal.disconnect", url=forgotten)
    if args.json:
        print_json({"forgotten": forgotten})
    elif forgotten:
        print(f"Portal {forgotten} forgotten; its credentials were removed from the keyring.")
    else:
        print("No portal was saved.")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from derm_workstation.core.models import OUTBOX_STATES
    from derm_workstation.core.portal_actions import PortalActions
    from derm_workstation.core.users import local_actor

    states = split_values(args.state)
    for st in states or ():
        if st not in OUTBOX_STATES:
            raise InputError(f"Unknown state '{st}'. Choose one of: {', '.join(OUTBOX_STATES)}.")
    ws = open_workspace(args)
    try:
        items = PortalActions(ws, local_actor()).outbox(states)
    finally:
        ws.close()
    if args.json:
        print_json([i.as_json() for i in items])
        return 0
    if not items:
        print("The outbox is empty.")
    for i in items:
        line = (f"{i.id[:8]}  {i.created_at:%Y-%m-%d %H:%M}  {i.kind:<14} "
                f"{i.case_number or (i.case_id or '')[:8]:<16} {i.state_label}")
        if i.attempts:
            line += f" ({i.attempts} tries)"
        print(line)
        if i.last_error and i.state != "sent":
            print(f"          {i.last_error}")
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from derm_workstation.core.portal_actions import PortalActions
    from derm_workstation.core.users import local_actor

    ws = open_workspace(args)
    try:
        view = PortalActions(ws, local_actor()).retry(args.item_id)
    finally:
        ws.close()
    if args.json:
        print_json(view.as_json())
    else:
        print(f"Outbox item {view.id[:8]} will be sent with the next sync.")
    return 0
