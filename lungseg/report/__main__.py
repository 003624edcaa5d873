"""``python -m lungseg.report``: the papermill runner (:func:`lungseg.report.report.main`)."""

from lungseg.report.report import main

raise SystemExit(main())
