"""Segment a whole cohort: ``lungseg batch ROOT --out OUT`` (:func:`run`).

Four steps, each a small function:

1. **Discovery** (:mod:`.discover`): every folder under ROOT
   (any depth, links followed once, hidden names skipped) is scanned by reading one header per file
   with the content rule of :func:`lungseg.io.dicom.is_dicom`; files are grouped into series by
   SeriesInstanceUID. Non-DICOM files are ignored; damaged ones (unreadable headers, a non-DICOM
   file named ``*.dcm``) go with the series of their folder, whose reading then fails with the very
   message ``predict`` gives.
2. **Plan** (:mod:`.plan`): localizers, non-CT and non-image series are ``skipped`` with their
   reason; of the CT volumes of one study, the series :func:`lungseg.io.series.choose` prefers (the
   rule ``predict`` applies to a folder: axial, original, thinnest, most slices) is segmented and the
   other reconstructions are ``skipped`` naming it (``all_series`` segments every one).
   Each series gets its output folder under OUT, named from its folder relative to ROOT
   (:func:`.plan.output_names`).
3. **Run** (:mod:`.tasks`, executed in-process or on Dask workers, :mod:`.executors`): reads the series
   (:func:`lungseg.io.dicom.load_files`), segments it with the network the worker loaded once
   (:func:`.tasks.worker_network`) and writes ``predict``'s five files through
   :func:`lungseg.inference.predict.segment_series`, in a temporary sibling renamed into place. A folder that
   is already complete with the same model, settings and input files is not recomputed, so a task
   run twice (a worker died after writing) writes its series once.
4. **Cohort table** (:mod:`.table`): ``OUT/cohort.csv``, one row per series found, rewritten
   atomically as series finish, merged under a lock with what other ``--part`` processes wrote.

Tasks carry paths and settings only (:class:`.tasks.Task`): never pixel data or patient attributes.
:mod:`.command` puts the steps together. This package exports the command and the table's names that
other rooms read (the cohort report, the CLI); everything else is imported from its module.
"""

from lungseg.inference.batch.command import BatchError, Summary, resolve_settings, run, summary_dict
from lungseg.inference.batch.table import COHORT, COLUMNS, DONE, FAILED, SKIPPED, cohort_text, read_rows

__all__ = ["BatchError", "COHORT", "COLUMNS", "DONE", "FAILED", "SKIPPED", "Summary", "cohort_text",
           "read_rows", "resolve_settings", "run", "summary_dict"]

