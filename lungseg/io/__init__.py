"""Read and write: which series of a study to read (``series``, from the facts of one header scan
shared by every command: ``headers``), DICOM series to HU volumes
(``dicom``: headers and volume; ``pixels``: pixel data to HU; ``errors``: what reading raises;
``orient``), the data set's lung masks (``masks``), NIfTI/NRRD/MetaImage files to the
same volumes (``imagefile``), the memory-mapped volume cache (``cache``), per-case jobs on
every core (``parallel``), de-identification (``anonymise``, by the profile in ``deid_profile``,
keeping what the IOD requires: ``iod``), safe writing (``writing``), the exports
(NIfTI and DICOM SEG: ``export``; RTSTRUCT: ``rtstruct``) and the one overlay helper with
``predict``'s overview image (``overlay``), and series copied from a real one under new UIDs for
the demo cohort (``derive``).
Imports nothing of lungseg above it and no torch (the import contract in pyproject.toml).
"""
