"""``python -m lungseg.train``: training without the notebook (:func:`lungseg.train.train.main`)."""

from lungseg.train.train import main

raise SystemExit(main())
