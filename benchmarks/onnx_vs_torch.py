"""Does ONNX Runtime beat PyTorch for lungseg's CPU inference? (issue 9, item 4)

    python benchmarks/onnx_vs_torch.py RUN_DIR [--case Case_002] [--repeat 3]

Takes the run's UNet exported as ``predict`` uses it (lungseg.inference.ort), then times the network part
of inference (the run's input size, batch 4, every slice of the case, preprocessing and upsampling
excluded, median of ``--repeat``)
with PyTorch (the layout lungseg.network.speed measured fastest) and with ONNX Runtime (CPU provider, same
thread count), and compares the masks at 512² (Dice, must be ≥ 0.999 to be usable). Prints JSON.
Needs ``onnxruntime`` and ``onnx`` (both in requirements.txt).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from lungseg.evaluation import metrics
from lungseg.inference import forward, ort
from lungseg.io import cache
from lungseg.network import data, model, runs, speed
from lungseg.report import bench


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--case", default="Case_002")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run = runs.load_run(args.run_dir)
    cfg = run.config
    case = cache.load_case(args.case)
    hu = torch.from_numpy(np.array(case.volume.hu)).unsqueeze(1)
    x = data.resize_slices(data.normalise(hu, cfg.input_mode, cfg.hu_window), cfg.image_size).contiguous()
    batches = list(x.split(ort.BATCH))
    net = run.model.eval()
    cl = bool(speed.choose(cfg.image_size, ort.BATCH, torch.device("cpu"))["channels_last"])
    tnet = net.to(memory_format=torch.channels_last) if cl else net

    def torch_logits() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([tnet(b.contiguous(memory_format=torch.channels_last) if cl else b).numpy()
                                   for b in batches])

    # The export and session predict uses (lungseg.inference.ort), fed the same preprocessed batches.
    prep = ort.preprocessing_of(cfg, model.REFERENCE_INPUT_OFFSET_HU)
    sess = ort.session_of(net, prep, threads=torch.get_num_threads()).session

    def ort_logits() -> np.ndarray:
        return np.concatenate([sess.run(None, {"x": b.numpy()})[0] for b in batches])

    def warm_timed(fn) -> float:
        fn()  # warm-up
        return bench.timed(fn, args.repeat)

    t_torch, t_ort = warm_timed(torch_logits), warm_timed(ort_logits)
    full = data.FULL_SIZE
    masks = [forward.binarize(data.upsample_logits(torch.from_numpy(lg), full)[:, 0].numpy())
             for lg in (torch_logits(), ort_logits())]
    print(json.dumps({"case": args.case, "slices": int(x.shape[0]), "image_size": cfg.image_size,
                      "threads": torch.get_num_threads(), "torch_channels_last": cl,
                      "torch_s": round(t_torch, 3), "onnxruntime_s": round(t_ort, 3),
                      "speedup_ort_over_torch": round(t_torch / t_ort, 3),
                      "mask_dice_ort_vs_torch": float(metrics.volume_dice(masks[1], masks[0]))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
