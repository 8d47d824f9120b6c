"""The command lines that regenerate reports: the options that the settings of the inference engines (the VEM,
Langevin posterior sampling) map to, and each evaluation's `speechdvae eval ...` command rebuilt from its arguments
(written at the top of every report). The command-line parsers (`speechdvae.cli`) define their inference options
from the same table."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .enhancement.enhancer import Inference
    from .evaluate.generation import GenerationSettings

# The option choosing the inference engine of priors, and the engines by the name their settings carry
# (`VEMConfig.engine`, `LangevinConfig.engine`), the default first.
INFERENCE = "--inference"
ENGINES = {"vem": "VEM", "langevin": "Langevin"}


@dataclass(frozen=True)
class InferenceOption:
    """The command-line option setting one field of the settings of the `engines` it applies to."""

    field: str
    flag: str
    type: type
    help: str
    metavar: str | None = None
    engines: tuple[str, ...] = tuple(ENGINES)

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments holding the option's value."""
        return self.flag[2:].replace("-", "_")


# The option starting from `VEMConfig.official()` instead of the default settings.
OFFICIAL_SETTINGS = "--official-settings"
INFERENCE_OPTIONS = (
    InferenceOption("niter", "--iterations", int, "maximum number of iterations", "N"),
    InferenceOption("lr", "--lr", float, "Adam learning rate of the E-step", engines=("vem",)),
    InferenceOption(
        "tol", "--tol", float, "relative loss change that stops an utterance early (0: never)", engines=("vem",)
    ),
    InferenceOption(
        "step_size", "--step-size", float, "step size, relative to the gradient's scale", "ETA", engines=("langevin",)
    ),
    InferenceOption("steps", "--langevin-steps", int, "steps per iteration", "N", engines=("langevin",)),
    InferenceOption(
        "warmup", "--warmup", int, "first iterations that fit the noise model only", "N", engines=("langevin",)
    ),
    InferenceOption("wf_samples", "--wf-samples", int, "latent draws averaged in the Wiener filter", "R"),
    InferenceOption("nmf_rank", "--nmf-rank", int, "rank of the NMF noise model", "K"),
    InferenceOption(
        "past",
        "--past",
        str,
        "past speech read by autoregressive priors: `generated`, their own generated "
        "past (eq. 31), or `estimate`, the current clean-power estimate (decodes all frames at once)",
        "PAST",
    ),
    InferenceOption(
        "finetune",
        "--finetune",
        str,
        "what the E-step fine-tunes: `encoder`, the whole encoder (the paper), or `heads`, only the layers giving "
        "the posterior's parameters (the backward pass stops before the layers below them)",
        "PART",
        engines=("vem",),
    ),
    InferenceOption(
        "precision",
        "--precision",
        str,
        "arithmetic of the prior's forward passes: `float32`, or `bfloat16` (bf16 autocast where the device "
        "computes bf16 natively, float32 elsewhere)",
        "P",
        engines=("vem",),
    ),
    InferenceOption("seed", "--seed", int, "root of every utterance's random streams"),
)


def inference_arguments(inference: Inference) -> tuple[list[str], list[str]]:
    """Options giving `inference`, and the settings that no option can give ("name=value"). A request maps to its
    options one to one; exact settings to options that leave no field to a prior's own settings."""
    from .enhancement.enhancer import InferenceRequest
    from .enhancement.langevin import LangevinConfig
    from .enhancement.vem import VEMConfig

    if isinstance(inference, InferenceRequest):
        flags = {option.field: option.flag for option in INFERENCE_OPTIONS}
        chosen = [INFERENCE, inference.engine] if inference.engine else []
        options = [OFFICIAL_SETTINGS] if inference.official else chosen
        for name, value in inference.settings.items():
            options += [flags[name], str(value)] if name in flags else []
        return options, [f"{name}={value}" for name, value in inference.settings.items() if name not in flags]
    # exact settings must not let a prior's own fill in: the VEM's start from the official settings, which ignore
    # them; Langevin settings, without such a start, give every option
    flags = {option.field: option.flag for option in INFERENCE_OPTIONS if inference.engine in option.engines}
    official = inference.engine == VEMConfig.engine
    base = VEMConfig.official() if official else LangevinConfig()
    options = [OFFICIAL_SETTINGS] if official else [INFERENCE, inference.engine]
    for name, flag in flags.items():
        if not official or getattr(inference, name) != getattr(base, name):
            options += [flag, str(getattr(inference, name))]
    rest = [
        f"{f.name}={getattr(inference, f.name)}"
        for f in fields(inference)
        if f.name not in flags and getattr(inference, f.name) != getattr(base, f.name)
    ]
    return options, rest


