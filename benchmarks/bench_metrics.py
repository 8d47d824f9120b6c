"""Throughput of `evaluate_pairs`: seconds per pair with one worker and with every core.

Usage: python benchmarks/bench_metrics.py [--pairs 16] [--clip PATH]
The pairs are a real speech clip against copies of it with white noise at several SNRs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from speechdvae.audio import read_audio
from speechdvae.evaluate.metrics import evaluate_pairs, markdown_table, summarize_metrics

DEFAULT_CLIP = (
    Path(__file__).resolve().parents[2] / "shared" / "official-dvae-se" / "reference" / "audio" / "agent-pass.wav"
)


def noisy_pairs(clip: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (clean, clean + white noise) pairs at SNRs cycling over -5, 0, 5 and 10 dB."""
    clean = read_audio(clip)[0].astype(np.float64)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(count):
        snr_db = (-5, 0, 5, 10)[i % 4]
        noise = rng.standard_normal(len(clean))
        noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
        pairs.append((clean, clean + noise))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    args = parser.parse_args()
    if not args.clip.is_file():
        raise SystemExit(f"{args.clip}: clip not found (pass --clip)")
    pairs = noisy_pairs(args.clip, args.pairs)
    seconds = len(pairs[0][0]) / 16000
    for workers in sorted({1, os.cpu_count() or 1}):
        start = time.perf_counter()
        rows = evaluate_pairs(pairs, workers=workers)
        elapsed = time.perf_counter() - start
        print(
            f"workers={workers}: {elapsed:.2f} s for {len(pairs)} pairs of {seconds:.2f} s "
            f"({elapsed / len(pairs):.3f} s per pair)"
        )
    print(markdown_table(summarize_metrics(rows)))


if __name__ == "__main__":
    main()
