"""Scale-out: a 2-process torchrun (gloo, CPU) run follows the 1-process loss curve.

Same global batch (8 = 2 x 4), same data order, dropout off (each process draws its own dropout
masks, which would make the curves diverge by design). BatchNorm is not synchronised on CPU
(SyncBatchNorm is GPU-only), so each process normalises with its half-batch statistics: the curves
agree closely but not bit for bit. Tolerance: 2 % relative per epoch on train and test loss
(measured: under 0.5 %).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lungseg import paths

TOLERANCE = 0.02
ARGS = ["-m", "lungseg.train", "--profile", "quick", "--set", "dropout=0", "epochs=2",
        "max_steps_per_epoch=3", "image_size=32", "threads=1"]


def _have_quick_cases() -> bool:
    try:
        root = paths.data_dir()
    except FileNotFoundError:
        return False
    return all(paths.images_dir(root, c).is_dir() for c in ("Case_000", "Case_005"))


def _history(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["history"]


@pytest.mark.skipif(not _have_quick_cases(), reason="needs Case_000 and Case_005 in the data dir")
def test_two_processes_follow_one_process(tmp_path) -> None:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun not found next to the interpreter"
    one = _history([sys.executable, *ARGS, "--runs", str(tmp_path / "one")])
    two = _history([torchrun, "--standalone", "--nproc_per_node", "2", *ARGS,
                    "--runs", str(tmp_path / "two")])
    assert len(one["train_loss"]) == len(two["train_loss"]) == 2
    for key in ("train_loss", "test_loss"):
        assert two[key] == pytest.approx(one[key], rel=TOLERANCE), key
    assert (tmp_path / "two").is_dir() and len(list((tmp_path / "two").glob("*/model.pt"))) == 1


def test_a_batch_that_cannot_be_shared_equally_is_dropped() -> None:
    from lungseg.train import loop

    cfg = loop.TrainConfig(batch_size=4, seed=42)
    alone = loop._epoch_batches(list(range(9)), cfg, 0, 1)
    assert [len(b) for b in alone] == [4, 4, 1]
    shared = loop._epoch_batches(list(range(9)), cfg, 0, 2)
    assert [len(b) for b in shared] == [4, 4]  # the 1-slice batch would leave a process empty
    assert all(torch.equal(a, b) for a, b in zip(alone[:2], shared, strict=True))
