"""Mean of a resynthesis metric by utterance length, from the per-utterance tables of `speechdvae eval resynth`
reports: how a prior trained on fixed-length sequences fares on utterances past that length.

    python recipes/by_length.py REPORT_DIR [REPORT_DIR ...] --manifest data/open/manifests/speech_test.jsonl \
        [--edges 0.8 1.6 2.4] [--metric si_sdr]

Lengths are the manifest's recorded durations (seconds); each report's `resynthesis_utterances.csv` gives the
metric per utterance, model and mode. Prints a Markdown table: one row per report, model and mode, one column per
length bin, with the number of utterances in each bin under the table.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from speechdvae.data.manifest import read_manifest


def bin_labels(edges: list[float]) -> list[str]:
    inner = [f"{a:g}–{b:g} s" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"< {edges[0]:g} s", *inner, f"≥ {edges[-1]:g} s"]


def by_length(report: Path, durations: dict[str, float], edges: list[float], metric: str) -> dict:
    """{(model, mode): list of metric values per bin} of one report (non-finite values left out)."""
    table: dict[tuple[str, str], list[list[float]]] = defaultdict(lambda: [[] for _ in range(len(edges) + 1)])
    with open(report / "resynthesis_utterances.csv") as f:
        for row in csv.DictReader(f):
            if row["id"] not in durations:
                raise SystemExit(f"{report}: utterance {row['id']} is not in the manifest")
            value = float(row[metric]) if row[metric] else math.nan
            if math.isfinite(value):
                which = int(np.searchsorted(edges, durations[row["id"]], "right"))
                table[row["model"], row["mode"]][which].append(value)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="folders written by `speechdvae eval resynth`")
    parser.add_argument("--manifest", required=True, help="the manifest the reports were made from")
    parser.add_argument("--edges", nargs="+", type=float, default=[0.8, 1.6, 2.4], help="bin edges in seconds")
    parser.add_argument("--metric", default="si_sdr", help="a column of resynthesis_utterances.csv (default si_sdr)")
    args = parser.parse_args()
    durations = {r["id"]: float(r["duration"]) for r in read_manifest(args.manifest)}
    edges = sorted(args.edges)
    labels = bin_labels(edges)
    print(f"| report | model | mode | {' | '.join(labels)} |")
    print("|---|---|---|" + "---:|" * len(labels))
    counts = None
    for report in args.reports:
        for (model, mode), bins in by_length(report, durations, edges, args.metric).items():
            means = [f"{np.mean(b):.1f}" if b else "–" for b in bins]
            print(f"| {report.name} | {model} | {mode} | {' | '.join(means)} |")
            counts = counts or [len(b) for b in bins]
    print(f"\nutterances per bin (first row): {', '.join(map(str, counts or []))}")


if __name__ == "__main__":
    main()
