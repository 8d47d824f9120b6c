"""Training-data throughput: frames/s served by the memory-mapped sequence dataset.

    python benchmarks/bench_data.py [--data-root data/open] [--batch-size 128] [--seq-len 50]

With --data-root, the training manifest of the open corpus is used (its spectrogram cache is built
on first use and timed separately); without it, a synthetic 10-minute corpus is generated.
Training consumes a few thousand frames per second on CPU (see bench_train.py), so the loader
must serve far more than that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from speechdvae import audio
from speechdvae.data.manifest import write_manifest
from speechdvae.data.sequences import SequenceDataset, SpectrogramCache


def synthetic_manifest(folder: Path, minutes: float = 10.0) -> Path:
    rng = np.random.default_rng(0)
    records = []
    for i in range(int(minutes * 60 / 3)):
        x = rng.standard_normal(48000).astype(np.float32) * 0.1
        path = folder / f"u{i}.flac"
        audio.write_audio(path, x)
        records.append({"id": f"u{i}", "path": str(path), "sha256": str(i)})
    write_manifest(folder / "train.jsonl", records)
    return folder / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root:
            manifest, cache_dir = (
                args.data_root / "manifests" / "speech_train.jsonl",
                args.data_root / "cache" / "spectrograms",
            )
        else:
            manifest, cache_dir = synthetic_manifest(Path(tmp)), Path(tmp) / "cache"
        t0 = time.perf_counter()
        cache = SpectrogramCache(manifest, cache_dir)
        t_cache = time.perf_counter() - t0
        data = SequenceDataset(cache, args.seq_len, random_crop=False)
        crops = SequenceDataset(cache, args.seq_len, random_crop=True)
        rows = []
        for label, ds in (("fixed chunks", data), ("random crops", crops)):
            frames, t0 = 0, time.perf_counter()
            for epoch in range(args.epochs):
                for batch in ds.batches(args.batch_size, shuffle=True, epoch=epoch):
                    frames += batch.shape[0] * batch.shape[1]
            rows.append((label, frames / (time.perf_counter() - t0)))
    print(
        f"corpus: {manifest} — {len(cache.ids)} files, {int(cache.lengths.sum())} frames, "
        f"{len(data)} sequences of {args.seq_len} frames; cache ready in {t_cache:.1f} s"
    )
    print(f"\n| sampling | frames/s served (B={args.batch_size}, T={args.seq_len}) |\n|---|---:|")
    for label, fps in rows:
        print(f"| {label} | {fps:,.0f} |")


if __name__ == "__main__":
    main()
