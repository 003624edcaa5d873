"""The ``batch`` command: settings, discovery, plan, run and the cohort table, end to end
(:func:`run`), with the summary it prints."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lungseg.inference import postprocess, predict
from lungseg.inference.batch import executors
from lungseg.inference.batch.discover import (
    SCAN_IN_PROCESS_FILES,
    FolderScan,
    SeriesScan,
    merge_scans,
    scan_item,
    walk,
)
from lungseg.inference.batch.executors import DaskExecutor, InProcess, Lazy, default_workers
from lungseg.inference.batch.plan import BatchError, plan, take_part
from lungseg.inference.batch.table import (
    COHORT,
    COLUMNS,
    DONE,
    FAILED,
    SKIPPED,
    Cohort,
    is_complete,
    read_cohort,
    read_stats,
    remove_stale_cohort_files,
    row,
)
from lungseg.inference.batch.tasks import Outcome, Settings, Task, remove_stale_stages, run_task
from lungseg.io import parallel, writing
from lungseg.network import selection


@dataclass
class Summary:
    """Counts of one batch run, and where its table is."""

    found: int = 0
    done: int = 0
    reused: int = 0
    failed: int = 0
    failed_before: int = 0
    skipped: int = 0
    not_in_part: int = 0
    files: int = 0
    scan_s: float = 0.0
    seconds: float = 0.0
    where: str = ""
    cohort: str = ""
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = 60 * self.done / self.seconds if self.seconds and self.done else 0.0
        out = [f"{self.found} series found ({self.files} files read in {self.scan_s:.1f} s): "
               f"{self.done} segmented now ({rate:.1f} series/min), "
               f"{self.reused} already done, {self.failed + self.failed_before} failed"
               + (f" ({self.failed_before} earlier, not retried: --retry-failed)" if self.failed_before
                  else "")
               + f", {self.skipped} skipped"
               + (f", {self.not_in_part} left to the other parts" if self.not_in_part else "")
               + f"; {self.seconds:.1f} s {self.where}",
               f"cohort table: {self.cohort}"]
        out += [f"failed: {f}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            out.append(f"... and {len(self.failures) - 20} more failures (status 'failed' in the table)")
        return out


def resolve_settings(checkpoint: str | os.PathLike[str] | selection.ModelChoice | None,
                     threshold: float | None, clean: bool | None, device: str, runtime: str,
                     batch_size: int | None, threads: int | None) -> Settings:
    """The model and settings, resolved once in the parent as ``predict`` resolves them (the
    default checkpoint is ``predict``'s), exported for ONNX Runtime once here."""
    choice = predict.choose_model(checkpoint)
    ckpt = choice.path
    weights = predict.weights_file(ckpt)
    threshold, clean = predict.inference_settings(ckpt, threshold, clean)
    try:
        postprocess.check_threshold(threshold)
    except ValueError as err:
        raise predict.PredictError(f"--{err}") from None
    dev = predict.resolve_device(device)
    chosen = predict.resolve_runtime(runtime, dev)
    if chosen == "onnxruntime":
        predict.onnx_export(ckpt)
    else:
        predict.load_checkpoint(ckpt)  # fails here, once, on a checkpoint that is not one
    return Settings(str(ckpt), choice, writing.sha256_file(weights), threshold, clean, dev, chosen,
                    batch_size, threads)


def discover(root: Path, executor: Lazy, progress: bool
             ) -> tuple[list[SeriesScan], list[FolderScan], int]:
    """Scan every folder under ``root``: in this process for a small tree (fewer than
    :data:`SCAN_IN_PROCESS_FILES` files), else on ``executor`` (in parallel on Dask). Returns the
    series, the folders of damaged files without a series, and the number of files."""
    from lungseg.progress import bar as progress_bar

    folders = list(walk(root))
    n_files = sum(len(names) for _, names in folders)
    small = n_files < SCAN_IN_PROCESS_FILES
    scanner = InProcess() if small else executor.get()
    scans = []
    bar = progress_bar(total=len(folders), desc="finding series", unit="folder", disable=not progress,
                       leave=False)
    items = [(str(root), rel, names) for rel, names in folders]
    for item, result in scanner.map_unordered(scan_item, items, window=4 * scanner.workers + 4):
        if isinstance(result, BaseException):
            result = FolderScan(item[1], [], [("", f"{root / item[1]}: could not be scanned ({result})")])
        scans.append(result)
        bar.update()
    bar.close()
    return (*merge_scans(sorted(scans, key=lambda s: s.folder)), n_files)


def _check_paths(root: Path, out: Path) -> None:
    if not root.is_dir():
        raise BatchError(f"input folder not found: {root}")
    try:
        writing.check_not_overlapping(out, [root], "output folder")
    except writing.UnsafeOutputError as exc:
        raise BatchError(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out} exists and is not a folder; choose another --out")


def _progress_bar(total: int, progress: bool):
    from lungseg.progress import bar as progress_bar

    return progress_bar(total=total, desc="segmenting", unit="series", disable=not progress,
                        dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}]{postfix}")


