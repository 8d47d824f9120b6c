"""How much an autoregressive DVAE's speech decoder leans on the true past s_{1:t-1} rather than on its latents:
resynthesis SI-SDR of utterances decoded from the posterior mean of z (and w) under four pasts.

- `true`: the true past (teacher forcing, the GT mode of `speechdvae eval resynth`);
- `shuffled`: the true past frames in a random order (same spectra, the wrong frame at each step);
- `own-step`: the decoder's own one-step predictions exp(y_t) from the true past, read as the past (smooth
  frames, no build-up of errors);
- `generated`: its own past outputs, frame by frame (the GEN mode).

A decoder that draws its speech from the latents loses little between `true` and `shuffled`; one that copies from
the past loses most of it, and then also in `generated`.

    python recipes/past_dependence.py MODEL_DIR [MODEL_DIR ...] --manifest data/open/manifests/speech_valid_all.jsonl \
        [--limit 40] [--seed 0]

Utterances: `--limit` of the manifest, evenly spaced by id, trimmed and peak-normalised as in training
(`speechdvae eval resynth`). Prints a Markdown table of mean and median SI-SDR per model and past.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from speechdvae import audio, checkpoints
from speechdvae.data.manifest import read_manifest
from speechdvae.evaluate import resynthesis
from speechdvae.evaluate.common import evenly_spaced
from speechdvae.evaluate.metrics import si_sdr
from speechdvae.models.base import DVAE

PASTS = ("true", "shuffled", "own-step", "generated")


@torch.no_grad()
def variances(model: DVAE, power: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The speech variance exp(y) (B, T, F) of a power spectrogram (B, T, F) decoded under each of PASTS."""
    s = power.to(model.device)
    post = model.infer(s, sample=False)
    true = model.decode(post, s).y_logvar.exp()
    order = torch.randperm(s.shape[1], generator=generator).to(s.device)
    return {
        "true": true,
        "shuffled": model.decode(post, s[:, order]).y_logvar.exp(),
        "own-step": model.decode(post, true).y_logvar.exp(),
        "generated": model.decode(post, s, feedback=1.0).y_logvar.exp(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="autoregressive DVAE checkpoint folders")
    parser.add_argument("--manifest", required=True, help="speech manifest (validation utterances)")
    parser.add_argument("--limit", type=int, default=40, help="utterances, evenly spaced by id (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled pasts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    waves = [
        resynthesis.prepare(audio.read_audio(r["path"])[0])
        for r in evenly_spaced(read_manifest(args.manifest), args.limit)
    ]
    print("| model | " + " | ".join(f"{p}: mean / median SI-SDR (dB)" for p in PASTS) + " |")
    print("|---|" + "---:|" * len(PASTS))
    for folder in args.models:
        model = checkpoints.load_model(folder).eval()
        if not model.autoregressive:
            raise SystemExit(f"{folder}: not an autoregressive DVAE, its decoder reads no past")
        generator = torch.Generator().manual_seed(args.seed)
        scores: dict[str, list[float]] = {p: [] for p in PASTS}
        for x in waves:
            spec, power = resynthesis.analyse(x)
            for past, variance in variances(model, power[None], generator).items():
                scores[past].append(si_sdr(x, resynthesis.synthesize(variance[0].cpu(), spec, len(x))))
        cells = [f"{np.mean(scores[p]):.1f} / {np.median(scores[p]):.1f}" for p in PASTS]
        print(f"| {folder} | " + " | ".join(cells) + " |")
    print(f"\n{len(waves)} utterances of {args.manifest}")


if __name__ == "__main__":
    main()
