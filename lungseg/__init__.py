"""lungseg: lung segmentation in chest CT with a 2D UNet (LCTSC 2017, 12 cases).

The modules follow the pipeline (README, "How the code is organised"):

- read and write: ``dicom``, ``orient``, ``cache``, ``anonymise``, ``writing``, ``export``, ``rtstruct``;
- train: ``config``, ``data``, ``model``, ``losses``, ``train``, ``distributed``, ``speed``, ``runs``,
  ``release``;
- infer: ``inference``, ``runtime``, ``postprocess``, ``sides``, ``predict``;
- evaluate: ``metrics``, ``evaluate``, ``crossval``;
- report: ``report`` (the papermill runner), ``render`` (HTML), ``plots``, ``tables``, ``readme``,
  ``viewer``, ``bench``, ``bench_train``;
- the command line: ``cli``, ``paths``.
"""

__version__ = "0.1.0"
