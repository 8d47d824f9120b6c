"""Choose the default VEM settings on validation mixtures: each candidate against the official settings
(300 iterations at lr 1e-3, a fresh M-step draw, no early stop) with the same prior, on the same mixtures.

    python recipes/tune_vem.py --model checkpoints/open-small/rvae-log/model \
        --manifest data/open/mixtures/valid/manifest.jsonl --limit 24 -o docs/vem_tuning

Each candidate's `speechdvae eval enhance` report (and its cache, so a rerun only computes what is missing)
goes to OUT/<candidate>/; OUT/vem_tuning.md compares them: medians, the median per-mixture SI-SDR
difference to the official settings (paired) and the mean number of iterations run.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

from speechdvae.enhance.vem import VEMConfig
from speechdvae.evaluate.enhancement import NOISY_LABEL, UTTERANCES_NAME, evaluate_enhancement
from speechdvae.io import write_text_atomic

OFFICIAL = VEMConfig.official()
CANDIDATES = {
    "official": OFFICIAL,
    "tol5e-4": VEMConfig(),
    "lr3e-3-reuse-100": VEMConfig(lr=3e-3, niter=100, reuse_estep_draw=True),
    "lr1e-2-reuse-100": VEMConfig(lr=1e-2, niter=100, reuse_estep_draw=True),
    "lr1e-2-reuse-50": VEMConfig(lr=1e-2, niter=50, reuse_estep_draw=True, tol=0.0),
    "lr1e-2-reuse-30": VEMConfig(lr=1e-2, niter=30, reuse_estep_draw=True, tol=0.0),
    "lr3e-2-reuse-30": VEMConfig(lr=3e-2, niter=30, reuse_estep_draw=True, tol=0.0),
}
LABEL = "prior"


def changed(config: VEMConfig) -> str:
    """The settings of `config` that differ from the official ones."""
    diff = [f"{f.name}={getattr(config, f.name)}" for f in fields(config)
            if getattr(config, f.name) != getattr(OFFICIAL, f.name)]
    return ", ".join(diff) or "(official)"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="prior checkpoint folder")
    parser.add_argument("--manifest", required=True, help="validation mixture manifest")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="run these candidates only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = args.only or list(CANDIDATES)
    rows = {}
    for name in names:
        evaluate_enhancement({LABEL: args.model}, args.manifest, out / name, args.limit, CANDIDATES[name],
                             workers=args.workers, progress=True)
        with open(out / name / UTTERANCES_NAME, newline="") as f:
            rows[name] = {(r["id"], r["model"]): r for r in csv.DictReader(f)}
    lines = [f"# VEM settings on validation mixtures\n",
             f"Regenerate with: `python recipes/tune_vem.py {shlex.join(argv)}`\n",
             f"Prior `{args.model}`, {args.limit} mixtures of `{args.manifest}` (balanced over noise type × SNR). "
             "Δ SI-SDR is the median over mixtures of (candidate − official) for the same mixture; the time is "
             "the VEM's real-time factor in its process (one thread; the machine may have been busy, compare "
             "iterations rather than times across runs).\n",
             "| candidate | settings | SI-SDR (dB) | Δ SI-SDR vs official (dB) | PESQ-NB raw | ESTOI | "
             "mean iterations | RTF |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    reference = rows.get("official")
    noisy = next(iter(rows.values()))
    ids = sorted({i for i, m in noisy if m == NOISY_LABEL})
    lines.insert(4, "| noisy mixture | | {:.2f} | | {:.2f} | {:.2f} | | |".format(
        *(np.median([float(noisy[i, NOISY_LABEL][k]) for i in ids]) for k in ("si_sdr", "pesq_nb_raw", "estoi"))))
    for name, table in rows.items():
        values = {k: np.array([float(table[i, LABEL][k]) for i in ids]) for k in
                  ("si_sdr", "pesq_nb_raw", "estoi", "iterations", "seconds", "duration")}
        delta = (f"{np.median(values['si_sdr'] - np.array([float(reference[i, LABEL]['si_sdr']) for i in ids])):+.2f}"
                 if reference else "")
        lines.append(f"| {name} | {changed(CANDIDATES[name])} | {np.median(values['si_sdr']):.2f} | {delta} | "
                     f"{np.median(values['pesq_nb_raw']):.2f} | {np.median(values['estoi']):.2f} | "
                     f"{values['iterations'].mean():.0f} | {values['seconds'].sum() / values['duration'].sum():.1f} |")
    write_text_atomic(out / "vem_tuning.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
