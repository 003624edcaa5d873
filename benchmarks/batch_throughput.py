"""Throughput of ``python -m lungseg batch`` against a loop of ``python -m lungseg predict``
processes on the same series, in one run (issue 18), and peak memory per worker.

    python benchmarks/batch_throughput.py [--checkpoint models/lungseg-cpu-lctsc12]
        [--cases Case_000,...,Case_007] [--save figures]

Measured, one after the other on the same machine:

1. a loop of ``predict`` processes, one per series (the export of the checkpoint made beforehand),
   then ``batch`` with its default, a local Dask cluster of one worker per core; ``--repeat`` such
   pairs, alternating, so that a change in the machine's load hits both; the pair of median speed-up
   is reported with every pair's speed-up and load;
3. ``batch --workers 0`` (in one process, no Dask);
4. ``batch --scheduler`` on a 2-worker cluster started from the shell (``dask scheduler`` and
   ``dask worker --nworkers 2 --nthreads 1``, on 127.0.0.1), the cluster's start-up timed apart, and
   the default right after it (their ratio is the "within 10 %" check);
5. the default ``batch`` on all 12 cases (the README's measured row; its cohort.csv gives the
   worker seconds per series, and the wall time minus their share per worker the fixed cost: start-up,
   discovery, the last series' tail; the extrapolations use both).

Masks are compared (NIfTI arrays of every output against the loop's). Peak memory is the high-water
mark (``VmHWM``) of each worker process, polled every 0.1 s, and of each ``predict`` process (its
rusage). Prints the JSON; ``--save DIR`` writes ``DIR/batch_timing.json``, from which the README's
table is generated (``lungseg.report.readme``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

from lungseg import paths
from lungseg.inference import batch, predict
from lungseg.io import parallel, writing
from lungseg.network import selection

ALL_CASES = [f"Case_{i:03d}" for i in range(12)]
SUMMARY = re.compile(r"(\d+) series found \((\d+) files read in ([\d.]+) s\)")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(paths.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _vmhwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakWatcher:
    """Polls the peak RSS (VmHWM) of every descendant of ``pid`` whose command line matches
    ``match`` (e.g. Dask worker processes), until stopped."""

    def __init__(self, pid: int, match: str) -> None:
        self.pid, self.match, self.peaks = pid, match, {}
        self.root_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.root_peak = max(self.root_peak, _vmhwm_mb(self.pid))
            try:
                for child in psutil.Process(self.pid).children(recursive=True):
                    try:
                        if self.match in " ".join(child.cmdline()):
                            self.peaks[child.pid] = max(self.peaks.get(child.pid, 0.0), _vmhwm_mb(child.pid))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return sorted((round(v, 1) for v in self.peaks.values() if v > 0), reverse=True)


def run_process(cmd: list[str], watch: str | None = None, watch_pid: int | None = None
                ) -> tuple[float, float, list[float], str]:
    """Wall seconds, own peak RSS (MB: rusage, or polled when descendants are watched), peaks of the
    watched descendants (MB), stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watcher = PeakWatcher(watch_pid or proc.pid, watch) if watch else None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    peaks = watcher.stop() if watcher else []
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {stdout}")
    own = watcher.root_peak if watcher and watch_pid is None else usage.ru_maxrss / 1024
    return wall, own, peaks, stdout


def build_root(folder: Path, cases: list[str]) -> Path:
    """A cohort folder: one link per case (names show only the case ids)."""
    folder.mkdir(parents=True)
    for case in cases:
        (folder / case).symlink_to(paths.images_dir(paths.data_dir(), case))
    return folder


def batch_cmd(root: Path, out: Path, ckpt: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lungseg", "batch", str(root), "--out", str(out), "--checkpoint", ckpt,
            "--quiet", *extra]


def labels(folder: Path) -> np.ndarray:
    return np.asarray(nib.load(folder / predict.NIFTI_NAME).dataobj)


def same_masks(a: Path, b: Path, cases: list[str]) -> tuple[bool, bool]:
    """(arrays equal for every case, NIfTI files byte-identical for every case)."""
    arrays = all(np.array_equal(labels(a / c), labels(b / c)) for c in cases)
    files = all((a / c / predict.NIFTI_NAME).read_bytes() == (b / c / predict.NIFTI_NAME).read_bytes()
                for c in cases)
    return arrays, files


def scan_stats(stdout: str) -> dict:
    m = SUMMARY.search(stdout)
    return {"files": int(m.group(2)), "scan_s": float(m.group(3))} if m else {}


