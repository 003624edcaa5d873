"""``python -m lungseg.report``: an alias of ``lungseg report`` (what ``./run_all.sh`` calls)."""

import sys

from lungseg.cli import main

raise SystemExit(main(["report", *sys.argv[1:]]))
