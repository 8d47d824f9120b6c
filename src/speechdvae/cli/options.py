"""Options shared by several sub-commands, each defined once: the inference engine and its settings, the models an
evaluation compares, the data folder and the progress bar."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..commands import ENGINES, INFERENCE, INFERENCE_OPTIONS, OFFICIAL_SETTINGS
from ..errors import UserError

if TYPE_CHECKING:
    from ..enhancement.enhancer import InferenceConfig

# The corpus folder built by `speechdvae data open`, read by training and evaluation defaults.
DATA_ROOT = os.environ.get("SPEECHDVAE_DATA", "data/open")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The inference engine and its settings (`enhance`, `eval enhance`, `eval listen`); unset settings keep the
    engine's defaults, listed in the README."""
    group = parser.add_argument_group("inference settings of priors (unset: the engine's default settings)")
    group.add_argument(
        INFERENCE,
        choices=list(ENGINES),
        default=next(iter(ENGINES)),
        help="`vem`: the variational EM, fine-tuning the prior's encoder per recording; `langevin`: posterior "
        "sampling of the prior's latents by Langevin dynamics, nothing fine-tuned (default: %(default)s)",
    )
    group.add_argument(
        OFFICIAL_SETTINGS,
        action="store_true",
        help="VEM: start from the official settings (300 iterations at lr 1e-3, no early stop, "
        "generated past) instead of the default ones",
    )
    for option in INFERENCE_OPTIONS:
        only = "" if len(option.engines) == len(ENGINES) else ", ".join(ENGINES[name] for name in option.engines) + ": "
        group.add_argument(option.flag, type=option.type, metavar=option.metavar, help=only + option.help)


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The settings the inference options give: the chosen engine's default settings or, for the VEM with
    --official-settings, the official ones, with every option that was given applied; options of another engine
    are refused."""
    from ..enhancement.enhancer import INFERENCE_CONFIGS
    from ..enhancement.vem import VEMConfig

    engine = args.inference
    given = {option: getattr(args, option.dest) for option in INFERENCE_OPTIONS}
    foreign = [option.flag for option, value in given.items() if value is not None and engine not in option.engines]
    if args.official_settings and engine != "vem":
        foreign.insert(0, OFFICIAL_SETTINGS)
    if foreign:
        raise UserError(f"{', '.join(foreign)} do not apply to {INFERENCE} {engine}")
    base = VEMConfig.official() if args.official_settings else INFERENCE_CONFIGS[engine]()
    try:
        return replace(base, **{option.field: value for option, value in given.items() if value is not None})
    except ValueError as err:
        raise UserError(f"{ENGINES[engine]} settings: {err}") from err


def add_model_choice(parser: argparse.ArgumentParser) -> None:
    """The options naming the models an evaluation compares (shared by every `eval` task)."""
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="checkpoint folder to evaluate, labelled NAME in the tables (repeatable)",
    )
    parser.add_argument(
        "--official", metavar="DIR", help="also evaluate the official DVAE-SE checkpoints in DIR (WSJ0 and VoiceBank)"
    )
    parser.add_argument(
        "--official-cache",
        default="checkpoints/official",
        metavar="DIR",
        help="where the official checkpoints are imported, unless already there "
        "(default: checkpoints/official; GPL-3.0, keep them out of your own releases)",
    )


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """`NAME=PATH` options -> {NAME: PATH}; a bare PATH is labelled by its folder name."""
    models: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name, spec
        if not label or not path:
            raise UserError(f"--model expects NAME=PATH, got {spec!r}")
        if label in models:
            raise UserError(f"two models are labelled {label!r}")
        models[label] = path
    return models


def models_from_args(args: argparse.Namespace, task: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The --model NAME=PATH models, and those plus the --official ones (imported into --official-cache)."""
    from ..evaluate.resynthesis import official_models

    given = parse_model_specs(args.model)
    models: dict[str, Any] = dict(given)
    if args.official is not None:
        official = official_models(args.official, args.official_cache)
        clash = sorted(set(official) & set(models))
        if clash:
            raise UserError(f"--model labels clash with the official ones: {', '.join(clash)}")
        models.update(official)
    if not models:
        raise UserError(f"{task} needs at least one --model NAME=PATH or --official DIR")
    return given, models


def add_progress(parser: argparse.ArgumentParser) -> None:
    """--no-progress, for commands showing a progress bar."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_device(
    parser: argparse.ArgumentParser,
    help_text: str = "torch device (default: cuda if available, else cpu)",
    threads: str = "torch CPU threads (default: 1 on CPU)",
) -> None:
    """--device and --threads, for commands running models."""
    parser.add_argument("--device", help=help_text)
    parser.add_argument("--threads", type=int, metavar="N", help=threads)
