"""Checkpoints that describe themselves: signal settings checked on load, data named without machine paths,
and optional dependencies named by their extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speechdvae.checkpoints import CheckpointError, from_pretrained, load_model, manifest_provenance, save_model
from speechdvae.data.manifest import sha256_file
from speechdvae.data.mix import loudness_db
from speechdvae.errors import MissingExtra
from speechdvae.models import build_model

TINY = {"name": "vae", "x_dim": 513, "z_dim": 2, "dense_x_z": [4]}


def rewrite(path: Path, **fields: object) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample_rate", 8000, "sample_rate 8000"),
        (
            "stft",
            {
                "n_fft": 512,
                "hop_length": 128,
                "win_length": 512,
                "window": "hann",
                "center": True,
                "pad_mode": "reflect",
            },
            "stft",
        ),
    ],
)
def test_a_checkpoint_of_other_signal_settings_is_refused(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = save_model(build_model(TINY), tmp_path / "model")
    assert load_model(path, "cpu").config == build_model(TINY).config
    rewrite(path, **{field: value})
    with pytest.raises(CheckpointError, match=message):
        load_model(path, "cpu")


def test_machine_paths_are_written_relative_and_manifests_with_their_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "data" / "manifests" / "speech_train.jsonl"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"id": "a", "path": "a.wav"}\n')
    provenance = manifest_provenance({"train": manifest})
    assert provenance == {"train": "data/manifests/speech_train.jsonl", "sha256": {"train": sha256_file(manifest)}}
    path = save_model(
        build_model(TINY),
        tmp_path / "model",
        metadata={"training_data": provenance, "training": {"cache": str(tmp_path / "data" / "cache")}},
    )
    text = (path / "config.json").read_text()
    assert str(tmp_path) not in text
    config = json.loads(text)
    assert config["metadata"]["training"]["cache"] == "data/cache"
    assert config["training_data"]["train"] == "data/manifests/speech_train.jsonl"


@pytest.mark.parametrize("name", ["default", "fast"])
def test_the_shipped_priors_describe_their_data(name: str) -> None:
    root = Path(__file__).resolve().parents[1]
    model = from_pretrained(name, "cpu")
    config = json.loads((root / "src" / "speechdvae" / "pretrained" / name / "config.json").read_text())
    assert config["model"] == model.config and model.inference == config["inference"]
    assert config["training_data"]["train"] == "data/open/manifests/speech_train.jsonl"


def test_a_missing_extra_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyloudnorm", None)
    with pytest.raises(MissingExtra, match=r"pip install 'speechdvae\[data\]'"):
        loudness_db(np.ones(8000))
    code = (
        "import sys; sys.modules['pesq'] = None; from speechdvae.cli import main; "
        f"sys.exit(main(['demo', '-o', {str(tmp_path / 'demo')!r}, '--no-progress']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("speechdvae: error:") and "pip install 'speechdvae[eval]'" in result.stderr
