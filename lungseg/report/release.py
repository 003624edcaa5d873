"""Release one model into the repository: ``lungseg release [--profile cpu]``.

The released model is the report's default recipe (``params/PROFILE.yaml``, section 02_train) trained
on every case of the data set (split ``all``), so that ``predict`` works on a fresh clone without
training. Its threshold and post-processing come from the one tuning rule
(:func:`lungseg.evaluation.tuning.tune`) applied to its own training patients, as 03_eval does for
every run;
its expected accuracy is the report's 12-patient cross-validation of the same recipe
(``figures/summary.json``), since no patient is left to test it on.

``models/NAME/`` is a run folder (``model.pt``, ``run.json`` with the inference settings and a
``release`` record) plus ``MODEL_CARD.md``, generated from ``run.json`` by :func:`model_card`; the
tests check the weights' checksum against both.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from lungseg import paths
from lungseg.inference import ort
from lungseg.io import writing
from lungseg.network import config, model, runs, selection

TOOL = "release"
CARD = "MODEL_CARD.md"
SUMMARY = paths.FIGURES / "summary.json"
PROVENANCE = paths.FIGURES / "provenance.json"
COMMAND = "lungseg release --profile {profile}"

LCTSC_ATTRIBUTION = (
    "Yang J, Sharp G, Veeraraghavan H, van Elmpt W, Dekker A, Lustberg T, Gooding M. *Data from Lung CT "
    "Segmentation Challenge (LCTSC)* (Version 3). The Cancer Imaging Archive, 2017. "
    "https://doi.org/10.7937/K9/TCIA.2017.3r3fvz08 — and Clark K et al. *The Cancer Imaging Archive (TCIA): "
    "maintaining and operating a public information repository.* J Digit Imaging 26(6):1045–1057, 2013. "
    "https://doi.org/10.1007/s10278-013-9622-7")
LICENCE = ("The training images are from the LCTSC collection of The Cancer Imaging Archive, distributed "
           "under the Creative Commons Attribution 3.0 Unported licence "
           "(http://creativecommons.org/licenses/by/3.0/); the 12 cases are a teaching copy of the "
           "University of Cambridge's Data Intensive Science MPhil (some header fields replaced by fake "
           "patient data; see the data's LICENSE.txt). Any use of this model must credit the LCTSC data:")


def train_release(profile: str = config.DEFAULT_PROFILE, runs_dir: str | None = None,
                  data_dir: str = "") -> runs.TrainResult:
    """The profile's recipe trained on every case (split ``all``; loaded when already trained)."""
    from lungseg.train import loop

    overrides = {"split": "all", "curve_slices": "0"}
    if data_dir:
        overrides["data_dir"] = json.dumps(data_dir)
    return loop.fit(config.config_from_profile(profile, overrides), runs_dir=runs_dir)


def choose_settings(run: runs.TrainResult) -> dict:
    """Threshold and post-processing by :func:`lungseg.evaluation.tuning.tune` on the run's own (training)
    patients, with both studies."""
    from lungseg.evaluation import tuning
    from lungseg.inference import forward
    from lungseg.io import cache

    loaded = cache.load_cases(run.config.cases, run.config.data_dir or None)
    logits = forward.case_logits(run.model, run.config, loaded, "cpu")
    threshold, clean, study, pp_study = tuning.tune(loaded, logits)
    return {"threshold": float(threshold), "postprocess": bool(clean),
            "chosen_on": f"the model's own {len(loaded)} training patients (tuning.tune, as 03_eval)",
            "threshold_study": study, "postprocess_study": pp_study}


def expected_accuracy(summary_file: Path = SUMMARY, provenance_file: Path = PROVENANCE) -> dict:
    """The report's cross-validation of the same recipe (``figures/summary.json``) and its commit."""
    if not summary_file.is_file():
        raise FileNotFoundError(f"{summary_file}: no report summary; run ./run_all.sh first")
    summary = json.loads(summary_file.read_text())
    cv = summary.get("cross_validation", {})
    if not cv.get("per_structure"):
        raise ValueError(f"{summary_file}: no cross-validation in the report summary")
    prov = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    return {"source": "figures/summary.json", "report_commit": prov.get("git_commit", "unknown"),
            "report_profile": prov.get("profile", ""), "folds": cv.get("folds"),
            "per_structure": cv["per_structure"], "dense_lung": summary.get("dense_lung", [])}


