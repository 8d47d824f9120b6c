"""Enhancement speed of this working tree against another revision of the code, measured side by side.

A speed-up that must not change the results (tested as such) is judged by one number: the time the same
enhancement takes with and without it, on the same machine at the same moment. The base revision is checked out
into a temporary git worktree; the two trees then enhance the same mixtures in alternating child processes (one
thread each), `--rounds` times, and the medians and their ratio are printed as a Markdown table.

    python benchmarks/bench_revisions.py --base HEAD~1 --manifest data/open/mixtures/valid_realistic/manifest.jsonl \
        --limit 2 --model WSJ0-DKF=checkpoints/official/official-wsj-dkf --inference langevin --set niter=30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_enhancement(args: argparse.Namespace) -> dict[str, float]:
    """Seconds each model takes to enhance the mixtures, with the code this process imported."""
    import torch

    import speechdvae
    from speechdvae.evaluate.mixtures import balanced_subset, read_mixtures, read_pair

    torch.set_num_threads(1)
    if not Path(speechdvae.__file__).is_relative_to(os.environ["PYTHONPATH"]):
        raise SystemExit(f"imported {speechdvae.__file__}, not the tree in PYTHONPATH")
    waves = [read_pair(r)[0] for r in balanced_subset(read_mixtures(args.manifest), args.limit)]
    settings = {key: json.loads(value) for key, value in (s.split("=", 1) for s in args.set)}
    seconds = {}
    for item in args.model:
        label, _, path = item.partition("=")
        start = time.perf_counter()
        for wave in waves:
            speechdvae.enhance(wave, 16000, model=path, inference=args.inference, **settings)
        seconds[label] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare with (e.g. HEAD~1, main)")
    parser.add_argument("--manifest", required=True, help="mixtures to enhance")
    parser.add_argument("--limit", type=int, default=2, help="mixtures, balanced over noise type × SNR (default: 2)")
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH|default")
    parser.add_argument("--inference", choices=["vem", "langevin"], help="engine (default: each prior's own)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="engine setting")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of each tree (default: 5)")
    parser.add_argument("--time", action="store_true", help=argparse.SUPPRESS)  # child: time this tree's code
    args = parser.parse_args()
    if args.time:
        print(json.dumps(time_enhancement(args)))
        return
    child = list(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            times: dict[str, dict[str, list[float]]] = {"base": {}, "this tree": {}}
            for _ in range(args.rounds):
                for name, tree in (("base", base), ("this tree", ROOT)):
                    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
                    out = subprocess.run(
                        [sys.executable, __file__, *child, "--time"],
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    for label, seconds in json.loads(out.splitlines()[-1]).items():
                        times[name].setdefault(label, []).append(seconds)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    print(f"Seconds to enhance {args.limit} mixtures (median of {args.rounds} alternating runs), base = {args.base}\n")
    print("| model | base | this tree | ratio |\n|---|---:|---:|---:|")
    for label in times["base"]:
        old, new = (statistics.median(times[name][label]) for name in ("base", "this tree"))
        print(f"| {label} | {old:.2f} | {new:.2f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
