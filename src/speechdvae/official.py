"""Import of the official DVAE-SE checkpoints (Bie et al., TASLP 2022) into speechdvae checkpoints.

Each `trained_models/<tag>/<NAME>_final_epochNNN.pt` (a legacy-pickle state_dict) is read with the
`config.ini` next to it, renamed key by key onto our modules (shapes checked strictly) and saved
as `<out_dir>/official-<tag>`. The weights stay under the GPL-3.0 licence of their source.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoints import save_model
from .data.manifest import sha256_file
from .errors import SpeechDVAEError
from .models import DVAE, build_model

SOURCE = "https://github.com/XiaoyuBIE1994/DVAE_SE"
LICENCE_NOTICE = (
    "These weights come from the DVAE_SE repository (Bie, Leglaive, Alameda-Pineda, Girin, "
    "'Unsupervised speech enhancement using dynamical variational autoencoders', IEEE/ACM "
    "TASLP 2022) and are distributed under the GNU General Public License v3.0."
)
OFFICIAL_NAMES = {"VAE": "vae", "DKF": "dkf", "RVAE": "rvae", "SRNN": "srnn"}
CHECKPOINT_PATTERN = re.compile(r"^.+_final_epoch(\d+)\.pt$")
# The inference chosen for an imported checkpoint on the realistic validation benchmark, by the rule of
# docs/enhancement_realistic/settings.md: the fastest setting whose median ΔSI-SDR and ΔESTOI are within 0.2 dB and
# 0.01 of both the official settings' and the checkpoint's best setting's. Checkpoints without an entry run the
# VEM's defaults.
CHOSEN_INFERENCE: dict[str, dict[str, Any]] = {
    "wsj_dkf": {"engine": "langevin", "niter": 40},
    "wsj_rvae": {"engine": "langevin", "niter": 60},
}
IGNORED_OPTIONS = {"name", "tag", "dropout_p"}  # dropout is inactive at inference; we never train with it
REQUIRED_VALUES = {"activation": "tanh", "bidir_gx": "False"}  # and num_rnn_* = 1: what our models implement


class OfficialImportError(SpeechDVAEError, ValueError):
    """An official checkpoint or config that cannot be mapped onto our models."""


def import_official(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Convert every official checkpoint under `src_dir` (the folder holding `trained_models/`, or
    `trained_models/` itself) into `out_dir/official-<tag>`; returns the written folders."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    root = src_dir / "trained_models" if (src_dir / "trained_models").is_dir() else src_dir
    tag_dirs = sorted(p for p in root.glob("*") if p.is_dir() and _checkpoint_files(p))
    if not tag_dirs:
        raise OfficialImportError(f"{src_dir}: no trained_models/<tag>/*_final_epochNNN.pt checkpoints found")
    licence = next((p for p in (src_dir / "LICENSE.txt", root.parent / "LICENSE.txt") if p.is_file()), None)
    return [
        convert_official(tag_dir, out_dir / f"official-{tag_dir.name.replace('_', '-')}", licence)
        for tag_dir in tag_dirs
    ]


def _checkpoint_files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name))


def convert_official(
    tag_dir: str | os.PathLike, out_path: str | os.PathLike, licence_file: str | os.PathLike | None = None
) -> Path:
    """Convert the checkpoint in one `trained_models/<tag>/` folder into our checkpoint `out_path`."""
    tag_dir = Path(tag_dir)
    files = _checkpoint_files(tag_dir)
    if len(files) != 1:
        raise OfficialImportError(f"{tag_dir}: expected one *_final_epochNNN.pt, found {len(files)}")
    pt_path, ini_path = files[0], tag_dir / "config.ini"
    ini = read_official_config(ini_path)
    config = model_config_from_official(ini, ini_path)
    try:
        model = build_model(config)
    except ValueError as err:
        raise OfficialImportError(f"{ini_path}: {err}") from None
    try:
        official_state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise OfficialImportError(f"{pt_path}: cannot read the checkpoint ({err})") from None
    if not isinstance(official_state, dict):
        raise OfficialImportError(f"{pt_path}: expected a bare state_dict, found {type(official_state).__name__}")
    model.load_state_dict(rename_official_state(official_state, model, pt_path))
    model.inference = CHOSEN_INFERENCE.get(tag_dir.name)
    metadata = _metadata(tag_dir.name, pt_path, ini)
    extra = {"LICENSE.txt": licence_file} if licence_file is not None else None
    return save_model(model, out_path, metadata=metadata, extra_files=extra)


def read_official_config(ini_path: Path) -> configparser.ConfigParser:
    ini = configparser.ConfigParser()
    try:
        if not ini.read(ini_path):
            raise OfficialImportError(f"{ini_path}: config.ini is missing")
    except configparser.Error as err:
        raise OfficialImportError(f"{ini_path}: unreadable config ({err})") from None
    if not ini.has_section("Network"):
        raise OfficialImportError(f"{ini_path}: no [Network] section")
    return ini


def model_config_from_official(ini: configparser.ConfigParser, ini_path: Path) -> dict[str, Any]:
    """Our model config (constructor kwargs + name) from the [Network] section of a config.ini."""
    network = ini["Network"]
    name = OFFICIAL_NAMES.get(network.get("name", ""))
    if name is None:
        raise OfficialImportError(
            f"{ini_path}: unsupported model {network.get('name')!r} (supported: {', '.join(OFFICIAL_NAMES)})"
        )
    config: dict[str, Any] = {"name": name}
    for key, value in network.items():  # configparser lower-cases the keys
        value = value.strip()
        required = "1" if key.startswith("num_rnn_") else REQUIRED_VALUES.get(key)
        if required is not None and value != required:
            raise OfficialImportError(f"{ini_path}: unsupported option {key} = {value} (only {required})")
        if required is None and key not in IGNORED_OPTIONS:
            config[key] = _parse_option(key, value, ini_path)
    if name == "vae" and "dense_x_z" in config:  # the official VAE decodes through dense_x_z reversed
        config.setdefault("dense_z_x", config["dense_x_z"][::-1])
    return config


def _parse_option(key: str, value: str, ini_path: Path) -> Any:
    try:
        if key.startswith("dense_"):
            return [int(v) for v in value.split(",") if v.strip()]
        if key.startswith("bidir_"):
            return {"True": True, "False": False}[value]
        return int(value)
    except (KeyError, ValueError):
        raise OfficialImportError(f"{ini_path}: invalid value for {key}: {value!r}") from None


def _mlp(official: str, ours: str, sizes: list[int], last_named: bool = False) -> dict[str, str]:
    """Prefixes of an official dense block (children linear0, linear1, ... or linear_last)."""
    names = [f"linear{i}" for i in range(len(sizes))]
    if last_named:
        names[-1] = "linear_last"
    return {f"{official}.{n}": f"{ours}.layers.{i}" for i, n in enumerate(names)}


def official_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """Official module prefix -> our module prefix, for the model described by `config`."""
    c = config
    heads = {"inf_mean": "posterior.mean", "inf_logvar": "posterior.logvar", "gen_logvar": "decoder.logvar"}
    if c["name"] == "vae":
        return {
            **_mlp("mlp_x_z", "posterior.mlp", c["dense_x_z"]),
            **heads,
            **_mlp("mlp_z_x", "decoder.mlp", c["dense_z_x"]),
        }
    if c["name"] == "dkf":
        return {
            **_mlp("mlp_x_gx", "x_mlp", c["dense_x_gx"]),
            "rnn_gx": "x_rnn",
            **_mlp("mlp_ztm1_g", "combiner_mlp", [*c["dense_ztm1_g"], c["dim_rnn_gx"]], last_named=True),
            **_mlp("mlp_g_z", "posterior.mlp", c["dense_g_z"]),
            **heads,
            "mlp_gate.linear1": "transition.gate_hidden",
            "mlp_gate.linear2": "transition.gate_out",
            "mlp_z_prop.linear1": "transition.proposal_hidden",
            "mlp_z_prop.linear2": "transition.proposal_out",
            "prior_mean": "transition.linear_mean",
            "prior_logvar.1": "transition.variance",
            **_mlp("mlp_z_x", "decoder.mlp", c["dense_z_x"]),
        }
    if c["name"] == "rvae":
        return {
            **_mlp("mlp_x_gx", "x_mlp", c["dense_x_gx"]),
            "rnn_g_x": "x_rnn",
            **_mlp("mlp_z_gz", "zprev_mlp", c["dense_z_gz"]),
            "rnn_g_z": "zprev_rnn",
            **_mlp("mlp_g_z", "posterior.mlp", c["dense_g_z"]),
            **heads,
            **_mlp("mlp_z_h", "z_mlp", c["dense_z_h"]),
            "rnn_h": "z_rnn",
            **_mlp("mlp_h_x", "decoder.mlp", c["dense_h_x"]),
        }
    if c["name"] != "srnn":
        raise OfficialImportError(f"no official counterpart for model {c['name']!r}")
    return {
        **_mlp("mlp_x_h", "past_mlp", c["dense_x_h"]),
        "rnn_h": "past_rnn",
        **_mlp("mlp_hx_g", "enc_mlp", c["dense_hx_g"]),
        "rnn_g": "enc_rnn",
        **_mlp("mlp_gz_z", "posterior.mlp", c["dense_gz_z"]),
        **heads,
        **_mlp("mlp_hz_z", "prior.mlp", c["dense_hz_z"]),
        "prior_mean": "prior.mean",
        "prior_logvar": "prior.logvar",
        **_mlp("mlp_hz_x", "decoder.mlp", c["dense_hz_x"]),
    }


def official_key(key: str, prefixes: dict[str, str], swapped: set[str]) -> str | None:
    """Our parameter name for an official one, or None if it has no counterpart.

    The official RVAE runs its encoder bi-LSTM on time-reversed input and reverses the output
    back, so its `_l0` weights read time backwards: they become our `_l0_reverse` and vice versa
    (modules listed in `swapped`)."""
    prefix, _, param = key.rpartition(".")
    if prefix not in prefixes:
        return None
    if prefix in swapped:
        param = param[: -len("_reverse")] if param.endswith("_reverse") else param + "_reverse"
    return f"{prefixes[prefix]}.{param}"


def rename_official_state(state: dict[str, torch.Tensor], model: DVAE, source: Path) -> dict[str, torch.Tensor]:
    """The official state_dict under our names; every key and shape must match one-to-one."""
    config = model.config
    swapped = {"rnn_g_x"} if config["name"] == "rvae" and config["bidir_g_x"] else set()
    prefixes = official_prefixes(config)
    ours = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = official_key(key, prefixes, swapped)
        if name is None or name not in ours:
            raise OfficialImportError(f"{source}: unexpected parameter {key!r} for a {config['name']} model")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(ours[name].shape):
            raise OfficialImportError(
                f"{source}: {key} has shape {tuple(getattr(value, 'shape', ()))}, expected {tuple(ours[name].shape)}"
            )
        renamed[name] = value
    missing = sorted(set(ours) - set(renamed))
    if missing:
        raise OfficialImportError(f"{source}: parameters missing from the checkpoint: {', '.join(missing)}")
    return renamed


def _metadata(tag: str, pt_path: Path, ini: configparser.ConfigParser) -> dict[str, Any]:
    corpus = ini.get("DataFrame", "dataset_name", fallback="unknown")
    train_dir = Path(ini.get("User", "train_data_dir", fallback="")).name
    return {
        "training_data": f"{corpus} ({train_dir})" if train_dir else corpus,
        "training_corpus": corpus,
        "source": SOURCE,
        "source_file": f"trained_models/{tag}/{pt_path.name}",
        "source_sha256": sha256_file(pt_path),
        "licence": "GPL-3.0",
        "licence_notice": LICENCE_NOTICE,
        "best_epoch": int(CHECKPOINT_PATTERN.match(pt_path.name).group(1)),
        "official_config": {section: dict(ini[section]) for section in ini.sections() if section != "User"},
    }
