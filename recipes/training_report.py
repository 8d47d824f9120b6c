"""Summarise trained speech priors (folders holding `log.jsonl` and `model/`, as `speechdvae train` writes them and
`recipes/publish_runs.sh` commits them): a Markdown table and learning curves (validation loss against CPU-hours).
Runs of the supervised baseline (UMX; no `train` section in their model metadata) are left out.

    python recipes/training_report.py checkpoints/open-paper checkpoints/open-small -o docs/training.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from safetensors import safe_open  # noqa: E402
from train_campaign import ENDED, stage_name  # noqa: E402


def parameters(weights: Path) -> int:
    with safe_open(str(weights), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def training_metadata(run: Path) -> dict | None:
    """The `training` metadata of the run's exported model, None for runs that are not speech priors."""
    config = run / "model" / "config.json"
    if not (run / "log.jsonl").is_file() or not config.is_file():
        return None
    training = json.loads(config.read_text()).get("metadata", {}).get("training", {})
    return training if "train" in training else None


def starts_from(training: dict) -> str:
    """The run whose model initialised this one (`train.init_from`), or "scratch"."""
    init = training["train"].get("init_from")
    return Path(init).parent.name if init else "scratch"


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def cpu_hours(row: dict, training: dict) -> float:
    """CPU-hours of a log row: the run's wall-clock seconds times its processes (one thread each)."""
    return row["seconds"] * training.get("processes", 1) / 3600


def status(name: str, rows: list[dict], training: dict) -> str:
    """How the run stands: "ended on its flat curve" for a campaign stage that ended its lineage (`ENDED` in
    recipes/train_campaign.py), "schedule done" once its learning-rate schedule (warm-up and cosine decay) is
    complete, "early-stopped" once `early_stop_patience` epochs brought no better validation loss, else how many
    epochs have passed since the best one (0: the run was still improving when it stopped or was published)."""
    train = training["train"]
    stale = rows[-1]["epoch"] - max(r["epoch"] for r in rows if r["best"])
    if name in {stage_name(lineage, k) for lineage, k in ENDED.items()}:
        return f"ended on its flat curve, {stale} epoch{'s' if stale != 1 else ''} after its best"
    schedule = train.get("warmup_steps", 0) + train.get("cosine_steps", 0)
    if train.get("lr_schedule") == "warmup_cosine" and rows[-1]["step"] >= schedule:
        return "schedule done"
    if train.get("early_stop_patience") and stale >= train["early_stop_patience"]:
        return "early-stopped"
    return "best at last epoch" if stale == 0 else f"{stale} epoch{'s' if stale > 1 else ''} since best"


def continued(name: str, parent: dict[str, str]) -> str:
    """ ", continued by RUN, ..." for the runs that start from `name`, else ""."""
    later = sorted(run for run, start in parent.items() if start == name)
    return f", continued by {', '.join(later)}" if later else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of runs")
    parser.add_argument("-o", "--out", type=Path, required=True, help="Markdown file (the PNG is written beside it)")
    args = parser.parse_args()
    figure = args.out.with_name(args.out.stem + "_curves.png")
    lines = [
        "# Training runs\n",
        f"Regenerate with `python recipes/training_report.py {' '.join(map(str, args.folders))} -o {args.out}`. "
        "Losses are per frame (IS divergence summed over the 513 bins + β-weighted KL, β = 0.01) on the open corpus "
        "validation split; CPU-hours are the run's own wall-clock time × processes, one thread each, on a shared "
        "2-core CPU (a run that starts from another one counts only its own in the table; the figure draws it after "
        "the run it starts from). The validation split changed three times, so losses compare within a stretch of a "
        "run: its one non-speech file left it during `dkf.3` (epoch 67) and `rvae` (epoch 62), and the runs on the "
        "corpus with the fillets-ng dialogue (`dkf.4`, `rvae.2`, `light-medium`) score it with a −60-dBFS noise floor "
        "(`train.floor_db`), which removes the divergence of the bins below it (docs/training_diagnosis.md, "
        "sections 6 and 7). `dkf.5`, `rvae.3` and `light-speeds` also train on every file at 0.9 and 1.1 times its "
        "speed (`train.speeds`, section 9); their validation files stay at speed 1. The stages after them "
        "(`dkf.6`, `rvae.4`, `vae.2`, `light-speeds.2`) validate on the known and the unseen voices together "
        "(`speech_valid_all.jsonl`, section 10), a third change of split. From `dkf.3` and `rvae.6` on, the DKF and "
        "the RVAE train at a learning rate of 3e-4 instead of 1e-3 (`recipes/train_campaign.py`). From "
        "`light-speeds.4` on, the LigHT-DVAE trains and validates on sequences of 150 frames instead of 50, each "
        "speaker's files cut as one stream (section 13): its validation loss starts a new stretch there. A stage "
        "that a later one continues stopped where its log ends.\n",
        f"![validation loss against CPU-hours]({figure.name})\n",
        "| folder | run | starts from | parameters | epochs | steps | best epoch | best validation loss | "
        "validation IS at best | CPU-hours | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    fig, axes = plt.subplots(1, len(args.folders), figsize=(6.5 * len(args.folders), 4.5), squeeze=False)
    for folder, ax in zip(args.folders, axes[0]):
        ends: dict[str, float] = {}  # CPU-hours at the end of each run, where the runs started from it begin
        runs = [(run, training_metadata(run)) for run in sorted(p for p in folder.iterdir() if p.is_dir())]
        runs = [(r, t) for r, t in runs if t is not None]
        parent = {run.name: starts_from(training) for run, training in runs}

        def depth(name: str) -> int:
            return 1 + depth(parent[name]) if parent.get(name) in parent else 0

        runs.sort(key=lambda rt: depth(rt[0].name))
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for run, training in runs:
            rows = history(run)
            start = ends.get(starts_from(training), 0.0)
            ends[run.name] = start + cpu_hours(rows[-1], training)
            best = min((r for r in rows if r["best"]), key=lambda r: r["valid_loss"])
            lines.append(
                f"| {folder.name} | {run.name} | {starts_from(training)} | "
                f"{parameters(run / 'model' / 'model.safetensors'):,} | {rows[-1]['epoch'] + 1} | {rows[-1]['step']} | "
                f"{best['epoch']} | {best['valid_loss']:.1f} | {best['valid_recon']:.1f} | "
                f"{cpu_hours(rows[-1], training):.2f} | "
                f"{status(run.name, rows, training)}{continued(run.name, parent)} |"
            )
            hours = [start + cpu_hours(r, training) for r in rows]
            ax.plot(hours, [r["valid_loss"] for r in rows], label=run.name)
        ax.set(title=folder.name, xlabel="CPU-hours", ylabel="validation loss per frame", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=80)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
