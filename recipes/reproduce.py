"""Regenerate every table and figure of both papers on the open corpus (`make reproduce`).

Builds the open corpus and its noisy mixtures if they are missing, imports the original authors' checkpoints
from ../shared/official-dvae-se when they are there (without them, their rows are left out of the reports),
optionally retrains the `small` priors (`--retrain`), then reruns each report with the command written at its top
("Regenerate with: `...`"), so the reports and this script cannot disagree. Shows the plan with a time estimate
first (minutes measured on a 2-core CPU from empty caches), then each step's own progress bar and the time left.
The evaluations cache their results, so an interrupted run continues where it stopped.

    python recipes/reproduce.py [--retrain] [--only generation enhancement ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import html
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = "data/open"
MANIFESTS = f"{DATA}/manifests"
OFFICIAL_SOURCE = "../shared/official-dvae-se"  # the authors' release (GPL-3.0), not part of this repository
OFFICIAL_DIR = "checkpoints/official"  # where `speechdvae import-official` converts it
COMMAND = re.compile(r"Regenerate with:? (?:<code>|`)(.+?)(?:</code>|`)")


@dataclass(frozen=True)
class Step:
    """One report: its name, the file holding its command, the estimated minutes, and the data it cannot do
    without (the official release in ../shared for the report that compares the official checkpoints)."""

    name: str
    report: str
    minutes: float
    needs: str = ""


STEPS = (
    Step("training", "", 1),
    Step("resynthesis", "docs/resynthesis_ours/resynthesis.md", 15),
    Step("resynthesis-official", "docs/resynthesis/resynthesis.md", 12, needs=OFFICIAL_SOURCE),
    Step("enhancement-valid-30", "docs/enhancement_valid/iterations-30/enhancement.md", 6),
    Step("enhancement-valid-100", "docs/enhancement_valid/iterations-100/enhancement.md", 20),
    Step("enhancement-valid-generated", "docs/enhancement_valid/past-generated/enhancement.md", 25),
    Step("enhancement-valid-300", "docs/enhancement_valid/iterations-300/enhancement.md", 12),
    Step("enhancement-valid-stop", "docs/enhancement_valid/stop-1e-3/enhancement.md", 6),
    Step("enhancement-valid-official", "docs/enhancement_valid/official-settings/enhancement.md", 65),
    Step("enhancement-valid", "docs/enhancement_valid/enhancement.md", 15),
    Step("enhancement-realistic-defaults", "docs/enhancement_realistic/defaults-before/enhancement.md", 20),
    Step("enhancement-realistic-official", "docs/enhancement_realistic/official-settings/enhancement.md", 30),
    Step(
        "enhancement-realistic-official-light",
        "docs/enhancement_realistic/official-settings-light-long/enhancement.md",
        100,
    ),
    Step(
        "enhancement-realistic-official-default",
        "docs/enhancement_realistic/official-settings-default/enhancement.md",
        25,
    ),
    Step("enhancement-realistic-langevin-default", "docs/enhancement_realistic/langevin-default/enhancement.md", 3),
    Step("enhancement-realistic-official-fast", "docs/enhancement_realistic/official-settings-fast/enhancement.md", 25),
    Step("enhancement-realistic-langevin-fast", "docs/enhancement_realistic/langevin-fast/enhancement.md", 3),
    Step("enhancement-realistic-vem-default", "docs/enhancement_realistic/vem-default/enhancement.md", 12),
    Step("enhancement-realistic-shipped", "docs/enhancement_realistic/defaults/enhancement.md", 16),
    Step("enhancement", "docs/enhancement/enhancement.md", 50),
    Step("generation", "docs/generation/generation.md", 25),
    Step("listening", "docs/listen/index.html", 3),
)
DATA_MINUTES = 19  # download + conversion of the open corpus, the two mixture sets and the realistic benchmark
RETRAIN_MINUTES = 400  # recipes/train_small.sh, two runs at a time


def report_command(report: Path) -> list[str]:
    """The command written at the top of a report."""
    if not report.is_file():
        raise SystemExit(f"{report}: missing, so its command is unknown (restore it from git)")
    match = COMMAND.search(report.read_text(encoding="utf-8"))
    if not match:
        raise SystemExit(f"{report}: no 'Regenerate with' command found")
    return shlex.split(html.unescape(match.group(1)))


def step_command(step: Step, official: bool) -> list[str]:
    """The step's command; without the official checkpoints (`official` False), minus the models among them."""
    if step.name == "training":
        return [
            sys.executable,
            "recipes/training_report.py",
            "checkpoints/open-paper",
            "checkpoints/open-small",
            "-o",
            "docs/training.md",
        ]
    command = report_command(ROOT / step.report)
    return command if official else without_official_models(command)


