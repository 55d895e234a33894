"""``python -m pnpbook``: the command-line tool (see :mod:`pnpbook.cli`)."""
from pnpbook.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
