"""The training criterion of speech priors on a held-out manifest, side by side.

Every checkpoint (ours, or the original authors' imported with `speechdvae import-official`) is scored with
the trainer's own criterion: negative ELBO per frame = IS divergence summed over the 513 bins + beta-weighted KL,
on the same non-overlapping sequences of the manifest (trimmed, peak-normalised power spectrograms), z sampled
under one seed. Autoregressive models are scored with the true past (GT) and with their own past (GEN).
The IS divergence with z = posterior mean (true past) is also summarised per sequence: its median and its mean
without the worst 2 % of the sequences, which a few badly fitted ones cannot dominate. A second table splits it by
source corpus, by level (loud and quiet bins) and by frequency band, to tell a model that fits all the data worse
from one that fails on part of it.

    python recipes/prior_loss.py --manifest data/open/manifests/speech_valid.jsonl \
        --model VAE=checkpoints/open-small/vae/model --model WSJ0-VAE=checkpoints/official/official-wsj-vae \
        -o docs/training_diagnosis/prior_loss.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from speechdvae.checkpoints import from_pretrained
from speechdvae.data.sequences import SequenceDataset, SpectrogramCache
from speechdvae.models import DVAE
from speechdvae.models.losses import itakura_saito
from speechdvae.train.dvae import evaluate_elbo

BANDS = {"0-3.5 kHz": slice(0, 224), "3.5-7 kHz": slice(224, 448), "7-8 kHz": slice(448, 513)}
LOUD_DB = 30.0  # "loud" bins lie within this many dB of the sequence's strongest bin
TRIM = 0.02  # share of the worst sequences left out of the trimmed mean
PARTS = ["all", f"loud (≥ −{LOUD_DB:g} dB)", f"quiet (< −{LOUD_DB:g} dB)", *BANDS]


@torch.no_grad()
def sequence_divergences(model: DVAE, data: SequenceDataset) -> np.ndarray:
    """IS divergence per frame of every sequence (z = posterior mean, true past): summed over all bins, over the
    loud and the quiet bins, and over the bins of each frequency band (the columns of PARTS)."""
    model.eval()
    rows = []
    for batch in data.batches(256, shuffle=False):
        post, dec = model(batch, sample=False)
        divergence = itakura_saito(batch, dec.y_logvar)  # (B, T, F)
        loud = batch >= batch.amax(dim=(1, 2), keepdim=True) * 10 ** (-LOUD_DB / 10)
        parts = [divergence, divergence * loud, divergence * ~loud] + [divergence[..., band] for band in BANDS.values()]
        rows.append(torch.stack([part.sum(dim=(1, 2)) for part in parts], dim=1) / data.seq_len)
    return torch.cat(rows).numpy()


def by_corpus(per_sequence: np.ndarray, data: SequenceDataset, corpus_of_file: list[str]) -> dict[str, np.ndarray]:
    """Mean of the rows of `per_sequence` for every source corpus and over all."""
    corpora = np.asarray([corpus_of_file[file] for file in data.stream_of])
    means = {corpus: per_sequence[corpora == corpus].mean(axis=0) for corpus in sorted(set(corpora))}
    return {**means, "all sources": per_sequence.mean(axis=0)}


def robust_summary(per_sequence_is: np.ndarray) -> tuple[float, float]:
    """Median IS per frame over the sequences, and the mean without the worst TRIM of them: a few sequences the
    model fits very badly (a sound that is not speech, a collapsed variance) can dominate the mean."""
    kept = np.sort(per_sequence_is)[: len(per_sequence_is) - int(TRIM * len(per_sequence_is))]
    return float(np.median(per_sequence_is)), float(kept.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="speech manifest (JSONL)")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="checkpoint folder or shipped name (repeatable)",
    )
    parser.add_argument("--cache", help="spectrogram cache (default: next to the manifests, as in training)")
    parser.add_argument("--seq-len", type=int, default=50, help="frames per sequence (default: 50)")
    parser.add_argument("--beta", type=float, default=0.01, help="KL weight of the criterion (default: 0.01)")
    parser.add_argument(
        "--floor-db",
        type=float,
        help="add white noise at this level (dBFS) to every sequence, as training with `train.floor_db` does",
    )
    parser.add_argument("-o", "--out", help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = Path(args.manifest)
    cache = args.cache or manifest.resolve().parent.parent / "cache" / "spectrograms"
    spectra = SpectrogramCache(manifest, cache, show_progress=False)
    data = SequenceDataset(spectra, args.seq_len, floor_db=args.floor_db)
    corpus_of_id = {r["id"]: r["corpus"] for r in map(json.loads, manifest.read_text().splitlines())}
    corpus_of_file = [corpus_of_id[i] for i in spectra.ids]
    bands = [
        "| model | source | " + " | ".join(f"IS {part}" for part in PARTS) + " |",
        "|---|---|" + "---:|" * len(PARTS),
    ]
    rows = [
        f"| model | mode | loss (IS + β KL) | IS | KL z | KL w | IS, median sequence | IS, best {1 - TRIM:.0%} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for item in args.model:
        label, _, path = item.partition("=")
        model = from_pretrained(path)
        per_sequence = sequence_divergences(model, data)
        median, trimmed = robust_summary(per_sequence[:, 0])
        modes = {"GT": 0.0, "GEN": 1.0} if model.autoregressive else {"-": 0.0}
        for mode, feedback in modes.items():
            t = evaluate_elbo(model, data, args.beta, args.beta, feedback=feedback)
            rows.append(
                f"| {label} | {mode} | {t['loss']:.1f} | {t['recon']:.1f} | {t['kl_z']:.1f} | {t['kl_w']:.1f} | "
                + (f"{median:.1f} | {trimmed:.1f} |" if feedback == 0.0 else "| |")
            )
            print(rows[-1], flush=True)
        for corpus, per_part in by_corpus(per_sequence, data, corpus_of_file).items():
            bands.append(f"| {label} | {corpus} | " + " | ".join(f"{v:.1f}" for v in per_part) + " |")
    table = (
        f"Negative ELBO per frame on `{manifest.name}` ({len(data)} sequences of {args.seq_len} frames, "
        f"β = {args.beta}"
        + (f", white noise at {args.floor_db:g} dBFS added" if args.floor_db is not None else "")
        + ").\n\n"
        + "\n".join(rows)
        + "\n\nIS divergence per frame by source, "
        f"by level (bins within {LOUD_DB:g} dB of the sequence's strongest bin, and the others) and by band "
        "(z = posterior mean, true past):\n\n" + "\n".join(bands) + "\n"
    )
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
