"""Who is acting, and what they may do.

Every service call takes an :class:`Actor`. Sign-in and role management come in a
later issue; until then the workstation acts as a local dermatologist account.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from derm_workstation.core.errors import PermissionDeniedError

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "dermatologist": frozenset({"case.view", "case.list", "case.edit", "data.seed"}),
    "nurse": frozenset({"case.view", "case.list", "case.triage"}),
    "admin": frozenset({"case.list", "data.seed"}),
    "system": frozenset({"case.view", "case.list", "case.edit", "data.seed"}),
}


@dataclass(frozen=True)
class Actor:
    username: str
    role: str = "dermatologist"

    def can(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise PermissionDeniedError(
                f"Your role ({self.role}) does not allow this ({permission})."
            )


def local_actor() -> Actor:
    try:
        name = getpass.getuser()
    except Exception:  # no login name available (some containers)
        name = "local"
    return Actor(username=name, role="dermatologist")


SYSTEM = Actor(username="system", role="system")