def run(root: str | os.PathLike[str], out: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | selection.ModelChoice | None = None, *,
        workers: int | None = None, scheduler: str | None = None, part: tuple[int, int] | None = None,
        retry_failed: bool = False, all_series: bool = False, threshold: float | None = None,
        clean: bool | None = None, device: str = "auto", runtime: str = "auto", batch_size: int | None = None,
        progress: bool = True) -> Summary:
    """Segment every CT series under ``root`` into ``out`` (see the module's docstring) and return
    the counts. ``workers``: local Dask worker processes (None: :func:`default_workers`; 0: in this
    process);
    ``scheduler``: a Dask scheduler address instead; ``part`` (k, n): every n-th series, in this
    process, for job arrays. Series already complete with the same model and settings are kept;
    failed ones are retried with ``retry_failed``."""
    t0 = time.perf_counter()
    root, out = Path(root).absolute(), Path(out).absolute()
    _check_paths(root, out)
    if not executors.have_dask():
        if scheduler:
            raise BatchError("--scheduler needs Dask: pip install 'lungseg[cohort]'")
        if workers != 0 and part is None:
            warnings.warn("Dask is not installed (pip install 'lungseg[cohort]'): the series run one by one "
                          "in this process", executors.CohortNote, stacklevel=2)
        workers = 0
    in_process = part is not None or (workers == 0 and not scheduler)
    settings = resolve_settings(checkpoint, threshold, clean, device, runtime, batch_size,
                                parallel.cores() if in_process else None)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_cohort_files(out)
    executor = Lazy(lambda: InProcess() if in_process else
                     DaskExecutor(scheduler, workers or default_workers()))
    try:
        return _run(root, out, settings, executor, part, retry_failed, all_series, progress, t0)
    finally:
        executor.close()


def _run(root: Path, out: Path, settings: Settings, executor: Lazy,
         part: tuple[int, int] | None, retry_failed: bool, all_series: bool, progress: bool,
         t0: float) -> Summary:
    if not (out / COHORT).exists():  # a first run: start the cluster while the tree is scanned
        executor.start_in_background(settings)
    t_scan = time.perf_counter()
    series, orphans, n_files = discover(root, executor, progress)
    scan_s = time.perf_counter() - t_scan
    entries = plan(series, all_series)
    tasks = {e.output: Task(str(root), str(out), e.scan.folder, tuple(e.scan.files + e.scan.extra_files),
                            e.scan.uid, e.output, e.scan.key, settings, e.scan.input)
             for e in entries if e.status == "todo"}
    mine = take_part(entries, part)
    cohort = Cohort(out, entries, {k: t.fingerprint for k, t in tasks.items()}, [e.output for e in mine])
    for scan in orphans:
        name, message = scan.bad[0]
        more = f" (and {len(scan.bad) - 1} more damaged files)" if len(scan.bad) > 1 else ""
        cohort.extra.append({**dict.fromkeys(COLUMNS, ""), "source": scan.folder, "status": FAILED,
                             "message": message + more})
    remove_stale_stages(out, [e.output for e in mine])  # left by a crash: no one else writes these
    summary = Summary(found=len(entries), skipped=sum(e.status == SKIPPED for e in entries),
                      not_in_part=len(tasks) - len(mine), where="(nothing left to segment)",
                      cohort=str(cohort.path), failed=len(orphans), files=n_files, scan_s=scan_s)
    summary.failures += [r["message"] for r in cohort.extra]
    undecided = [e for e in entries if e.status == FAILED]  # the plan's: series that tie in a study
    summary.failed += len(undecided)
    summary.failures += list(dict.fromkeys(f"{e.scan.folder}: {e.reason}" for e in undecided))  # once a study
    previous = read_cohort(cohort.path)
    model = settings.choice.name or settings.checkpoint
    to_run = []
    for e in mine:
        task, folder = tasks[e.output], out / e.output
        before = previous.get((e.scan.folder, e.scan.uid), {})
        if is_complete(folder, task.fingerprint):
            seconds = (float(before["seconds"]) if before.get("status") == DONE and before.get("seconds")
                       else None)
            cohort.rows[e.output] = row(e, DONE, before.get("message", ""), read_stats(folder), seconds)
            summary.reused += 1
        elif (before.get("status") == FAILED and not retry_failed
              and before.get("model") == model and before.get("output") == e.output):
            cohort.rows[e.output] = before
            summary.failed_before += 1
            summary.failures.append(f"{e.scan.folder}: {before.get('message', '')}")
        else:
            to_run.append(task)
    cohort.write()
    # Largest series first: the last ones to finish are then short, and no worker idles long at the end.
    to_run.sort(key=lambda t: -len(t.files))
    bar = _progress_bar(len(to_run), progress)
    by_output = {e.output: e for e in entries}
    if to_run:
        summary.where = executor.get().description
    for task, outcome in (executor.get().map_unordered(run_task, to_run) if to_run else ()):
        if isinstance(outcome, BaseException):
            outcome = Outcome(task.output, FAILED, f"the worker segmenting it died repeatedly ({outcome})")
        e = by_output[task.output]
        cohort.rows[task.output] = row(e, outcome.status, outcome.message, outcome.stats or None,
                                       outcome.seconds if not outcome.reused else None, model)
        if outcome.status == DONE:
            summary.done += not outcome.reused
            summary.reused += outcome.reused
        else:
            summary.failed += 1
            summary.failures.append(f"{e.scan.folder}: {outcome.message}")
        cohort.write(force=outcome.status == FAILED)
        bar.update()
        minutes = bar.format_dict["elapsed"] / 60
        bar.set_postfix_str(f"done {summary.done + summary.reused}, failed {summary.failed}, "
                            f"{summary.done / minutes if minutes else 0:.1f} series/min", refresh=False)
    bar.close()
    remove_stale_stages(out, [t.output for t in to_run])  # left by workers that died in this run
    cohort.write()
    summary.seconds = time.perf_counter() - t0
    return summary


def summary_dict(summary: Summary) -> dict:
    return asdict(summary)
