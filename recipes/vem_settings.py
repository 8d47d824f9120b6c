"""Choose each prior's VEM settings from enhancement evaluations on the same mixtures.

Every row of the given `speechdvae eval enhance` reports is a candidate setting of its prior: the prior's label
(snapshot rows "LABEL · K it" belong to LABEL, `--snapshots`) and the row's inference settings (the report's
`enhancement_settings.json`). The reference of a prior is its row with the official VEM settings
(`--official-settings`, in any of the reports); its best setting is its row of highest median ΔSI-SDR. The rule: a
setting passes when its median ΔSI-SDR is at most 0.2 dB and its median ΔESTOI at most 0.01 below both the
reference's and the best setting's; the chosen setting is the fastest that passes (lowest real-time factor, then
fewest iterations). The first bound alone let a prior whose official settings do poorly on the benchmark (the
LigHT-DVAE: +2.12 dB) fall to a setting 3 dB below its best one (docs/enhancement_valid/settings.md).

Writes a Markdown table per prior (medians over all mixtures, over the short and the long ones of a manifest that
has a `length` field, and over the mixtures whose speaker is seen or unseen in `--train-manifest`; real-time
factor; verdict) and a figure of median ΔSI-SDR and ΔESTOI against iterations. Priors trained here have heard the
seen speakers; the authors' WSJ0 priors have not: the unseen speakers compare them fairly.

    python recipes/vem_settings.py docs/enhancement_realistic/iterations [OTHER_REPORTS...] \\
        --manifest data/open/mixtures/valid_realistic/manifest.jsonl \\
        --train-manifest data/open/manifests/speech_train.jsonl -o docs/enhancement_realistic/settings.md
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np

from speechdvae.enhancement.vem import VEMConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOISY = "noisy mixture"
SNAPSHOT = re.compile(r"^(?P<label>.*) · (?P<k>\d+) it$")
SI_SDR_MARGIN, ESTOI_MARGIN = 0.2, 0.01
SHOWN = ("lr", "step_size", "past", "tol")  # settings that vary between candidates, besides the iterations
ENGINES = {"vem": "VEM", "langevin": "Langevin"}
# the official VEM settings, which the reference row of each prior ran; a setting missing from an older report ran
# at its default
OFFICIAL = {"engine": VEMConfig.engine, **asdict(VEMConfig.official())}
DEFAULTS = {"engine": VEMConfig.engine, **asdict(VEMConfig())}


@dataclass
class Candidate:
    prior: str
    report: Path
    settings: dict[str, object]
    rows: list[dict]

    @property
    def iterations(self) -> int:
        return int(self.settings["niter"])

    @property
    def official(self) -> bool:
        return all(self.settings.get(k, DEFAULTS[k]) == v for k, v in OFFICIAL.items())

    @property
    def name(self) -> str:
        shown = ", ".join(f"{k} {self.settings[k]}" for k in SHOWN if k in self.settings)
        return f"{ENGINES[str(self.settings['engine'])]} {self.iterations} it, {shown}"

    def median(self, column: str, condition: str | None = None) -> float:
        values = [
            float(r[column])
            for r in self.rows
            if condition in (None, r["length"], r["speaker"]) and r[column] not in ("", "nan")
        ]
        return float(np.median(values)) if values else float("nan")

    @property
    def rtf(self) -> float:
        timed = [r for r in self.rows if r["seconds"]]
        return sum(float(r["seconds"]) for r in timed) / sum(float(r["duration"]) for r in timed)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def report_command(report: Path) -> str:
    """The command that regenerates a report."""
    text = (report / "enhancement.md").read_text(encoding="utf-8")
    return re.search(r"Regenerate with: `([^`]*)`", text).group(1)


def candidates(report: Path, conditions: dict[str, dict[str, str]]) -> list[Candidate]:
    settings = json.loads((report / "enhancement_settings.json").read_text(encoding="utf-8"))
    grouped: dict[str, list[dict]] = defaultdict(list)
    with open(report / "enhancement_utterances.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["model"] in settings:
                grouped[row["model"]].append({**row, **conditions[row["id"]]})
    out = []
    for label, rows in grouped.items():
        match = SNAPSHOT.match(label)
        out.append(Candidate(match["label"] if match else label, report, settings[label], rows))
    return out


def best_setting(options: list[Candidate]) -> Candidate:
    """The candidate of highest median ΔSI-SDR (then ΔESTOI)."""
    return max(options, key=lambda c: (c.median("si_sdr_improvement"), c.median("estoi_improvement")))


def verdicts(
    reference: Candidate, best: Candidate, options: list[Candidate]
) -> tuple[dict[int, bool], Candidate | None]:
    """Whether each candidate passes the rule against the reference and the best setting, and the fastest that
    passes."""
    bounds = [(c.median("si_sdr_improvement"), c.median("estoi_improvement")) for c in (reference, best)]
    passes = {
        id(c): all(
            c.median("si_sdr_improvement") >= si - SI_SDR_MARGIN
            and c.median("estoi_improvement") >= estoi - ESTOI_MARGIN
            for si, estoi in bounds
        )
        for c in options
    }
    passing = sorted((c for c in options if passes[id(c)]), key=lambda c: (c.rtf, c.iterations))
    return passes, passing[0] if passing else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="eval enhance folders (one with --official-settings)")
    parser.add_argument("--manifest", type=Path, required=True, help="the mixture manifest the reports evaluated")
    parser.add_argument("--train-manifest", type=Path, help="speech the priors trained on: splits seen/unseen speakers")
    parser.add_argument("-o", "--out", type=Path, required=True, help="Markdown file (a PNG figure goes beside it)")
    args = parser.parse_args()

    records = read_jsonl(args.manifest)
    seen = {r.get("speaker") for r in read_jsonl(args.train_manifest)} if args.train_manifest else set()
    per_id = {
        r["id"]: {
            "length": r.get("length", ""),
            "speaker": ("seen speaker" if r.get("speaker") in seen else "unseen speaker") if seen else "",
        }
        for r in records
    }
    conditions = [
        value for key in ("length", "speaker") for value in sorted({c[key] for c in per_id.values()}) if value
    ]
    per_prior: dict[str, list[Candidate]] = defaultdict(list)
    for report in args.reports:
        for c in candidates(report, per_id):
            per_prior[c.prior].append(c)

    lines = [
        "# Inference settings per prior",
        "",
        f"Mixtures: `{args.manifest}`. Medians over mixtures of the improvement over the noisy input; "
        "RTF = processing seconds per second of audio, one thread per process on a shared 2-core machine, from the "
        "run that produced the row (rows of one report share its load; across reports the loads differ). Rule: "
        f"pass when the median ΔSI-SDR is at most {SI_SDR_MARGIN} dB and the median ΔESTOI "
        f"at most {ESTOI_MARGIN} below both the official settings' (300 iterations, lr 1e-3, generated past) and "
        "the best setting's (the prior's row of highest median ΔSI-SDR, marked *best*); the chosen setting is the "
        "fastest that passes.",
        "",
        "Reports:",
        "",
        *[f"- `{report_command(r)}`" for r in args.reports],
        "",
        f"Regenerate with: `python recipes/vem_settings.py {' '.join(map(str, args.reports))} "
        f"--manifest {args.manifest}"
        + (f" --train-manifest {args.train_manifest}" if args.train_manifest else "")
        + f" -o {args.out}`",
    ]
    split = " | ".join(f"ΔSI-SDR {c}" for c in conditions)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for prior, options in per_prior.items():
        reference = next((c for c in options if c.official), None)
        best = best_setting(options)
        passes, chosen = verdicts(reference, best, options) if reference else ({id(c): False for c in options}, None)
        options.sort(key=lambda c: (c is not reference, c.iterations))
        lines += [
            "",
            f"## {prior}",
            "",
            *(["No row with the official settings: the rule cannot judge these settings.", ""] * (not reference)),
            f"| setting | n | ΔSI-SDR (dB) | {split} | ΔESTOI | RTF | rule |",
            "|---|---:|---:|" + "---:|" * len(conditions) + "---:|---:|---|",
        ]
        for c in options:
            verdict = ", ".join(
                word
                for word, holds in (
                    ("official", c is reference),
                    ("**chosen**", c is chosen),
                    ("pass", passes[id(c)] and c is not chosen and c is not reference),
                    ("*best*", c is best),
                )
                if holds
            )
            by_length = " | ".join(f"{c.median('si_sdr_improvement', length):+.2f}" for length in conditions)
            lines.append(
                f"| {c.name} | {len(c.rows)} | {c.median('si_sdr_improvement'):+.2f} | {by_length} | "
                f"{c.median('estoi_improvement'):+.3f} | {c.rtf:.2f} | {verdict} |"
            )
        for report in args.reports:  # a curve per report that holds several iteration counts of the prior
            curve = sorted((c for c in options if c.report == report), key=lambda c: c.iterations)
            if len(curve) < 2:
                continue
            for ax, column in zip(axes, ("si_sdr_improvement", "estoi_improvement")):
                label = f"{prior}, {ENGINES[str(curve[0].settings['engine'])]}"
                ax.plot([c.iterations for c in curve], [c.median(column) for c in curve], marker="o", label=label)
    for ax, title in zip(axes, ("median ΔSI-SDR (dB)", "median ΔESTOI")):
        ax.set_xlabel("iterations")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    picture = args.out.with_suffix(".png")
    figure.savefig(picture, dpi=100)
    lines += ["", f"![median improvement against iterations]({picture.name})", ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
