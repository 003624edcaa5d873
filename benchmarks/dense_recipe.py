"""Recipe choice for dense lung on TRAINING patients only (issue 24): the cpu profile with overrides,
trained on 6 of the 8 training patients and scored on the other 2 with every kind of
lungseg.evaluation.dense. The held-out patients are never touched.

Usage: python benchmarks/dense_recipe.py NAME [key=value ...]   (writes build/dense_recipe/NAME.json)
       python benchmarks/dense_recipe.py --recall NAME RUN_DIR   (adds the run's training-fit recall,
       below, to build/dense_recipe/NAME.json; new runs measure it themselves)
       python benchmarks/dense_recipe.py --save NAME [NAME ...]   (adds those runs to
       figures/dense_recipe_study.json, replacing a run of the same name; the README block reads it)

Training-fit recall (``fit_recall``): does the run label as lung the consolidation that *training's*
generator draws, on a *training* patient (Case_000), at the run's image size? The share of the changed
lung pixels (of every lung slice, disease_p 1, consolidation only) that the network calls lung at 0.5.
Low means the augmentation was not learned at all, not merely that it fails to generalise.
"""
import json
import logging
import sys
import time
from pathlib import Path

import torch

from lungseg import paths
from lungseg.evaluation import dense
from lungseg.io import cache
from lungseg.network import config, data, disease, runs
from lungseg.train import loop

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
KINDS = ("original", *dense.KINDS)
OUT_DIR = paths.BUILD / "dense_recipe"
STUDY = paths.FIGURES / "dense_recipe_study.json"


def fit_recall(run, case: str = "Case_000") -> float:
    """Share of the training generator's consolidation on ``case`` (a training patient of every run
    here) that ``run`` labels lung; see the module docstring."""
    cfg = run.config
    spec = disease.DiseaseSpec(p=1.0, kinds=("consolidation",), dense_hu=(-150.0, 70.0), full=0.35)
    ds = data.load_dataset([case], None, cfg.image_size, cfg.input_mode, cfg.hu_window)
    lung = torch.tensor([i for i in range(len(ds.empty)) if not ds.empty[i]])
    net, changed, hit = run.model.eval(), 0, 0
    for k in range(0, len(lung), 16):
        x0, y = ds.images[lung[k:k + 16]], ds.masks[lung[k:k + 16]].float()
        x = disease.simulate(x0, y, spec, disease.step_generator(cfg.seed, 0, k),
                             lambda v: data.denormalise(v, cfg.input_mode, cfg.hu_window),
                             lambda hu: data.normalise(hu, cfg.input_mode, cfg.hu_window))
        with torch.no_grad():
            said = torch.sigmoid(net(x)) > 0.5
        c = ((x - x0).abs() > 0.02) & (y > 0.5)
        changed, hit = changed + int(c.sum()), hit + int((said & c).sum())
    return round(hit / max(changed, 1), 3)


def add_recall(name: str, run_dir: str) -> None:
    f = OUT_DIR / f"{name}.json"
    r = json.loads(f.read_text())
    r["fit_recall"] = fit_recall(runs.load_run(Path(run_dir)))
    f.write_text(json.dumps(r, indent=1) + "\n")
    print(name, "fit recall", r["fit_recall"])


def save(names: list[str]) -> None:
    """Each run's mean Dice per kind, its changes and training time into the study file."""
    study = json.loads(STUDY.read_text())
    for n in names:
        r = json.loads((OUT_DIR / f"{n}.json").read_text())
        mean = {s["kind"]: s["dice_mean"] for s in r["summary"]}
        entry = {"name": n, "changes": r["over"], "train_s_native_bf16": r["train_s"],
                 **{k: mean[k] for k in KINDS}}
        if "fit_recall" in r:
            entry["fit_recall"] = r["fit_recall"]
        study["runs"] = [x for x in study["runs"] if x["name"] != n] + [entry]
    STUDY.write_text(json.dumps(study, indent=1) + "\n")


if sys.argv[1] == "--save":
    save(sys.argv[2:])
    sys.exit(0)
if sys.argv[1] == "--recall":
    add_recall(sys.argv[2], sys.argv[3])
    sys.exit(0)
name = sys.argv[1]
over = dict(a.split("=", 1) for a in sys.argv[2:])
base = {"cases": "Case_000,Case_001,Case_003,Case_004,Case_006,Case_007,Case_009,Case_010",
        "test_cases": "Case_003,Case_009"}
base.update(over)
cfg = config.config_from_profile("cpu", base)
t = time.time()
run = loop.fit(cfg, runs_dir=paths.BUILD / "dense_recipe" / "runs")
tt = time.time() - t
dev = cache.load_cases(["Case_003", "Case_009"])
rows = dense.study(dev, {name: dense.run_scorer(run, with_qc=False)}, seed=7)
summ = dense.summary(rows)
out_dir = OUT_DIR
out_dir.mkdir(parents=True, exist_ok=True)
out = {"name": name, "over": over, "train_s": round(tt), "summary": summ, "run_dir": str(run.run_dir),
       "fit_recall": fit_recall(run),
       "rows": [{k: r[k] for k in ("case", "kind", "dice")} for r in rows]}
json.dump(out, open(out_dir / f"{name}.json", "w"), indent=1)
for s in summ:
    print(name, s["kind"], s["dice_mean"], s["dice_min"])
