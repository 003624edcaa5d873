"""Recipe choice for dense lung on TRAINING patients only (issue 24): the cpu profile with overrides,
trained on 6 of the 8 training patients and scored on the other 2 with every kind of
lungseg.evaluation.dense. The held-out patients are never touched.

Usage: python benchmarks/dense_recipe.py NAME [key=value ...]   (writes build/dense_recipe/NAME.json)
       python benchmarks/dense_recipe.py --save NAME [NAME ...]   (adds those runs to
       figures/dense_recipe_study.json, replacing a run of the same name; the README block reads it)
"""
import json
import logging
import sys
import time

from lungseg import paths
from lungseg.evaluation import dense
from lungseg.io import cache
from lungseg.network import config
from lungseg.train import loop

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
KINDS = ("original", *dense.KINDS)
OUT_DIR = paths.BUILD / "dense_recipe"
STUDY = paths.FIGURES / "dense_recipe_study.json"


def save(names: list[str]) -> None:
    """Each run's mean Dice per kind, its changes and training time into the study file."""
    study = json.loads(STUDY.read_text())
    for n in names:
        r = json.loads((OUT_DIR / f"{n}.json").read_text())
        mean = {s["kind"]: s["dice_mean"] for s in r["summary"]}
        entry = {"name": n, "changes": r["over"], "train_s_native_bf16": r["train_s"],
                 **{k: mean[k] for k in KINDS}}
        study["runs"] = [x for x in study["runs"] if x["name"] != n] + [entry]
    STUDY.write_text(json.dumps(study, indent=1) + "\n")


if sys.argv[1] == "--save":
    save(sys.argv[2:])
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
out = {"name": name, "over": over, "train_s": round(tt), "summary": summ,
       "rows": [{k: r[k] for k in ("case", "kind", "dice")} for r in rows]}
json.dump(out, open(out_dir / f"{name}.json", "w"), indent=1)
for s in summ:
    print(name, s["kind"], s["dice_mean"], s["dice_min"])
