"""Portal › Connect to portal…: the portal's address and how the workstation signs in.

Layout from ``ui/portal_dialog.ui``. A bearer token, or OAuth2 client credentials (token
URL, client id, secret). **Test connection** asks the portal on the network lane
(:func:`derm_workstation.sync.engine.check_portal`) and says "Connected" or the plain
reason. **Save** stores the secret in the OS keyring and the address in ``portal.json``
through :func:`derm_workstation.portal.auth.save_login` — the same storage as the CLI's
``login``, so the CLI and the window share it. **Disconnect** forgets both
(:func:`derm_workstation.portal.auth.disconnect`). Secrets are never written to a file,
a setting or the log; a secret field left empty keeps the one already in the keyring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog, QWidget

from derm_workstation.qt.dialogs.qt_errors import user_message
from derm_workstation.qt.forms.portal_dialog import Ui_PortalDialog
from derm_workstation.qt.tasks import QtTaskManager

if TYPE_CHECKING:
    from derm_workstation.core.users import Actor
    from derm_workstation.core.workspace import Workspace
    from derm_workstation.portal.auth import PortalSettings

log = logging.getLogger(__name__)

_OK = "color: #4cd07d; font-weight: bold;"
_BAD = "color: #ff6b6b; font-weight: bold;"
_BUSY = "color: #9aa3ad;"
KEEP_SECRET_HINT = "Saved in the keyring — leave empty to keep it"


@dataclass(frozen=True)
class SavedPortal:
    """What is saved now (read on a worker thread): the settings, which secret exists."""

    settings: PortalSettings | None
    has_token: bool = False
    has_client_secret: bool = False
    problem: str | None = None  # a damaged portal.json, an unusable keyring


def read_saved(data_dir: Path) -> SavedPortal:
    """Worker thread: the saved portal settings and whether their secret is in the keyring."""
    from derm_workstation.core.errors import DermError
    from derm_workstation.portal import auth

    try:
        settings = auth.PortalSettings.load(data_dir)
    except DermError as exc:
        return SavedPortal(None, problem=exc.message)
    if settings is None:
        return SavedPortal(None)
    try:
        has_token = auth.load_token(settings.base_url) is not None
        has_secret = auth.load_client_secret(settings.base_url) is not None
    except DermError as exc:
        return SavedPortal(settings, problem=exc.message)
    return SavedPortal(settings, has_token, has_secret)


class QtPortalDialog(QDialog):
    #: The saved portal changed (saved or disconnected): the window re-reads it.
    changed = Signal()
    #: A connection test ended: (connected, the sentence shown).
    tested = Signal(bool, str)
    #: The saved settings were read and shown.
    loaded = Signal()

    def __init__(self, tasks: QtTaskManager, data_dir: Path,
                 session_portal: str | None = None, parent: QWidget | None = None, *,
                 workspace: Workspace | None = None, actor: Actor | None = None) -> None:
        """``session_portal``: a portal the window syncs with for this session only (the
        demo), shown when nothing is saved. ``workspace``/``actor``: where and as whom
        connecting and disconnecting are written to the audit trail (host only)."""
        super().__init__(parent)
        self.setObjectName("portalDialog")
        self.tasks = tasks
        self.data_dir = Path(data_dir)
        self.workspace = workspace
        self.actor = actor
        self.session_portal = session_portal
        self.saved: SavedPortal | None = None
        self._busy = False
        self.ui = ui = Ui_PortalDialog()
        ui.setupUi(self)
        for name, widget in (("portalUrlEdit", ui.urlEdit), ("portalAuthCombo", ui.authCombo),
                             ("portalTokenEdit", ui.tokenEdit),
                             ("portalTokenUrlEdit", ui.tokenUrlEdit),
                             ("portalClientIdEdit", ui.clientIdEdit),
                             ("portalSecretEdit", ui.secretEdit),
                             ("portalIntervalSpin", ui.intervalSpin),
                             ("portalTestButton", ui.testButton),
                             ("portalDisconnectButton", ui.disconnectButton),
                             ("portalSaveButton", ui.saveButton),
                             ("portalCloseButton", ui.closeButton)):
            widget.setObjectName(name)
        ui.authCombo.currentIndexChanged.connect(lambda i: self._auth_changed(i == 1))
        self._auth_changed(False)
        ui.testButton.clicked.connect(self.test_connection)
        ui.saveButton.clicked.connect(self.save)
        ui.disconnectButton.clicked.connect(self.disconnect_portal)
        for edit in (ui.urlEdit, ui.tokenEdit, ui.tokenUrlEdit, ui.clientIdEdit, ui.secretEdit):
            edit.textEdited.connect(lambda _t: self._set_result("", _BUSY))
        self.resize(640, 380)
        self._set_enabled(False)
        self.reload()

    # -- reading -----------------------------------------------------------------------------
    def reload(self) -> None:
        data_dir = self.data_dir
        self.tasks.run_db(lambda: read_saved(data_dir), self._show_saved, self._failed)

    def _show_saved(self, saved: SavedPortal) -> None:
        from derm_workstation.portal.auth import AUTH_CLIENT_CREDENTIALS, portal_host

        self.saved = saved
        ui = self.ui
        st = saved.settings
        if st is not None:
            ui.currentLabel.setText(f"Connected to the portal at <b>{portal_host(st.base_url)}"
                                    "</b>. Changes here replace it.")
            ui.urlEdit.setText(st.base_url)
            ui.authCombo.setCurrentIndex(1 if st.auth == AUTH_CLIENT_CREDENTIALS else 0)
            ui.tokenUrlEdit.setText(st.token_url or "")
            ui.clientIdEdit.setText(st.client_id or "")
            ui.intervalSpin.setValue(max(1, round(st.sync_interval_s / 60)))
        elif self.session_portal:
            ui.currentLabel.setText(
                f"This session syncs with <b>{portal_host(self.session_portal)}</b> "
                "(demo portal); nothing is saved. Save a portal to keep it.")
        else:
            ui.currentLabel.setText("Not connected to a portal: cases already on this "
                                    "workstation can be used, but nothing new arrives.")
        ui.tokenEdit.setPlaceholderText(KEEP_SECRET_HINT if saved.has_token else "")
        ui.secretEdit.setPlaceholderText(KEEP_SECRET_HINT if saved.has_client_secret else "")
        if saved.problem:
            self._set_result(saved.problem, _BAD)
        self._set_enabled(True)
        self.loaded.emit()

    # -- helpers -----------------------------------------------------------------------------
    def _auth_changed(self, oauth: bool) -> None:
        ui = self.ui
        form = ui.portalForm
        form.setRowVisible(ui.tokenEdit, not oauth)
        for w in (ui.tokenUrlEdit, ui.clientIdEdit, ui.secretEdit):
            form.setRowVisible(w, oauth)
        self._set_result("", _BUSY)

    @property
    def oauth(self) -> bool:
        """OAuth2 client credentials are chosen (else a bearer token)."""
        return self.ui.authCombo.currentIndex() == 1

    def _set_enabled(self, enabled: bool) -> None:
        ui = self.ui
        for w in (ui.testButton, ui.saveButton):
            w.setEnabled(enabled)
        saved = self.saved is not None and self.saved.settings is not None
        ui.disconnectButton.setEnabled(enabled and (saved or bool(self.session_portal)))

    def _set_result(self, text: str, style: str) -> None:
        self.ui.resultLabel.setText(text)
        self.ui.resultLabel.setStyleSheet(style)

    def result_text(self) -> str:
        """The sentence under the form (test result or problem)."""
        return self.ui.resultLabel.text()

    def _failed(self, exc: BaseException) -> None:
        self._busy = False
        self._set_result(user_message(exc), _BAD)
        self._set_enabled(True)

    def settings_from_form(self) -> tuple[PortalSettings, str]:
        """(settings, secret typed — '' to keep the saved one). Raises InputError with a
        plain sentence for a missing or malformed field."""
        from derm_workstation.core.errors import InputError
        from derm_workstation.portal import auth

        ui = self.ui
        url = ui.urlEdit.text().strip()
        if not url:
            raise InputError("Enter the portal's address, e.g. https://portal.example.org/fhir")
        oauth = self.oauth
        token_url = ui.tokenUrlEdit.text().strip() or None
        client_id = ui.clientIdEdit.text().strip() or None
        if oauth:
            if not token_url:
                raise InputError("Enter the OAuth2 token URL.")
            auth.normalize_base_url(token_url)
            if not client_id:
                raise InputError("Enter the OAuth2 client id.")
        previous = self.saved.settings if self.saved is not None else None
        base = auth.normalize_base_url(url)
        same = previous is not None and previous.base_url == base
        settings = auth.PortalSettings(
            base_url=base,
            auth=auth.AUTH_CLIENT_CREDENTIALS if oauth else auth.AUTH_BEARER,
            token_url=token_url if oauth else None,
            client_id=client_id if oauth else None,
            scope=previous.scope if same and previous and oauth else None,
            practitioner=previous.practitioner if same and previous else None,
            ca_bundle=previous.ca_bundle if same and previous else None,
            sync_interval_s=ui.intervalSpin.value() * 60,
        )
        secret = (ui.secretEdit if oauth else ui.tokenEdit).text().strip()
        return settings, secret

    def _secret_or_saved(self, settings: PortalSettings, secret: str) -> str:
        """Worker thread: the typed secret, else the one in the keyring for this portal."""
        from derm_workstation.core.errors import InputError
        from derm_workstation.portal import auth

        if secret:
            return secret
        oauth = settings.auth == auth.AUTH_CLIENT_CREDENTIALS
        stored = (auth.load_client_secret(settings.base_url) if oauth
                  else auth.load_token(settings.base_url))
        if not stored:
            raise InputError("Enter the client secret." if oauth else "Enter the access token.")
        return stored

    def _start(self, status: str | None = None) -> tuple[PortalSettings, str] | None:
        """Read the form and lock it for a background action (``status`` shown while it
        runs); a form error is shown instead and None returned."""
        try:
            form = self.settings_from_form()
        except Exception as exc:
            self._set_result(user_message(exc), _BAD)
            return None
        self._busy = True
        self._set_enabled(False)
        if status is not None:
            self._set_result(status, _BUSY)
        return form

    # -- actions -----------------------------------------------------------------------------
    def test_connection(self) -> None:
        """Ask the portal (network lane) whether it accepts these credentials."""
        if self._busy:
            return
        form = self._start("Testing the connection…")
        if form is None:
            self.tested.emit(False, self.result_text())
            return
        settings, secret = form

        def work() -> str:
            from derm_workstation.sync.engine import check_portal

            return check_portal(settings, self._secret_or_saved(settings, secret))

        self.tasks.run_net(work, self._test_ok, self._test_failed)

    def _test_ok(self, sentence: str) -> None:
        self._busy = False
        self._set_result(f"Connected. {sentence}", _OK)
        self._set_enabled(True)
        self.tested.emit(True, self.result_text())

    def _test_failed(self, exc: BaseException) -> None:
        self._failed(exc)
        self.tested.emit(False, self.result_text())

    def save(self) -> None:
        """Keep the portal: secret to the keyring, address to portal.json (database lane)."""
        if self._busy:
            return
        form = self._start()
        if form is None:
            return
        settings, secret = form
        data_dir = self.data_dir

        def work() -> str:
            from derm_workstation.portal import auth

            auth.save_login(data_dir, settings, self._secret_or_saved(settings, secret))
            self._audit("portal.connect", settings.base_url)
            return settings.base_url

        self.tasks.run_db(work, self._saved, self._failed)

    def _saved(self, base_url: str) -> None:
        from derm_workstation.portal.auth import portal_host

        self._busy = False
        self.ui.tokenEdit.clear()
        self.ui.secretEdit.clear()
        self._set_result(f"Saved. The workstation now syncs with {portal_host(base_url)}.",
                         _OK)
        self.changed.emit()
        self.reload()

    def disconnect_portal(self) -> None:
        """Forget the saved portal and remove its secrets from the keyring."""
        if self._busy:
            return
        self._busy = True
        self._set_enabled(False)
        data_dir = self.data_dir

        def work() -> str | None:
            from derm_workstation.portal import auth

            forgotten = auth.disconnect(data_dir)
            if forgotten:
                self._audit("portal.disconnect", forgotten)
            return forgotten

        self.tasks.run_db(work, self._disconnected, self._failed)

    def _audit(self, action: str, base_url: str) -> None:
        """Worker thread: note the (dis)connection in the audit trail — the host only."""
        ws = self.workspace
        if ws is None:
            return
        from derm_workstation.core import audit
        from derm_workstation.core.users import local_actor
        from derm_workstation.portal.auth import portal_host

        audit.record_portal(ws, self.actor or local_actor(), action, portal_host(base_url))

    def _disconnected(self, _forgotten: str | None) -> None:
        self._busy = False
        ui = self.ui
        for edit in (ui.urlEdit, ui.tokenEdit, ui.tokenUrlEdit, ui.clientIdEdit, ui.secretEdit):
            edit.clear()
        ui.authCombo.setCurrentIndex(0)
        self.session_portal = None
        self._set_result("Disconnected: the portal's address and credentials were removed "
                         "from this workstation.", _OK)
        self.changed.emit()
        self.reload()
