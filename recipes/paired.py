"""Paired comparison of two rows of `speechdvae eval enhance` reports on the mixtures they share.

Medians of improvements hide how often one setting beats another on the same mixture; two draws of one setting differ
by 0.4-0.6 dB in median on the realistic benchmark. This compares a row of one report (a prior at a setting, or a
snapshot row "LABEL · K it") with rows of others mixture by mixture: for each metric, the median of the differences
± 1.57·IQR/√n (the reports' notation), their mean ± its standard error, on how many mixtures the row is better, and
the two-sided Wilcoxon signed-rank p-value.

    python recipes/paired.py docs/training_diagnosis/langevin_rvae4_e25 "RVAE-paper.4@25" \\
        --against docs/training_diagnosis/langevin_rvae4_e12 "RVAE-paper.4@12" \\
        --against docs/enhancement_realistic/defaults WSJ0-DKF
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from speechdvae.evaluate.metrics import median_ci

METRICS = {"si_sdr": "SI-SDR (dB)", "pesq_wb": "PESQ-WB", "estoi": "ESTOI"}


def scores(report: Path, row: str) -> dict[str, dict[str, float]]:
    """The finite scores of one row of a report, by mixture id."""
    path = report / "enhancement_utterances.csv"
    if not path.is_file():
        raise SystemExit(f"{report}: no enhancement_utterances.csv (not an `eval enhance` report folder)")
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == row]
    if not rows:
        raise SystemExit(f"{path}: no row labelled {row!r}")
    return {
        r["id"]: {m: float(r[m]) for m in METRICS if r.get(m) and math.isfinite(float(r[m]))}
        for r in rows
        if not r.get("error")
    }


def compare(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric, statistics of a - b over the mixtures where both have a finite score."""
    out = {}
    for metric in METRICS:
        d = np.array([a[k][metric] - b[k][metric] for k in a.keys() & b.keys() if metric in a[k] and metric in b[k]])
        if len(d) == 0:
            continue
        median, half_width = median_ci(d)
        out[metric] = {
            "n": len(d),
            "median": median,
            "median_ci": half_width,
            "mean": float(d.mean()),
            "mean_se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan,
            "better": int((d > 0).sum()),
            "p": float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
        }
    return out


def table(name: str, results: list[tuple[str, dict[str, dict[str, float]]]]) -> str:
    lines = [
        f"{name} minus each row, per mixture:",
        "",
        "| against | metric | n | median | mean | better on | Wilcoxon p |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for against, stats in results:
        for metric, s in stats.items():
            lines.append(
                f"| {against} | {METRICS[metric]} | {s['n']} | {s['median']:+.3f} ± {s['median_ci']:.3f} "
                f"| {s['mean']:+.3f} ± {s['mean_se']:.3f} | {s['better']} of {s['n']} | {s['p']:.3g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report folder of the row compared")
    parser.add_argument("row", help="its row label (model column of enhancement_utterances.csv)")
    parser.add_argument(
        "--against", nargs=2, action="append", required=True, metavar=("REPORT", "ROW"), help="a row to compare with"
    )
    args = parser.parse_args()
    a = scores(args.report, args.row)
    results = [(f"{row} ({report})", compare(a, scores(Path(report), row))) for report, row in args.against]
    print(table(f"{args.row} ({args.report})", results))


if __name__ == "__main__":
    main()