def without_official_models(command: list[str]) -> list[str]:
    """`command` without its `--model LABEL=checkpoints/official/...` options."""
    kept: list[str] = []
    args = iter(command)
    for arg in args:
        if arg != "--model":
            kept.append(arg)
            continue
        value = next(args, "")
        if not value.partition("=")[2].startswith(OFFICIAL_DIR + "/"):
            kept += [arg, value]
    return kept


def runnable(command: list[str]) -> list[str]:
    """`speechdvae ...` run by this interpreter, so that no virtual environment needs activating."""
    return [sys.executable, "-m", "speechdvae", *command[1:]] if command[0] == "speechdvae" else command


def official_available() -> bool:
    """Whether the official checkpoints are imported, or can be (their release is in ../shared)."""
    return (
        (ROOT / OFFICIAL_DIR).is_dir()
        and any((ROOT / OFFICIAL_DIR).glob("official-*"))
        or (ROOT / OFFICIAL_SOURCE).is_dir()
    )


def data_commands() -> list[list[str]]:
    """What builds the missing data: the corpus, the validation and test mixtures, the official checkpoints."""
    commands = []
    if not (ROOT / MANIFESTS / "speech_test.jsonl").is_file():
        commands.append(["speechdvae", "data", "open", "--root", DATA])
    for split in ("valid", "test"):
        if not (ROOT / DATA / "mixtures" / split / "manifest.jsonl").is_file():
            commands.append(
                [
                    "speechdvae",
                    "data",
                    "mix",
                    "--speech",
                    f"{MANIFESTS}/speech_{split}.jsonl",
                    "--noise",
                    f"{MANIFESTS}/noise_{split}.jsonl",
                    "-o",
                    f"{DATA}/mixtures/{split}",
                ]
            )
    if not (ROOT / DATA / "mixtures" / "valid_realistic" / "manifest.jsonl").is_file():
        commands.append(["speechdvae", "data", "realistic", "--root", DATA])
    if not any((ROOT / OFFICIAL_DIR).glob("official-*")) and (ROOT / OFFICIAL_SOURCE).is_dir():
        commands.append(["speechdvae", "import-official", OFFICIAL_SOURCE, "-o", OFFICIAL_DIR])
    return commands


def retrain_commands() -> list[list[str]]:
    return [
        ["bash", "recipes/train_small.sh", "runs/small", DATA],
        ["bash", "recipes/publish_runs.sh", "runs/small", "checkpoints/open-small"],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true", help="retrain the small priors first (hours)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run only these reports")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands only")
    args = parser.parse_args()
    steps = [s for s in STEPS if (not args.only or s.name in args.only) and (not s.needs or (ROOT / s.needs).exists())]
    plan = [("data", c, DATA_MINUTES / 4) for c in data_commands()]
    plan += [("retraining", c, RETRAIN_MINUTES / 2) for c in retrain_commands()] if args.retrain else []
    official = official_available()
    if not official:
        print(f"{OFFICIAL_SOURCE} is missing: the official checkpoints' rows are left out of the reports")
    plan += [(s.name, step_command(s, official), s.minutes) for s in steps]
    total = sum(minutes for _, _, minutes in plan)
    print(f"{len(plan)} steps, about {total:.0f} min on a 2-core CPU (less where results are cached):")
    for name, command, minutes in plan:
        print(f"  {name:22s} ~{minutes:4.0f} min  {shlex.join(command)}")
    if args.dry_run:
        return 0
    start, left = time.monotonic(), total
    for i, (name, command, minutes) in enumerate(plan, 1):
        print(f"\n[{i}/{len(plan)}] {name} (estimated {minutes:.0f} of the {left:.0f} min left)", flush=True)
        if subprocess.run(runnable(command), cwd=ROOT).returncode:
            print(f"{name} failed: {shlex.join(command)}", file=sys.stderr)
            return 1
        left -= minutes
        print(
            f"[{i}/{len(plan)}] {name} done; {(time.monotonic() - start) / 60:.1f} min so far, "
            f"about {max(left, 0):.0f} min left",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
