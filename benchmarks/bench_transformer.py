"""HiT-DVAE / LigHT-DVAE: parameter counts, training throughput, and generation (GEN) speed of the
cached-key/value decoding loop against recomputing the whole prefix at every frame.

Usage: python benchmarks/bench_transformer.py [--threads 1] [--gen-batch 8] [--repeats 3]
Prints Markdown tables. Throughput uses random power spectrograms; speed depends on the machine's load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from speechdvae.models import Posterior, load_preset
from speechdvae.models.losses import elbo_loss
from speechdvae.models.transformer import TransformerDVAE

PAPER_PARAMS = {"hit": "21.75 M", "light": "17.46 M"}
KINDS = ("hit", "light")


def build(kind: str, size: str) -> TransformerDVAE:
    config = dict(load_preset(kind, size)["model"])
    config.pop("name")
    torch.manual_seed(0)
    return TransformerDVAE(**config)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def random_powers(batch: int, frames: int, x_dim: int) -> torch.Tensor:
    return torch.rand(batch, frames, x_dim).square() * 10 + 1e-6


def training_step(model: TransformerDVAE, s: torch.Tensor) -> Callable[[], None]:
    """One forward + backward pass of the teacher-forced ELBO."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        post, dec = model(s, sample=True, feedback=0.0)
        elbo_loss(s, post, dec, beta_z=0.01, beta_w=0.01)["loss"].backward()

    return step


def naive_generation(model: TransformerDVAE, post: Posterior) -> torch.Tensor:
    """GEN by re-running the teacher-forced decoder on the whole prefix at every frame."""
    z, w = post.z, post.w
    past = z.new_zeros(z.shape[0], 1, model.x_dim)
    for t in range(z.shape[1]):
        prefix = Posterior(z[:, : t + 1], z[:, : t + 1], z[:, : t + 1], w, w, w)
        y = model.decode(prefix, past, feedback=0.0).y_logvar[:, t : t + 1]
        past = torch.cat([past[:, :t], y.exp(), past[:, t:]], dim=1)
    return past[:, :-1].log()


def random_posterior(model: TransformerDVAE, batch: int, frames: int) -> Posterior:
    z, w = torch.randn(batch, frames, model.z_dim), torch.randn(batch, model.w_dim)
    return Posterior(z, z, z, w, w, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")

    print("| preset | size | parameters | paper |\n|---|---|---:|---:|")
    for size in ("paper", "small"):
        for kind in KINDS:
            n = sum(p.numel() for p in build(kind, size).parameters())
            print(f"| {kind} | {size} | {n:,} | {PAPER_PARAMS[kind] if size == 'paper' else ''} |")

    print("\n| preset (small) | training, B=32 T=50, fwd+bwd (frames/s) | s/step |\n|---|---:|---:|")
    for kind in KINDS:
        model = build(kind, "small").train()
        seconds = best_time(training_step(model, random_powers(32, 50, model.x_dim)), args.repeats)
        print(f"| {kind} | {32 * 50 / seconds:,.0f} | {seconds:.3f} |")

    print(
        "\n| preset (small) | T | GEN incremental (frames/s) | GEN naive (frames/s) | speed-up | max abs diff |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    with torch.no_grad():
        for kind in KINDS:
            model = build(kind, "small").eval()
            for frames in (100, 200):
                post = random_posterior(model, args.gen_batch, frames)
                fast = best_time(lambda: model.decode(post, None, feedback=1.0), args.repeats)
                slow = best_time(lambda: naive_generation(model, post), 1)
                diff = (model.decode(post, None, feedback=1.0).y_logvar - naive_generation(model, post)).abs().max()
                total = args.gen_batch * frames
                speeds = f"{total / fast:,.0f} | {total / slow:,.0f} | {slow / fast:.1f}x"
                print(f"| {kind} | {frames} | {speeds} | {diff:.1e} |")


if __name__ == "__main__":
    main()
