"""``python -m derm_workstation``: same as the ``derm-workstation`` command."""

import sys

from derm_workstation.cli import main

if __name__ == "__main__":
    sys.exit(main())
