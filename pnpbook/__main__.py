"""``python -m pnpbook``: the command-line tool (see :mod:`pnpbook.cli`)."""
from pnpbook.cli import main

raise SystemExit(main())
