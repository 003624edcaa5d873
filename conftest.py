"""Test-session settings, loaded before any test module or notebook imports lungseg.

The tests train, record and cache into their own build folder, so that nothing they make can become
what a user's commands resolve to (``build/runs/reports``, the default model of ``predict``), and the
notebooks checked by nbval evaluate the smoke profile the tests trained, named explicitly.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ["LUNGSEG_BUILD"] = os.environ.get("LUNGSEG_TEST_BUILD") or str(ROOT / ".build-tests")
os.environ["LUNGSEG_PROFILE"] = "quick"
