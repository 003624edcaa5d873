"""``python -m lungseg.train`` (and ``torchrun -m lungseg.train``): an alias of ``lungseg train``."""

import sys

from lungseg.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
