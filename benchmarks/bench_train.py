"""Training throughput of every preset: frames/s of forward + backward + optimiser step.

    python benchmarks/bench_train.py [--size small] [--threads 1] [--steps 5] [--batch-size 128] \
        [--precision float32 bfloat16]

`--precision bfloat16` runs the step under bf16 autocast (the trainer's `train.precision`), the speed-up being
the ratio of the two rows of one preset.

    python benchmarks/bench_train.py --parity 300 --data-root data/open --presets vae dkf --size paper \
        --precision float32 bfloat16

trains each preset for 300 steps with the trainer itself (real data, same seed and batches) in each precision and
prints the validation loss reached and the wall time per step: the loss-parity check of a precision.
Batches are random power spectrograms of T = 50 frames (the cost does not depend on the
values). Autoregressive models are also timed with feedback = 1 (own past fed back), the mode
of scheduled sampling's last stages. All rows come from one run, so their ratios are comparable
even on a busy machine; absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from speechdvae.models import available_presets, build_model, load_preset
from speechdvae.models.losses import elbo_loss
from speechdvae.train.dvae import Trainer, autocast, resolve_config


def time_steps(model, batch: torch.Tensor, feedback: float, steps: int, precision: str) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for i in range(steps + 1):  # the first step warms up allocations and is not timed
        if i == 1:
            start = time.perf_counter()
        with autocast(batch.device, precision):
            post, dec = model(batch, sample=True, feedback=feedback)
        loss = elbo_loss(batch, post, dec, 0.01, 0.01)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def parity(preset: str, size: str, data_root: Path, steps: int, precisions: list[str]) -> None:
    """Train `preset` for `steps` steps in every precision; print validation loss and s/step of each."""
    manifests = data_root / "manifests"
    for precision in precisions:
        config = resolve_config(
            preset,
            size,
            str(manifests / "speech_train.jsonl"),
            str(manifests / "speech_valid.jsonl"),
            None,
            [f"train.max_steps={steps}", f"train.precision={precision}"],
        )
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(config, run_dir, progress=False)
            trainer.train()
            last = trainer.history[-1]
        print(
            f"| {preset} | {precision} | {steps} | {last['valid_loss']:.1f} | {last['seconds'] / steps:.3f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="a size the presets define (small, paper, medium, ...)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument(
        "--parity", type=int, metavar="STEPS", help="loss-parity check: train STEPS steps per precision"
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/open"), help="open corpus (with --parity)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.parity:
        print(f"| preset ({args.size}) | precision | steps | validation loss | s/step |\n|---|---|---:|---:|---:|")
        for name in args.presets or available_presets():
            parity(name, args.size, args.data_root, args.parity, args.precision)
        return
    torch.manual_seed(0)
    batch = torch.rand(args.batch_size, args.seq_len, 513) ** 4 * 10
    frames = args.batch_size * args.seq_len
    print(f"| preset ({args.size}) | parameters | feedback | precision | s/step | frames/s |")
    print("|---|---:|---:|---|---:|---:|")
    for name in args.presets or available_presets():
        model = build_model(load_preset(name, args.size)["model"])
        n_params = sum(p.numel() for p in model.parameters())
        for feedback in (0.0, 1.0) if model.autoregressive else (0.0,):
            for precision in args.precision:
                seconds = time_steps(model, batch, feedback, args.steps, precision)
                print(
                    f"| {name} | {n_params:,} | {feedback:g} | {precision} | {seconds:.3f} | {frames / seconds:,.0f} |",
                    flush=True,
                )
    print(f"\nB = {args.batch_size}, T = {args.seq_len}, {args.threads} thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
