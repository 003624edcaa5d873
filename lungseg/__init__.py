"""lungseg: lung segmentation in chest CT with a 2D UNet (LCTSC 2017, 12 cases).

Modules are named after the steps of the report: ``dicom`` (DICOM -> HU volumes), ``anonymise``,
``cache`` (converted volumes on disk), ``plots``, ``bench``; see README.md.
"""

__version__ = "0.1.0"
