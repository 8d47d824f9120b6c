"""Options shared by several sub-commands, each defined once: the inference engine and its settings, the models an
evaluation compares, the data folder and the progress bar."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..commands import ENGINES, INFERENCE, INFERENCE_OPTIONS, OFFICIAL_SETTINGS
from ..errors import UserError

if TYPE_CHECKING:
    from ..enhancement.enhancer import InferenceRequest

# The corpus folder built by `speechdvae data open`, read by training and evaluation defaults.
DATA_ROOT = os.environ.get("SPEECHDVAE_DATA", "data/open")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The inference engine and its settings (`enhance`, `eval enhance`, `eval listen`); unset settings keep each
    prior's own (its checkpoint's choice, else the engine's defaults, listed in the README)."""
    group = parser.add_argument_group(
        "inference settings of priors (unset: the prior's own, chosen for it on validation mixtures, else the "
        "engine's defaults)"
    )
    group.add_argument(
        INFERENCE,
        choices=list(ENGINES),
        help="`vem`: the variational EM, fine-tuning the prior's encoder per recording; `langevin`: posterior "
        "sampling of the prior's latents by Langevin dynamics, nothing fine-tuned (default: the prior's own "
        "engine, else vem; an option of one engine only chooses that engine)",
    )
    group.add_argument(
        OFFICIAL_SETTINGS,
        action="store_true",
        help="VEM: start from the official settings (300 iterations at lr 1e-3, no early stop, "
        "generated past) instead of the prior's own",
    )
    for option in INFERENCE_OPTIONS:
        only = "" if len(option.engines) == len(ENGINES) else ", ".join(ENGINES[name] for name in option.engines) + ": "
        group.add_argument(option.flag, type=option.type, metavar=option.metavar, help=only + option.help)


def inference_request(args: argparse.Namespace) -> InferenceRequest:
    """The inference the options ask of priors: the engine given, or the only one that the given options (and
    --official-settings) apply to, else each prior's own; the settings given, which must fit that engine's defaults
    (or those of one of the engines they apply to). Options of engines that cannot run together are refused."""
    from ..enhancement.enhancer import INFERENCE_CONFIGS, InferenceRequest, settings_with
    from ..enhancement.vem import VEMConfig

    given = {option: value for option in INFERENCE_OPTIONS if (value := getattr(args, option.dest)) is not None}
    official = [OFFICIAL_SETTINGS] if args.official_settings else []
    engines = {VEMConfig.engine} if args.official_settings else set(ENGINES)
    for option in given:
        engines &= set(option.engines)
    if args.inference is not None:
        if args.inference not in engines:
            foreign = [option.flag for option in given if args.inference not in option.engines]
            foreign = official * (args.inference != VEMConfig.engine) + foreign
            verb = "does" if len(foreign) == 1 else "do"
            raise UserError(f"{', '.join(foreign)} {verb} not apply to {INFERENCE} {args.inference}")
        engines = {args.inference}
    if not engines:
        flags = official + [option.flag for option in given]
        raise UserError(f"{', '.join(flags)} belong to different inference engines: give one {INFERENCE}")
    settings = {option.field: value for option, value in given.items()}
    errors = []
    for engine in sorted(engines):
        base = VEMConfig.official() if args.official_settings else INFERENCE_CONFIGS[engine]()
        try:
            settings_with(base, settings)
        except ValueError as err:
            errors.append(f"{ENGINES[engine]} settings: {err}")
    if len(errors) == len(engines):  # a prior's own settings may still clash with them: checked when it is loaded
        raise UserError("; ".join(errors))
    engine = engines.pop() if len(engines) == 1 else None
    return InferenceRequest(engine, args.official_settings, settings)


def add_model_choice(parser: argparse.ArgumentParser) -> None:
    """The options naming the models an evaluation compares (shared by every `eval` task)."""
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="checkpoint folder (or name of a shipped prior, e.g. default) to evaluate, labelled NAME in the tables "
        "(repeatable)",
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