def with_unsettable(command: str, rest: Sequence[str]) -> str:
    """`command`, followed by the settings no option can give as a shell comment."""
    return f"{command}  # settings without an option: {', '.join(rest)}" if rest else command


def model_arguments(models: Mapping[str, object], official: str | os.PathLike | None) -> list[str]:
    """The --model/--official options naming `models` (in-memory models show as <in-memory model>)."""
    argv = []
    for label, model in models.items():
        path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<in-memory model>"
        argv += ["--model", f"{label}={path}"]
    if official is not None:
        argv += ["--official", os.fspath(official)]
    return argv


# -- evaluation commands -----------------------------------------------------------------------------


def resynth_command(
    models: Mapping[str, object],
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None,
    modes: Sequence[str],
    sample: bool,
    seed: int,
    oracle: bool,
    official: str | os.PathLike | None = None,
    segment: int | None = None,
) -> str:
    """The `speechdvae eval resynth` command line that reproduces an evaluation."""
    argv = ["speechdvae", "eval", "resynth", *model_arguments(models, official)]
    argv += ["--manifest", os.fspath(manifest), "-o", os.fspath(out_dir), "--modes", *modes]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if segment is not None:
        argv += ["--segment", str(segment)]
    if sample:
        argv += ["--sample", "--seed", str(seed)]
    if not oracle:
        argv.append("--no-oracle")
    return shlex.join(argv)


def enhance_command(
    models: Mapping[str, object],
    mixtures: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None,
    inference: Inference,
    official: str | os.PathLike | None = None,
    save_audio: bool = False,
    snapshots: Sequence[int] = (),
) -> str:
    """The `speechdvae eval enhance` command line that reproduces an evaluation (in-memory models show as <...>;
    inference settings without an option follow in a shell comment)."""
    argv = ["speechdvae", "eval", "enhance", *model_arguments(models, official)]
    argv += ["--manifest", os.fspath(mixtures), "-o", os.fspath(out_dir)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    options, rest = inference_arguments(inference)
    argv += options
    if snapshots:
        argv += ["--snapshots", *map(str, sorted(set(snapshots)))]
    if save_audio:
        argv.append("--save-audio")
    return with_unsettable(shlex.join(argv), rest)


def generate_command(
    models: Mapping[str, object],
    reference_manifest: str | os.PathLike,
    test_manifest: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: GenerationSettings,
    official: str | os.PathLike | None = None,
) -> str:
    """The `speechdvae eval generate` command line that reproduces an evaluation."""
    argv = ["speechdvae", "eval", "generate", *model_arguments(models, official)]
    argv += ["--reference-manifest", os.fspath(reference_manifest)]
    argv += ["--no-test"] if test_manifest is None else ["--test-manifest", os.fspath(test_manifest)]
    for name, value in asdict(settings).items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join([*argv, "-o", os.fspath(out_dir)])


def listen_command(
    models: Mapping[str, object],
    official: str | os.PathLike | None,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    count: int,
    generated: Sequence[str],
    samples: int,
    inference: Inference,
) -> str:
    """The `speechdvae eval listen` command line that rebuilds a page."""
    argv = [
        "speechdvae",
        "eval",
        "listen",
        *model_arguments(models, official),
        "--manifest",
        os.fspath(manifest),
        "--count",
        str(count),
    ]
    for label in generated:
        argv += ["--generate", label]
    if generated:
        argv += ["--samples", str(samples)]
    options, rest = inference_arguments(inference)
    return with_unsettable(shlex.join([*argv, *options, "-o", os.fspath(out_dir)]), rest)
