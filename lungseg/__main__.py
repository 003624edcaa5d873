"""``python -m lungseg``: the command line of :mod:`lungseg.cli`."""

import sys

from .cli import main

sys.exit(main())
