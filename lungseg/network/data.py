"""Module 2B data: slices of the cached volumes as tensors, intensity normalisation, and splits.

Nothing here parses DICOM: cases come from :mod:`lungseg.io.cache` (memory-mapped ``.npy``). Every slice
is resized once, when the dataset is built, to ``image_size`` (512 = the report; smaller for the CPU
profile) and held in memory, so a training step does no host-side work beyond indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lungseg.io.cache import Case, load_case
from lungseg.io.orient import check_square  # the one square-slice check (torch-free, for predict)
from lungseg.network.model import REFERENCE_INPUT_OFFSET_HU
from lungseg.progress import bar as progress_bar

FULL_SIZE = 512
"""In-plane size of the LCTSC slices; every metric is computed at this size."""

# Intensity normalisation, named once. "window": clip HU to a lung-friendly window, scale to [0, 1]
# (air -> 0, soft tissue and bone saturate at 1); "raw": stored values HU + 1024, unscaled, which is
# what the course's reference model was trained on.
HU_WINDOW = (-1024.0, 600.0)
INPUT_MODES = ("window", "raw")
MASK_THRESHOLD = 0.5
"""A downsampled mask pixel is lung when at least half of its area is lung."""

SPLIT_SEED = 42
SLICE_SPLIT = (2 / 3, 1 / 3)
# Held-out patients of the "cases" protocol: every third case (000-011), so train and test both
# span the whole range of the collection (8 train / 4 test).
DEFAULT_TEST_CASES = ("Case_002", "Case_005", "Case_008", "Case_011")


def normalise(hu: torch.Tensor, mode: str = "window",
              window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    """HU (any shape) → network input float32: ``window`` (low, high HU) mapped to [0, 1] in the
    "window" mode (the run's ``hu_window``); see ``INPUT_MODES``."""
    hu = hu.float()
    if mode == "window":
        lo, hi = (float(v) for v in window)
        return (hu.clamp(lo, hi) - lo) / (hi - lo)
    if mode == "raw":
        return hu + REFERENCE_INPUT_OFFSET_HU
    raise ValueError(f"unknown input mode {mode!r}; expected one of {INPUT_MODES}")


def denormalise(x: torch.Tensor, mode: str = "window",
                window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    """Network input → HU, the inverse of :func:`normalise` (values it clipped stay at the window's
    edges)."""
    if mode == "window":
        lo, hi = (float(v) for v in window)
        return x.float() * (hi - lo) + lo
    if mode == "raw":
        return x.float() - REFERENCE_INPUT_OFFSET_HU
    raise ValueError(f"unknown input mode {mode!r}; expected one of {INPUT_MODES}")


def resize_slices(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) → (N, 1, size, size) by area averaging (exact block means for 512 → 128)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="area")


def upsample_logits(logits: torch.Tensor, size: int = FULL_SIZE) -> torch.Tensor:
    """(N, 1, h, w) logits → (N, 1, size, size), bilinear, so metrics are computed at full size."""
    if logits.shape[-1] == size and logits.shape[-2] == size:
        return logits
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def case_tensors(case: Case, image_size: int, mode: str,
                 window: Sequence[float] = HU_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """A case's slices as (z, 1, S, S) float32 input and (z, 1, S, S) uint8 mask (0/1)."""
    hu = torch.from_numpy(np.array(case.volume.hu)).unsqueeze(1)  # a copy: the cache is read-only
    check_square(hu.shape, case.case_id)
    mask = torch.from_numpy(np.asarray(case.mask, dtype=np.uint8)).unsqueeze(1)
    image = resize_slices(normalise(hu, mode, window), image_size)
    if image_size != mask.shape[-1]:
        mask = (resize_slices(mask.float(), image_size) >= MASK_THRESHOLD).to(torch.uint8)
    return image.contiguous(), mask.contiguous()


@dataclass(frozen=True)
class SliceInfo:
    """Where a dataset item comes from: case id, slice index and position (mm)."""

    case_id: str
    index: int
    location_mm: float


class SliceDataset(Dataset):
    """Axial slices of several cases: item = (image (1,S,S) float, mask (1,S,S) float, info).

    ``images``/``masks`` hold everything as (N, 1, S, S) tensors (mask uint8), so a batch can also
    be taken by fancy indexing without a DataLoader.
    """

    def __init__(self, cases: Sequence[Case], image_size: int = FULL_SIZE,
                 mode: str = "window", window: Sequence[float] = HU_WINDOW) -> None:
        images, masks, infos = [], [], []
        for case in progress_bar(cases, desc=f"slices@{image_size}", unit="case"):
            img, msk = case_tensors(case, image_size, mode, window)
            images.append(img)
            masks.append(msk)
            infos += [SliceInfo(case.case_id, i, float(p))
                      for i, p in enumerate(case.volume.positions)]
        self.images = torch.cat(images) if images else torch.empty(0, 1, image_size, image_size)
        self.masks = torch.cat(masks) if masks else torch.empty(0, 1, image_size, image_size)
        self.infos = infos
        self.image_size, self.mode = image_size, mode

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, SliceInfo]:
        return self.images[i], self.masks[i].float(), self.infos[i]

    @property
    def empty(self) -> torch.Tensor:
        """(N,) bool: True for slices whose mask (at training size) holds no lung."""
        return self.masks.flatten(1).amax(1) == 0

    @property
    def case_ids(self) -> list[str]:
        return [info.case_id for info in self.infos]


def load_dataset(case_ids: Sequence[str], data: str | None = None, image_size: int = FULL_SIZE,
                 mode: str = "window", window: Sequence[float] = HU_WINDOW) -> SliceDataset:
    """:class:`SliceDataset` over the cached cases ``case_ids``."""
    return SliceDataset([load_case(c, data) for c in case_ids], image_size, mode, window)


def split_slices(n: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """The report's protocol: ``random_split`` of ``n`` slices 2/3–1/3, generator seeded ``seed``.

    Slices of one patient land on both sides: a measure of fit, not of generalisation.
    """
    gen = torch.Generator().manual_seed(seed)
    train, test = torch.utils.data.random_split(range(n), SLICE_SPLIT, generator=gen)
    return list(train.indices), list(test.indices)


def split_cases(infos_case_ids: Sequence[str], test_cases: Sequence[str]) -> tuple[list[int], list[int]]:
    """Held-out patients: slice indices of cases not in / in ``test_cases``."""
    missing = set(test_cases) - set(infos_case_ids)
    if missing:
        raise ValueError(f"test cases not in the dataset: {sorted(missing)}")
    test = set(test_cases)
    train_idx = [i for i, c in enumerate(infos_case_ids) if c not in test]
    test_idx = [i for i, c in enumerate(infos_case_ids) if c in test]
    if not train_idx or not test_idx:
        raise ValueError("a case split needs at least one training and one test case")
    return train_idx, test_idx
