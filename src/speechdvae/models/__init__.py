"""The speech priors and their registry: build any model from its config, or from a preset."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from .base import DVAE, Decoded, Posterior
from .dkf import DKF
from .rvae import RVAE
from .srnn import SRNN
from .transformer import TransformerDVAE
from .vae import VAE

MODELS: dict[str, type[DVAE]] = {cls.name: cls for cls in (VAE, DKF, RVAE, SRNN, TransformerDVAE)}

__all__ = [
    "DVAE",
    "Decoded",
    "Posterior",
    "VAE",
    "DKF",
    "RVAE",
    "SRNN",
    "TransformerDVAE",
    "MODELS",
    "build_model",
    "available_presets",
    "load_preset",
]


def build_model(config: dict[str, Any]) -> DVAE:
    """A freshly initialised model from a config dict: constructor kwargs plus "name"."""
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"invalid config for model {name!r}: {err}") from None


def _preset_dir() -> Traversable:
    return resources.files("speechdvae") / "presets"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package (presets/<name>.yaml)."""
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, size: str = "small") -> dict[str, Any]:
    """The `size` section ("paper", "small", or another one the preset has) of presets/<name>.yaml, e.g.
    {"model": {...}, ...}."""
    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(available_presets())}")
    sections = yaml.safe_load(path.read_text())
    if size not in sections:
        raise ValueError(f"preset {name!r} ({name}.yaml) has no size {size!r}; available sizes: {', '.join(sections)}")
    return sections[size]
