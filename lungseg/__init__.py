"""lungseg: lung segmentation in chest CT with a 2D UNet (LCTSC 2017, 12 cases).

The subpackages follow the pipeline, each importing only those below it (the import contract in
pyproject.toml, checked by tests/test_layers.py; docs/code.md):

- ``io``: DICOM → HU volumes, the cache, de-identification, safe writing, NIfTI/SEG/RTSTRUCT exports;
- ``network``: the UNet, the training config and profiles, preprocessing, the run registry;
- ``inference``: logits (PyTorch or ONNX Runtime), post-processing, right/left split, quality control,
  ``predict`` and ``batch``;
- ``train``: the training loop (``lungseg train``) and data parallelism;
- ``evaluation``: metrics in mm, evaluation, the tuning rule, cross-validation, QC calibration;
- ``report``: the papermill runner (``lungseg report``), figures, tables, README blocks,
  the viewer, the cohort report, the released model, benchmarks.

Top level: ``cli`` (``python -m lungseg``), ``paths`` and ``progress`` (the one progress bar).
"""

__version__ = "0.1.0"
