"""The training criterion of speech priors on a held-out manifest, side by side.

Every checkpoint (ours, or the original authors' imported with `speechdvae import-official`) is scored with
the trainer's own criterion: negative ELBO per frame = IS divergence summed over the 513 bins + beta-weighted KL,
on the same non-overlapping sequences of the manifest (trimmed, peak-normalised power spectrograms), z sampled
under one seed. Autoregressive models are scored with the true past (GT) and with their own past (GEN).

    python recipes/prior_loss.py --manifest data/open/manifests/speech_valid.jsonl \
        --model VAE=checkpoints/open-small/vae/model --model WSJ0-VAE=checkpoints/official/official-wsj-vae \
        -o docs/training_prior_loss.md
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from speechdvae.checkpoints import load_model
from speechdvae.data.sequences import SequenceDataset, SpectrogramCache
from speechdvae.train import evaluate_elbo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="speech manifest (JSONL)")
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH", help="checkpoint (repeatable)")
    parser.add_argument("--cache", help="spectrogram cache (default: next to the manifests, as in training)")
    parser.add_argument("--seq-len", type=int, default=50, help="frames per sequence (default: 50)")
    parser.add_argument("--beta", type=float, default=0.01, help="KL weight of the criterion (default: 0.01)")
    parser.add_argument("-o", "--out", help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = Path(args.manifest)
    cache = args.cache or manifest.resolve().parent.parent / "cache" / "spectrograms"
    data = SequenceDataset(SpectrogramCache(manifest, cache, show_progress=False), args.seq_len)
    rows = ["| model | mode | loss (IS + β KL) | IS | KL z | KL w |", "|---|---|---:|---:|---:|---:|"]
    for item in args.model:
        label, _, path = item.partition("=")
        model = load_model(path)
        modes = {"GT": 0.0, "GEN": 1.0} if model.autoregressive else {"-": 0.0}
        for mode, feedback in modes.items():
            t = evaluate_elbo(model, data, args.beta, args.beta, feedback=feedback)
            rows.append(f"| {label} | {mode} | {t['loss']:.1f} | {t['recon']:.1f} | {t['kl_z']:.1f} | {t['kl_w']:.1f} |")
            print(rows[-1], flush=True)
    table = (f"Negative ELBO per frame on `{manifest.name}` ({len(data)} sequences of {args.seq_len} frames, "
             f"β = {args.beta}).\n\n" + "\n".join(rows) + "\n")
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