def release(run: runs.TrainResult, settings: dict, accuracy: dict, profile: str,
            out: Path = selection.RELEASED) -> Path:
    """Write ``out`` (replacing only an earlier release): weights, ``run.json`` with the inference
    settings and the release record, and the generated model card."""
    weights = run.run_dir / runs.WEIGHTS
    manifest = dict(run.manifest)
    manifest["inference"] = {k: settings[k] for k in ("threshold", "postprocess", "chosen_on")}
    manifest["release"] = {
        "name": out.name, "made_by": COMMAND.format(profile=profile), "profile": profile,
        "released": time.strftime("%Y-%m-%d"), "source_run": run.run_dir.name,
        "weights_sha256": writing.sha256_file(weights), "weights_bytes": weights.stat().st_size,
        "tuning": {"threshold_study": settings["threshold_study"],
                   "postprocess_study": settings["postprocess_study"]},
        "expected_accuracy": accuracy, "licence": LICENCE, "attribution": LCTSC_ATTRIBUTION}
    manifest = public_manifest(manifest)
    with writing.staged_folder(out, TOOL, overwrite=True) as tmp:
        shutil.copyfile(weights, tmp / runs.WEIGHTS)
        # The ONNX export ships too: predict on the base install (no torch) runs it with ONNX Runtime.
        ort.export(run.model, ort.preprocessing_of(run.config, model.REFERENCE_INPUT_OFFSET_HU),
                       tmp / ort.SHIPPED, manifest["release"]["weights_sha256"])
        writing.atomic_write_text(tmp / runs.MANIFEST, json.dumps(manifest, indent=1, allow_nan=False) + "\n")
        writing.atomic_write_text(tmp / CARD, model_card(manifest))
    return out


