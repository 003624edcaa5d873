"""What the report shows of the QC study (``notebooks/05_qc``): its tables and Figure 11, made from the
rows and the evaluation of :mod:`lungseg.evaluation.qc_calibrate`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from lungseg.evaluation.qc_calibrate import BAD_DICE, GROUPS
from lungseg.inference import qc


def rate_rows(held: dict) -> list[dict]:
    """The detection and false-alarm table of a :func:`summary`."""
    rows = []
    for key, group, meaning in (("bad", "bad", "detection rate"), ("sound", "sound", "false-alarm rate"),
                                ("good_failure", "good failure", "flagged anyway: a warning, not an error")):
        c = held[key]
        rows.append({"series": GROUPS[group], "n": c["series"], "flagged": c["flagged"],
                     "rate": "–" if c["rate"] is None else f"{c['rate']:.1%}", "meaning": meaning})
    return rows


def check_rows(ev: dict) -> list[dict]:
    """Per check, all of them applied (dropped ones too): what it flagged under the held-out protocol,
    the median time of its group, and whether it is shipped."""
    costs_s = ev["costs_s"]
    by_name = {c.name: c for c in qc.CHECKS}
    return [{**c, "group time ms": round(1000 * costs_s.get(f"{by_name[c['check']].group}_s", 0.0), 1),
             "shipped": "no: " + ev["dropped"][c["check"]] if c["check"] in ev["dropped"] else "yes"}
            for c in ev["every_check"]]


def rule_rows(thresholds: dict) -> list[dict]:
    """The limits of a rule as a table: check, score, side, limit, sound range, severity."""
    rows = []
    for check in qc.CHECKS:
        r = thresholds.get("checks", {}).get(check.name)
        if r is None:
            continue
        lo, hi = r["sound_range"]
        rows.append({"check": check.name, "score": check.score,
                     "flags when": f"{'>' if check.bad_when == 'above' else '<'} {r['limit']:.4g}",
                     "sound calibration range": f"{lo:.4g} – {hi:.4g}", "severity": check.severity
                     + (f" (fail beyond {check.fail_margins:g} margins)" if check.fail_margins else ""),
                     "kept": "yes" if r.get("kept", True) else "no"})
    return rows


COLOURS = {"sound": "tab:green", "good failure": "tab:blue", "bad": "tab:red"}


def score_figure(judged: Sequence[dict], thresholds: dict, title: str = "") -> Figure:
    """One panel per QC score: the score (x) against the true Dice of the mask (y) for every series,
    coloured by group; hollow markers were not flagged by the held-out rule; the deployed limit is
    the dashed line."""
    names = list(dict.fromkeys(c.score for c in qc.CHECKS))
    ncols = 4
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    limits = thresholds.get("checks", {})
    for ax, name in zip(axes, names, strict=False):
        checks = [c for c in qc.CHECKS if c.score == name]
        log = checks[0].scale == "log"
        plotted = 0
        for group, colour in COLOURS.items():
            for flagged in (True, False):
                sel = [r for r in judged if r["group"] == group and r["flagged"] == flagged
                       and r["scores"].get(name) is not None]
                x = [max(r["scores"][name], 1e-3) if log else r["scores"][name] for r in sel]
                y = [r["dice"] for r in sel]
                plotted += len(x)
                ax.scatter(x, y, s=18, edgecolors=colour, facecolors=colour if flagged else "none",
                           linewidths=1.0, label=f"{group}, {'flagged' if flagged else 'passed'}")
        for c in checks:
            rule = limits.get(c.name)
            if rule and rule.get("kept", True) and (rule["limit"] > 0 or not log):
                ax.axvline(rule["limit"], color="k", ls="--", lw=1)
        if log and plotted:  # a log axis needs a positive value (a smoke-test model may give none)
            ax.set_xscale("log")
        ax.axhline(BAD_DICE, color="grey", lw=0.6)
        ax.set_xlabel(name)
        ax.set_ylabel("Dice against the truth")
        ax.set_ylim(-0.03, 1.03)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=6, frameon=False, fontsize="small")
    fig.suptitle(title or "QC scores against the true Dice (filled: flagged by the held-out rule)")
    return fig
