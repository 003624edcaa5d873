"""Report-time recipe choice on TRAINING patients only (issue 28): gathers the runs of
benchmarks/dense_recipe.py named on the command line (lung_stride and progressive-size variants of the
cpu profile, trained on 6 training patients, scored on Case_003 and Case_009) into
figures/train_speed_study.json, with the machine's torch CPU capability.

Usage: python benchmarks/dense_recipe.py NAME key=value ...   (each run), then
       python benchmarks/train_speed.py NAME [NAME ...]
"""
import json
import sys

import torch

from lungseg import paths

OUT = paths.FIGURES / "train_speed_study.json"
runs = []
for name in sys.argv[1:]:
    r = json.loads((paths.BUILD / "dense_recipe" / f"{name}.json").read_text())
    runs.append({"name": name, "changes": r["over"], "train_s": r["train_s"],
                 **{s["kind"]: s["dice_mean"] for s in r["summary"]}})
study = {"what": "cpu profile variants trained on 6 training patients (benchmarks/dense_recipe.py), Dice "
                 "(3D, both lungs) mean over Case_003 and Case_009, unchanged ('original') and with each "
                 "simulated dense-lung kind; train_s: wall seconds of training on 2 cores (a run that "
                 "shared the cores with another job is slower than its recipe).",
         "cpu_capability": torch.backends.cpu.get_cpu_capability(), "held_out_patients_used": False,
         "runs": runs}
OUT.write_text(json.dumps(study, indent=1) + "\n")
print(OUT)