def _finite(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def public_manifest(manifest: dict) -> dict:
    """The run's manifest as the release publishes it: strict JSON (a run on every case has no test
    loss: None, not NaN) and no path of the machine it was made on (the data folder is named by its
    cases' content keys only)."""
    out = _finite(manifest)
    out["data"] = {k: v for k, v in out.get("data", {}).items() if k != "dir"}
    out["config"] = {**out.get("config", {}), "data_dir": ""}
    return out


def _table(rows: list[dict], floatfmt: str = ".4f") -> str:
    from lungseg.report.tables import markdown

    return markdown(rows, floatfmt)


def _dense_section(rows: list[dict]) -> list[str]:
    """The report's dense-lung study (held-out patients, another generator than training's), if any."""
    if not rows:
        return []
    return ["### Measured on simulated dense lung", "",
            "From the report (`figures/summary.json`, `dense_lung`): the held-out patients of the same "
            "recipe with dense lung drawn by a 3D generator other than training's "
            "(`lungseg.evaluation.dense`), "
            "scored by the recipe's held-out run (\"with augmentation\") and its twin trained without it. "
            "Dice in 3D; `reach_0.95`: series at Dice ≥ 0.95 among those whose unchanged scan reaches 0.97; "
            "QC columns: masks below 0.90 and how many the shipped QC flagged.", "",
            _table(rows), ""]


def model_card(manifest: dict) -> str:
    """The model card (Markdown) of a released run, from its ``run.json`` alone."""
    from lungseg.evaluation.goals import summary_rows

    rel, cfg, prep, inf = (manifest["release"], manifest["config"], manifest["preprocessing"],
                           manifest["inference"])
    acc = rel["expected_accuracy"]
    keys = ("image_size", "epochs", "batch_size", "lr", "schedule", "empty_keep", "early_size",
            "early_epochs", "lung_stride", "full_size_stride", "seed", "base_channels", "dropout",
            "dilation", "disease_p", "disease_kinds", "disease_dense_hu", "disease_ggo_hu",
            "disease_noise_hu", "channels_last", "amp")
    lines = [
        f"# Model card: {rel['name']}",
        "",
        "A 2D UNet (the coursework report's architecture, 536,913 parameters) that labels the lungs in "
        "chest CT, slice by slice; `python -m lungseg predict` and `batch` use it when no local report "
        "run exists. This card is generated from `run.json` by `lungseg.report.release.model_card`; do not "
        "edit it by hand.",
        "",
        "## Files",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| `model.pt` | weights, training history and config (`torch.load(..., weights_only=True)`); "
        f"{rel['weights_bytes']:,} bytes, SHA-256 `{rel['weights_sha256']}` |",
        f"| `{ort.SHIPPED}` | the same network exported to ONNX (with its preprocessing and the "
        "weights' SHA-256 as metadata): what `predict` runs with ONNX Runtime, no PyTorch needed |",
        "| `run.json` | the run's manifest: config, data fingerprint, code version, preprocessing, "
        "inference settings, this release record |",
        "",
        "## How it was made",
        "",
        f"- Command: `{COMMAND.format(profile=rel['profile'])}` (trains the `{rel['profile']}` profile's "
        "recipe with `split=all`: every slice of every case, no test set), released on "
        f"{rel['released']} from run `{rel['source_run']}`"
        + (f" (run as `{rel['made_by']}`, the same code at its module path then)."
           if rel["made_by"] != COMMAND.format(profile=rel["profile"]) else "."),
        f"- Code: lungseg {manifest['code']['lungseg_version']}, commit `{manifest['code']['git_commit']}`, "
        f"training code SHA-256 `{manifest['code']['training_code_sha256']}`.",
        f"- Machine: {manifest['provenance']['machine']}, torch {manifest['provenance']['torch']}, "
        f"device {manifest['provenance']['device']}; training took "
        f"{manifest.get('train_wall_s', float('nan')):.0f} s.",
        f"- Training cases ({len(cfg['cases'])}): {', '.join(cfg['cases'])}.",
        "",
        _table([{"parameter": k, "value": str(cfg[k])} for k in keys if k in cfg]),
        "",
        "## What counts as lung",
        "",
        "The convention of the LCTSC contours it learned from: aerated **and** dense lung (collapsed, "
        "consolidated, fibrotic, emphysematous) is lung; the tumour (GTV), the hilum, the trachea and the "
        "main bronchi are not. A mass against the pleura therefore stays outside the mask by design. "
        + ("Training drew simulated dense lung (consolidation, ground glass, collapse) into the true "
           f"lung of {cfg['disease_p']:.0%} of the lung-holding slices, mask unchanged "
           "(`lungseg.network.disease`)."
           if cfg.get("disease_p") else "Training used no simulated dense lung."),
        "",
        *_dense_section(acc.get("dense_lung", [])),
        "## Preprocessing (applied by `predict` from `run.json`)",
        "",
        f"- Input mode `{prep['input_mode']}`: HU clipped to {prep['hu_window']} and scaled to [0, 1].",
        f"- Slices resized to {prep['image_size']}² for the network; logits upsampled (bilinear) to "
        f"{prep['full_size']}² before the threshold.",
        "- Any axis-aligned series is brought to axial head-first supine (no resampling) and the mask "
        "mapped back; right and left lung are split by the DICOM geometry (`lungseg.inference.sides`).",
        "",
        "## Threshold and post-processing",
        "",
        f"Threshold **{inf['threshold']}**, post-processing **{'on' if inf['postprocess'] else 'off'}** "
        "(keep the two largest 3D components, fill enclosed holes), chosen on "
        f"{inf['chosen_on']}: the threshold of best mean volume Dice, then post-processing kept only "
        "when it lowers mean HD95 without lowering mean Dice, and then (when kept) the threshold of "
        "best mean Dice of the post-processed masks. These are training patients, so the "
        "studies below measure fit, not accuracy:",
        "",
        _table(rel["tuning"]["threshold_study"]),
        "",
        _table(rel["tuning"]["postprocess_study"]),
        "",
        "## Expected accuracy",
        "",
        "No patient is left to test a model trained on all of them, so its expected accuracy is the "
        f"{acc['folds']}-fold cross-validation over the same 12 patients of the same recipe (every "
        "patient scored by a model that never saw it; threshold and post-processing chosen inside "
        f"each fold), from the report at commit `{acc['report_commit']}` (`{acc['source']}`, profile "
        f"`{acc['report_profile']}`). Volume metrics on the 512² grid, in mm:",
        "",
        _table(summary_rows(acc["per_structure"])),
        "",
        "## Data fingerprint",
        "",
        "Each case's cache key (a hash of its DICOM files' names, sizes and times and of its mask):",
        "",
        _table([{"case": c, "key": k} for c, k in manifest["data"]["case_keys"].items()]),
        "",
        "## Intended use and limits",
        "",
        "- Research and teaching: lung masks and volumes of adult thoracic CT, to be checked by a person. "
        "Not a medical device; not for diagnosis or treatment planning without review.",
        "- Trained on 12 patients of one public challenge (radiotherapy planning CTs, 3 mm slices, "
        "512², head first supine). Scans unlike these (children, dense consolidation, large effusions, "
        "small fields of view, contrast phases or reconstructions not seen here) may fail. Large dense "
        "regions (a consolidated lobe, a collapsed lower lobe) are often left out of the mask: see "
        "\"Measured on simulated dense lung\" above, and read QC's verdict.",
        "- Right/left come from the DICOM geometry, not from the network.",
        "",
        "## Licence and attribution",
        "",
        rel["licence"],
        "",
        f"> {rel['attribution']}",
        "",
    ]
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``lungseg release``."""
    ap.add_argument("--profile", default=config.DEFAULT_PROFILE,
                    help="the recipe (params/NAME.yaml, 02_train); default %(default)s")
    ap.add_argument("--runs", default=None, help="runs folder for the training run (default build/runs)")
    ap.add_argument("--data", default="", help="data directory (default $LUNGSEG_DATA or data/)")
    ap.add_argument("--out", default=str(selection.RELEASED), help="release folder (default %(default)s)")


def command(args: argparse.Namespace) -> int:
    """``lungseg release``: train the release recipe on every case and write models/."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        accuracy = expected_accuracy()
        run = train_release(args.profile, args.runs, args.data)
        settings = choose_settings(run)
        out = release(run, settings, accuracy, args.profile, paths.resolve(args.out))
    except (OSError, ValueError, runs.RunNotFoundError, writing.UnsafeOutputError) as exc:
        print(f"lungseg.report.release: error: {exc}", file=sys.stderr)
        return 1
    print(f"released {out} (threshold {settings['threshold']}, post-processing {settings['postprocess']})")
    return 0
