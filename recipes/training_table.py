"""Summarise trained runs (checkpoint folders with log.jsonl) as a Markdown table.

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


def main(folder: str) -> None:
    print(f"# Training runs in `{folder}`\n")
    print(f"Regenerate with `python recipes/training_table.py {folder}`. Losses are per frame (IS divergence "
          "summed over the 513 bins + beta-weighted KL) on the open corpus validation split; the time is "
          "the run's own wall-clock time on a shared 2-core CPU.\n")
    print("| run | parameters | epochs | steps | best epoch | best validation loss | validation IS at best | "
          "training time (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in sorted(p for p in Path(folder).iterdir() if (p / "log.jsonl").is_file()):
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        best = min((r for r in rows if r["best"]), key=lambda r: r["valid_loss"])
        print(f"| {run.name} | {parameters(run / 'model' / 'model.safetensors'):,} | {rows[-1]['epoch'] + 1} | "
              f"{rows[-1]['step']} | {best['epoch']} | {best['valid_loss']:.1f} | {best['valid_recon']:.1f} | "
              f"{rows[-1]['seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/open-small")