def shell_cluster(tmp: Path, workers: int) -> tuple[list[subprocess.Popen], str, float]:
    """``dask scheduler`` + ``dask worker --nworkers N --nthreads 1`` on 127.0.0.1; their processes,
    the address and the seconds until every worker had joined."""
    from distributed import Client

    t0 = time.perf_counter()
    sched_file = tmp / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = None
    while address is None:  # the file appears before its content
        time.sleep(0.05)
        try:
            address = json.loads(sched_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            pass
    procs.append(subprocess.Popen([*dask, "worker", address, "--nworkers", str(workers),
                                   "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                   "--local-directory", str(tmp / "dask-worker")],
                                  env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with Client(address, timeout=120) as client:
        client.wait_for_workers(workers, timeout=120)
    return procs, address, time.perf_counter() - t0


def run_loop(root: Path, cases: list[str], out: Path, ckpt: str) -> dict:
    """A loop of ``predict`` processes, one per series: total wall and each process's peak."""
    walls, peaks = [], []
    t0 = time.perf_counter()
    for case in cases:
        wall, peak, _, _ = run_process([sys.executable, "-m", "lungseg", "predict", str(root / case),
                                        "--out", str(out / case), "--checkpoint", ckpt])
        walls.append(round(wall, 2))
        peaks.append(round(peak, 1))
    return {"wall_s": round(time.perf_counter() - t0, 2), "per_series_s": walls, "peak_rss_mb": peaks}


def run_batch(root: Path, out: Path, ckpt: str, loop_out: Path, cases: list[str], *extra: str,
              watch_pid: int | None = None) -> dict:
    """One ``batch`` run: wall, peak memory of the process and of each worker, masks against the loop's."""
    in_process = "--workers" in extra and extra[extra.index("--workers") + 1] == "0"
    wall, own, workers, stdout = run_process(batch_cmd(root, out, ckpt, *extra),
                                             watch=None if in_process else "spawn_main", watch_pid=watch_pid)
    arrays, files = same_masks(loop_out, out, cases)
    memory = {"peak_rss_mb": round(own, 1)} if in_process else {"worker_peak_rss_mb": workers}
    if not in_process and watch_pid is None:
        memory["parent_peak_rss_mb"] = round(own, 1)
    return {"wall_s": round(wall, 2), **memory, "masks_equal_loop": arrays, "nifti_bytes_equal_loop": files,
            **scan_stats(stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(selection.RELEASED))
    ap.add_argument("--cases", default=",".join(ALL_CASES[:8]))
    ap.add_argument("--cohort", default=",".join(ALL_CASES), help="cases of the measured cohort run (5.)")
    ap.add_argument("--repeat", type=int, default=3, help="loop/batch pairs, alternating (median reported)")
    ap.add_argument("--save", metavar="DIR", help="also write DIR/batch_timing.json")
    args = ap.parse_args()
    cases = args.cases.split(",")
    ckpt = args.checkpoint
    cores = parallel.cores()
    choice = selection.given_model(ckpt)
    predict.onnx_export(Path(ckpt))  # the one-off export, made before any timing
    load_start = os.getloadavg()
    result: dict = {"checkpoint": ckpt, "model": choice.name, "cases": cases, "cores": cores,
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root = build_root(tmp / "cohort", cases)
        root12 = build_root(tmp / "cohort12", args.cohort.split(","))

        pairs = []
        for i in range(args.repeat):  # loop and batch alternate: a change of the machine's load hits both
            load = os.getloadavg()[0]
            loop = run_loop(root, cases, tmp / f"loop{i}", ckpt)
            default = run_batch(root, tmp / f"default{i}", ckpt, tmp / f"loop{i}", cases)
            pairs.append({"load_average_before": round(load, 2), "loop": loop, "batch": default,
                          "speedup": round(loop["wall_s"] / default["wall_s"], 3)})
            print(f"pair {i + 1}: loop {loop['wall_s']} s, batch {default['wall_s']} s, load {load:.2f}",
                  file=sys.stderr, flush=True)
        median = sorted(pairs, key=lambda p: p["speedup"])[len(pairs) // 2]
        result["slices"] = {c: json.loads((tmp / "loop0" / c / predict.STATS_NAME).read_text())["slices"]
                            for c in cases}
        result["pairs"] = [{k: p[k] for k in ("load_average_before", "speedup")} for p in pairs]
        result["loop_predict"] = median["loop"]
        result["batch_default"] = {**median["batch"], "workers": cores}
        result["speedup_default_vs_loop"] = median["speedup"]

        inproc = run_batch(root, tmp / "inproc", ckpt, tmp / "loop0", cases, "--workers", "0")
        result["batch_in_process"] = inproc
        result["speedup_in_process_vs_loop"] = round(median["loop"]["wall_s"] / inproc["wall_s"], 3)

        procs, address, start_s = shell_cluster(tmp, 2)
        try:
            shell = run_batch(root, tmp / "shell", ckpt, tmp / "loop0", cases, "--scheduler", address,
                              watch_pid=procs[1].pid)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait()
        beside = run_batch(root, tmp / "default-beside", ckpt, tmp / "loop0", cases)  # right after it
        result["batch_dask_shell"] = {**shell, "cluster_start_s": round(start_s, 2), "workers": 2,
                                      "default_right_after_s": beside["wall_s"]}
        result["dask_shell_vs_default"] = round(shell["wall_s"] / beside["wall_s"], 3)

        wall, _, workers, out = run_process(batch_cmd(root12, tmp / "all12", ckpt), watch="spawn_main")
        rows = list(csv.DictReader((tmp / "all12" / batch.COHORT).open()))
        seconds = [float(r["seconds"]) for r in rows]
        result["batch_12"] = {"series": len(rows), "wall_s": round(wall, 2), "workers": cores,
                              "worker_peak_rss_mb": workers, **scan_stats(out),
                              "slices": [int(r["slices"]) for r in rows],
                              "worker_s_per_series": round(sum(seconds) / len(seconds), 2),
                              "fixed_s": round(wall - sum(seconds) / cores, 2)}
    result["load_average_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    text = json.dumps(result, indent=1)
    print(text)
    if args.save:
        writing.atomic_write_text(paths.resolve(args.save) / "batch_timing.json", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
