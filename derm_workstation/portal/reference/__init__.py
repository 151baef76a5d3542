"""The reference portal: a FHIR R4 server that implements docs/PORTAL_CONTRACT.md.

For demos, training and tests: it holds synthetic cases (seeded from the demo dataset)
in its own SQLite file, speaks exactly the interactions the workstation uses, and can
inject the faults of a bad clinic network. Start it in-process with
:meth:`derm_workstation.portal.reference.server.ReferencePortal.start`, or standalone
with ``derm-workstation portal serve``.
"""

from __future__ import annotations

from derm_workstation.portal.reference.faults import FaultSpec, FaultSpecError
from derm_workstation.portal.reference.server import ReferencePortal, RequestRecord

__all__ = ["FaultSpec", "FaultSpecError", "ReferencePortal", "RequestRecord"]
