"""Model checkpoints: a folder holding `model.safetensors` (weights) and `config.json` (model
config and metadata: format version, package version, sample rate, STFT, training data, and for a
speech prior optionally `"inference": {"engine": "vem" or "langevin", SETTING: VALUE, ...}`, the
inference chosen for it on validation mixtures, used unless the user asks for another).

Checkpoints are written atomically: the new folder is built next to the destination and renamed
into place, so an existing checkpoint is replaced only once the new one is complete.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import umask
from .audio import SAMPLE_RATE
from .data.manifest import sha256_file
from .errors import SpeechDVAEError
from .models import DVAE, build_model
from .stft import HOP_LENGTH, N_FFT

FORMAT = "speechdvae-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STFT_CONFIG = {
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "win_length": N_FFT,
    "window": "sine",
    "center": True,
    "pad_mode": "reflect",
}


class CheckpointError(SpeechDVAEError, ValueError):
    """A path that is not a usable speechdvae checkpoint."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` is a folder with a speechdvae config.json."""
    try:
        read_checkpoint_config(path)
    except CheckpointError:
        return False
    return True


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder, after checking it is one."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not config_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: not a speechdvae checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: unreadable checkpoint config ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a speechdvae checkpoint config")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: checkpoint format {config['format_version']} is newer than "
            f"this speechdvae ({__version__}) supports ({FORMAT_VERSION})"
        )
    return config


def check_signal_settings(config: dict[str, Any], where: Path) -> None:
    """CheckpointError unless the checkpoint's sample rate and STFT (when recorded) are this package's: a model
    trained on other spectra would silently give wrong results."""
    recorded = {"sample_rate": config.get("sample_rate", SAMPLE_RATE), "stft": config.get("stft", STFT_CONFIG)}
    expected = {"sample_rate": SAMPLE_RATE, "stft": STFT_CONFIG}
    for name, value in recorded.items():
        if value != expected[name]:
            raise CheckpointError(
                f"{where}: the model was trained with {name} {value}, but speechdvae {__version__} "
                f"uses {expected[name]}; it cannot be used with this version"
            )


def portable_paths(value: Any, root: str | os.PathLike | None = None) -> Any:
    """`value` with every absolute path string made relative to `root` (default: the working directory), so
    that a checkpoint names its data without the paths of the machine it was made on."""
    if isinstance(value, dict):
        return {key: portable_paths(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [portable_paths(item, root) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(os.path.relpath(value, root or os.getcwd())).as_posix()
    return value


def manifest_provenance(manifests: dict[str, str | os.PathLike]) -> dict[str, Any]:
    """How a checkpoint names the manifests it was trained on (role -> path): each path relative to the working
    directory, and under "sha256" the checksum of each, which identifies the data wherever the corpus lies."""
    names = {role: portable_paths(os.path.abspath(path)) for role, path in manifests.items()}
    return {**names, "sha256": {role: sha256_file(path) for role, path in manifests.items()}}


def checkpoint_config(model: nn.Module, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json content describing `model` (a DVAE or another model with a `config` dict and an
    `input_description`); `metadata["training_data"]` becomes a top-level field. Absolute paths in the
    metadata are written relative to the working directory (`portable_paths`)."""
    metadata = portable_paths(dict(metadata or {}))
    inference = getattr(model, "inference", None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "speechdvae_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": model.config,
        "sample_rate": SAMPLE_RATE,
        "stft": STFT_CONFIG,
        "input": model.input_description,
        **({"inference": inference} if inference else {}),
        "training_data": metadata.pop("training_data", None),
        "metadata": metadata,
    }


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    extra_files: dict[str, str | os.PathLike] | None = None,
) -> Path:
    """Write `model` as the checkpoint folder `path`; `extra_files` maps names to files copied in
    (e.g. a licence). Refuses to replace a folder that is not a speechdvae checkpoint."""
    path = Path(path)
    if path.exists() and not is_checkpoint(path):
        raise CheckpointError(f"{path} exists and is not a speechdvae checkpoint; not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new-"))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700; a checkpoint gets the usual permissions
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint_config(model, metadata), indent=2) + "\n")
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _swap_in(new: Path, path: Path) -> None:
    """Rename the complete folder `new` onto `path`, restoring the old folder if that fails."""
    if not path.exists():
        os.rename(new, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.rename(path, old / path.name)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old / path.name, path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> DVAE:
    """The model stored in checkpoint folder `path`, in eval mode, on `device` (default: CUDA if available),
    with the inference its checkpoint chose, if any."""
    model: DVAE = load_weights(path, build_model, device)  # type: ignore[assignment]
    model.inference = inference_entry(read_checkpoint_config(path), Path(path) / CONFIG_FILE)
    return model


def inference_entry(config: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """The `"inference"` entry of a checkpoint config, checked against its engine's settings (None when absent)."""
    from .enhancement.enhancer import INFERENCE_CONFIGS, settings_with

    entry = config.get("inference")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("engine") not in INFERENCE_CONFIGS:
        raise CheckpointError(
            f'{where}: "inference" must be {{"engine": {" or ".join(map(repr, INFERENCE_CONFIGS))}, SETTING: VALUE, '
            f"...}}, got {entry!r}"
        )
    try:
        settings_with(INFERENCE_CONFIGS[entry["engine"]](), {k: v for k, v in entry.items() if k != "engine"})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f'{where}: "inference": {err}') from err
    return entry


def load_weights(
    path: str | os.PathLike, build: Callable[[dict[str, Any]], nn.Module], device: str | torch.device | None = None
) -> nn.Module:
    """The model that `build` makes from the config of checkpoint folder `path`, holding the stored weights,
    in eval mode, on `device` (default: CUDA if available)."""
    path = Path(path)
    config = read_checkpoint_config(path)
    check_signal_settings(config, path / CONFIG_FILE)
    try:
        model = build(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE}: {err}") from None
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: unreadable weights ({err})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: weights do not match the config ({err})") from None
    return model.to(device if device is not None else default_device()).eval()


def _pretrained_dir() -> Path:
    return Path(str(resources.files("speechdvae") / "pretrained"))


def available_pretrained() -> list[str]:
    """Names of the checkpoints shipped in the package (pretrained/<name>/)."""
    root = _pretrained_dir()
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []


def checkpoint_path(name_or_path: str | os.PathLike) -> Path:
    """The folder of a checkpoint given by path, or of a shipped checkpoint given by name."""
    candidate = Path(name_or_path)
    if candidate.exists() or any(sep in str(name_or_path) for sep in {"/", os.sep}):
        return candidate
    if str(name_or_path) not in available_pretrained():
        shipped = ", ".join(available_pretrained()) or "none are shipped with this version"
        raise CheckpointError(
            f"unknown pretrained model {str(name_or_path)!r} (available: {shipped}); "
            "or give the path of a checkpoint folder"
        )
    return _pretrained_dir() / str(name_or_path)


def from_pretrained(name_or_path: str | os.PathLike, device: str | torch.device | None = None) -> DVAE:
    """Load a checkpoint folder given by path, or a shipped checkpoint given by name."""
    return load_model(checkpoint_path(name_or_path), device)
