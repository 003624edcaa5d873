"""Builders shared by the tests (fixtures in conftest.py wrap them): volumes and cases from arrays,
tiny checkpoints, the command line in-process, and where the real fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lungseg import cli, paths
from lungseg.io import cache, dicom
from lungseg.network import model
from lungseg.train import train

TINY_CHANNELS = 4
REAL_CASE = paths.ROOT / "data" / "Images" / "Case_000"
REFERENCE_WEIGHTS = paths.ROOT.parent / "shared" / "models" / "SimpleUNet_v3.pt"


def volume_of(hu: np.ndarray, spacing: tuple[float, float, float] = (3.0, 1.0, 1.0),
              case_id: str = "Case_X") -> dicom.Volume:
    """An axial, head-first (z, y, x) HU volume with slices ``spacing[0]`` mm apart from z = 0."""
    n = hu.shape[0]
    return dicom.Volume(hu=hu, spacing=spacing, origin=(0.0, 0.0, 0.0),
                        positions=np.arange(n, dtype=float) * spacing[0],
                        files=tuple(f"f{i}" for i in range(n)), case_id=case_id, series_uid="1.2",
                        orientation=(1, 0, 0, 0, 1, 0), sort_key="ImagePositionPatient")


def case_of(hu: np.ndarray, mask: np.ndarray | None = None,
            spacing: tuple[float, float, float] = (3.0, 1.0, 1.0), case_id: str = "Case_X") -> cache.Case:
    """A :class:`lungseg.io.cache.Case` of ``hu`` and ``mask`` (empty when None)."""
    return cache.Case(volume_of(hu, spacing, case_id),
                      np.zeros(hu.shape, dtype=bool) if mask is None else mask)


def write_checkpoint(path: Path, image_size: int = 16, seed: int = 0) -> Path:
    """An untrained UNet saved as ``train.fit`` saves ``model.pt``."""
    torch.manual_seed(seed)
    net = model.UNet(base_channels=TINY_CHANNELS).eval()
    cfg = train.TrainConfig(cases=["Case_900"], image_size=image_size, split="cases",
                            base_channels=TINY_CHANNELS, epochs=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "history": {"train_loss": [1.0]},
                "config": cfg.to_dict()}, path)
    return path


def run_cli(*args: str | os.PathLike[str]) -> int:
    """``python -m lungseg ARGS`` in this process; the exit status."""
    return cli.main([str(a) for a in args])
