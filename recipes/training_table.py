"""Summarise the trained speech priors (run folders with log.jsonl written by `speechdvae train`) as a Markdown
table; other runs (the supervised baseline's, from `speechdvae baseline train`) are left out.

    python recipes/training_table.py checkpoints/open-small > docs/training.md
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from safetensors import safe_open


def parameters(weights: Path) -> int:
    with safe_open(str(weights), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def prior_runs(folder: Path) -> list[Path]:
    """The run folders of speech priors: a config with a `train` section beside the log."""
    return sorted(p for p in folder.iterdir() if (p / "log.jsonl").is_file() and (p / "config.json").is_file()
                  and "train" in json.loads((p / "config.json").read_text()))


def starts_from(run: Path) -> str:
    """The run whose model initialised this one (`train.init_from`), or "scratch"."""
    init = json.loads((run / "config.json").read_text())["train"].get("init_from")
    return Path(init).parent.name if init else "scratch"


def main(folder: str) -> None:
    print(f"# Training runs in `{folder}`\n")
    print(f"Regenerate with `python recipes/training_table.py {folder}`. Losses are per frame (IS divergence "
          "summed over the 513 bins + beta-weighted KL) on the open corpus validation split; the time is "
          "the run's own wall-clock time on a shared 2-core CPU (a run that starts from another one adds to its steps "
          "and time).\n")
    print("| run | starts from | parameters | epochs | steps | best epoch | best validation loss | validation IS at best | "
          "training time (s) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in prior_runs(Path(folder)):
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        best = min((r for r in rows if r["best"]), key=lambda r: r["valid_loss"])
        print(f"| {run.name} | {starts_from(run)} | {parameters(run / 'model' / 'model.safetensors'):,} | {rows[-1]['epoch'] + 1} | "
              f"{rows[-1]['step']} | {best['epoch']} | {best['valid_loss']:.1f} | {best['valid_recon']:.1f} | "
              f"{rows[-1]['seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/open-small")
