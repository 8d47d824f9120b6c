"""`speechdvae train` (a speech prior) and `speechdvae baseline train` (the supervised baseline (UMX))."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .options import DATA_ROOT, add_device, add_progress

if TYPE_CHECKING:
    from ..train.baseline import BaselineConfig


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`train` and `baseline train`."""
    train = sub.add_parser(
        "train",
        help="train a speech prior from a preset or a config file",
        description="Train a speech prior. Data come from --data-root (the open corpus layout: "
        "manifests/speech_{train,valid}.jsonl) or explicit --train/--valid manifests. "
        "Runs resume exactly with --resume; under `torchrun --nproc_per_node N` training is distributed.",
    )
    train.add_argument("--preset", help="preset name (e.g. vae, dkf, rvae, rvae-causal, srnn-tf, srnn-ss)")
    train.add_argument(
        "--size",
        default="small",
        help="preset size: small, paper, or another section of the preset's YAML, e.g. medium for light "
        "(default: small)",
    )
    train.add_argument("--config", help="a YAML file with model/train/data sections, instead of a preset")
    train.add_argument(
        "--data-root",
        default=DATA_ROOT,
        help="corpus folder built by `speechdvae data open` (default: $SPEECHDVAE_DATA or data/open)",
    )
    train.add_argument("--train", help="training manifest (overrides data.train and --data-root)")
    train.add_argument("--valid", help="validation manifest (overrides data.valid and --data-root)")
    train.add_argument("--cache", help="spectrogram cache folder (default: DATA_ROOT/cache/spectrograms)")
    train.add_argument("-o", "--out", required=True, help="run folder (state, logs, best model)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.lr=5e-4 (repeatable)",
    )
    add_progress(train)
    train.set_defaults(func=run_train)

    baseline = sub.add_parser(
        "baseline",
        help="the supervised baseline (UMX): an Open-Unmix-style mask estimator",
        description='The supervised baseline (UMX) of the SE paper ("UMX retrain"): an Open-Unmix-style mask '
        "estimator trained on noisy/clean pairs.",
    )
    baseline_sub = baseline.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    train_baseline = baseline_sub.add_parser(
        "train",
        help="train the supervised baseline (UMX) on noisy/clean pairs mixed on the fly",
        description="Train the supervised baseline (UMX) on clean training speech mixed on the fly with training "
        "noise (-5 to 5 dB), choosing the best step on the validation mixtures; the best model is exported to "
        "RUN_DIR/model as soon as it improves, usable by `eval enhance --model` and `enhance --model`. Runs resume "
        "exactly with --resume.",
    )
    train_baseline.add_argument(
        "-o", "--out", required=True, metavar="RUN_DIR", help="run folder (state, logs, best model)"
    )
    train_baseline.add_argument(
        "--data-root",
        default=DATA_ROOT,
        help="corpus folder with manifests/{speech,noise}_train.jsonl and "
        "mixtures/valid/manifest.jsonl (default: $SPEECHDVAE_DATA or data/open)",
    )
    train_baseline.add_argument("--steps", type=int, metavar="N", help="training steps (default: 2000)")
    train_baseline.add_argument("--batch-size", type=int, metavar="N", help="crops per step (default: 16)")
    train_baseline.add_argument("--hidden-size", type=int, metavar="N", help="hidden size (default: 128)")
    train_baseline.add_argument("--lr", type=float, help="Adam learning rate (default: 1e-3)")
    train_baseline.add_argument("--valid-every", type=int, metavar="N", help="steps between validations (default: 100)")
    train_baseline.add_argument(
        "--valid-limit",
        type=int,
        metavar="N",
        help="validate on N mixtures balanced over noise type x SNR (default: all)",
    )
    train_baseline.add_argument("--seed", type=int, help="seed of the weights and of the mixing (default: 0)")
    train_baseline.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    add_device(train_baseline)
    add_progress(train_baseline)
    train_baseline.set_defaults(func=run_baseline)


def run_train(args: argparse.Namespace) -> int:
    """`speechdvae train`: resolve and check the configuration, then train."""
    from ..train.dvae import Trainer, resolve_config

    root = Path(args.data_root)
    config = resolve_config(
        args.preset,
        args.size,
        args.train,
        args.valid,
        args.cache or str(root / "cache" / "spectrograms"),
        args.overrides,
        args.config,
        data_root=str(root),
    )
    trainer = Trainer(config, args.out, resume=args.resume, progress=not args.no_progress)
    model_dir = trainer.train()
    print(f"best model (epoch {trainer.best_epoch}, validation loss {trainer.best_loss:.4f}): {model_dir}")
    return 0


def baseline_config(args: argparse.Namespace) -> BaselineConfig:
    """The run configuration of `speechdvae baseline train`: data under --data-root, unset options at their
    defaults."""
    from ..train.baseline import BaselineConfig

    root = Path(args.data_root)
    given = {f.name: getattr(args, f.name) for f in fields(BaselineConfig) if getattr(args, f.name, None) is not None}
    return replace(
        BaselineConfig(
            speech_manifest=str((root / "manifests" / "speech_train.jsonl").resolve()),
            noise_manifest=str((root / "manifests" / "noise_train.jsonl").resolve()),
            valid_manifest=str((root / "mixtures" / "valid" / "manifest.jsonl").resolve()),
        ),
        **given,
    )


def run_baseline(args: argparse.Namespace) -> int:
    """`speechdvae baseline train`."""
    from ..enhancement.files import set_threads
    from ..train.baseline import BaselineTrainer

    set_threads(args.device, args.threads)
    trainer = BaselineTrainer(
        baseline_config(args), args.out, resume=args.resume, progress=not args.no_progress, device=args.device
    )
    model_dir = trainer.train()
    print(f"best model (step {trainer.best_step}, validation loss {trainer.best_loss:.4f}): {model_dir}")
    return 0
