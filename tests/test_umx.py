"""The supervised baseline (UMX): mask shapes and range, batching, lengths, checkpoints, training (loss, resume,
budget, export, command line) and its use by `eval enhance` (next to a prior, cached without VEM settings) and
`enhance`."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechdvae import stft
from speechdvae.audio import write_audio
from speechdvae.baselines.mask_estimator import MaskEstimator, holds_mask_estimator, load_mask_estimator, masks
from speechdvae.checkpoints import CheckpointError, load_model, save_model
from speechdvae.cli import main
from speechdvae.data.manifest import write_manifest
from speechdvae.enhancement.enhancer import MaskEnhancer, enhance_waves
from speechdvae.enhancement.files import enhance_files
from speechdvae.enhancement.vem import VEMConfig
from speechdvae.evaluate.enhancement import (
    CACHE_NAME,
    MARKDOWN_NAME,
    NOISY_LABEL,
    UTTERANCES_NAME,
    evaluate_enhancement,
)
from speechdvae.evaluate.metrics import si_sdr
from speechdvae.evaluate.mixtures import read_mixtures, read_pair
from speechdvae.train.baseline import (
    AudioBank,
    BaselineConfig,
    BaselineError,
    BaselineTrainer,
    crop_or_pad,
    draw_pair,
    validation_loss,
)

SR = 16000
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_estimator(seed: int = 0, **kwargs) -> MaskEstimator:
    torch.manual_seed(seed)
    return MaskEstimator(**{"hidden_size": 8, "lstm_layers": 2, **kwargs}).eval()


def constant_mask(value: float) -> MaskEstimator:
    """An estimator whose mask is 1 (value > 0) or 0 (value < 0) everywhere, up to float32 rounding."""
    model = tiny_estimator()
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.fill_(value)
    return model


def harmonic(seconds: float, f0: float) -> np.ndarray:
    """Harmonics of f0 under a 3 Hz syllable envelope: speech-like enough for a mask to learn."""
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * np.sin(np.pi * 3 * t) ** 2 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12))


def hiss(seconds: float, seed: int) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def test_mask_has_the_input_shape_and_lies_in_the_unit_interval() -> None:
    model = tiny_estimator(lstm_layers=3)
    magnitude = torch.rand(3, 17, stft.N_FREQ) * torch.logspace(-3, 2, 3)[:, None, None]
    mask = model(magnitude).detach()
    assert mask.shape == magnitude.shape
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0 and float(mask.std()) > 0.0
    with pytest.raises(ValueError, match="even"):
        MaskEstimator(hidden_size=7)


def test_a_padded_batch_gives_the_masks_of_one_at_a_time() -> None:
    """Packing keeps the backward LSTM of a short sequence out of the padding."""
    model = tiny_estimator()
    magnitudes = [torch.rand(T, stft.N_FREQ) for T in (30, 9, 21)]
    together = masks(model, magnitudes)
    for magnitude, mask in zip(magnitudes, together):
        assert mask.shape == magnitude.shape
        torch.testing.assert_close(mask, masks(model, [magnitude])[0], rtol=1e-5, atol=1e-6)
    unpacked = model(torch.nn.utils.rnn.pad_sequence(magnitudes, batch_first=True))[1, :9]
    assert not torch.allclose(unpacked, together[1], atol=1e-4)


def test_estimates_keep_the_input_length_and_apply_the_mask_to_the_noisy_stft() -> None:
    waves = [hiss(seconds, i).astype(np.float32) for i, seconds in enumerate((0.05, 0.5, 1.0001))]
    keys = [str(i) for i in range(len(waves))]
    passed = enhance_waves(MaskEnhancer(constant_mask(30.0)), waves, keys).waves
    muted = enhance_waves(MaskEnhancer(constant_mask(-30.0)), waves, keys).waves
    for x, y, z in zip(waves, passed, muted):
        assert len(y) == len(x) == len(z) and y.dtype == np.float32
        np.testing.assert_allclose(y, x, atol=1e-5)
        assert np.abs(z).max() < 1e-9


def test_input_normalisation_starts_from_the_training_statistics() -> None:
    model = tiny_estimator()
    magnitude = torch.rand(4, 50, stft.N_FREQ) * torch.linspace(0.1, 30.0, stft.N_FREQ)
    model.init_normalisation(magnitude)
    normalised = (magnitude - model.input_mean) * model.input_scale
    torch.testing.assert_close(normalised.mean((0, 1)), torch.zeros(stft.N_FREQ), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std((0, 1)), torch.ones(stft.N_FREQ), atol=1e-3, rtol=0)


def test_checkpoint_round_trip_and_its_kind(tmp_path: Path, tiny: dict[str, Path]) -> None:
    model = tiny_estimator(seed=3)
    model.init_normalisation(torch.rand(2, 10, stft.N_FREQ))
    path = save_model(model, tmp_path / "umx", metadata={"training_data": "synthetic"})
    config = json.loads((path / "config.json").read_text())
    assert config["model"] == model.config and config["input"].startswith("magnitude spectrogram")
    loaded = load_mask_estimator(path, "cpu")
    assert loaded.config == model.config and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    magnitude = torch.rand(1, 12, stft.N_FREQ)
    assert torch.equal(loaded(magnitude), model(magnitude))
    assert holds_mask_estimator(path) and not holds_mask_estimator(tiny["VAE"])
    assert not holds_mask_estimator(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="unknown model 'umx'"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not a 'umx' mask estimator"):
        load_mask_estimator(tiny["VAE"])


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The open-corpus layout in miniature: harmonic 'speech', hiss and hum noise, four validation mixtures."""
    root = tmp_path_factory.mktemp("corpus")
    speech = []
    for i, (seconds, f0) in enumerate([(0.8, 110.0), (1.2, 160.0), (0.5, 220.0), (1.0, 140.0)]):
        write_audio(root / f"speech{i}.flac", harmonic(seconds, f0))
        speech.append({"id": f"s{i}", "path": str(root / f"speech{i}.flac")})
    t = np.arange(2 * SR) / SR
    write_audio(root / "hiss.flac", hiss(2.0, 0))
    write_audio(root / "hum.flac", 0.05 * sum(np.sin(2 * np.pi * 50 * k * t) for k in range(1, 8)))
    noise = [{"id": name, "path": str(root / f"{name}.flac"), "noise_type": name} for name in ("hiss", "hum")]
    mixtures = []
    for i, (f0, snr) in enumerate([(130.0, -5.0), (180.0, 0.0), (120.0, 5.0), (200.0, 0.0)]):
        clean = harmonic(0.7 + 0.1 * i, f0)
        added = hiss(len(clean) / SR, 10 + i)
        added *= np.sqrt(np.mean(clean**2) / np.mean(added**2) / 10 ** (snr / 10))
        write_audio(root / f"clean{i}.flac", clean)
        write_audio(root / f"noisy{i}.flac", clean + added)
        mixtures.append(
            {
                "id": f"m{i}",
                "path": str(root / f"noisy{i}.flac"),
                "clean_path": str(root / f"clean{i}.flac"),
                "noise_type": "hiss",
                "snr": snr,
                "duration": len(clean) / SR,
            }
        )
    write_manifest(root / "manifests" / "speech_train.jsonl", speech)
    write_manifest(root / "manifests" / "noise_train.jsonl", noise)
    write_manifest(root / "mixtures" / "valid" / "manifest.jsonl", mixtures)
    return root


def tiny_config(corpus: Path, **options) -> BaselineConfig:
    return replace(
        BaselineConfig(
            str(corpus / "manifests" / "speech_train.jsonl"),
            str(corpus / "manifests" / "noise_train.jsonl"),
            str(corpus / "mixtures" / "valid" / "manifest.jsonl"),
            hidden_size=8,
            lstm_layers=1,
            batch_size=4,
            crop_seconds=0.5,
            lr=1e-2,
            steps=30,
            valid_every=10,
            checkpoint_every=4,
            stats_batches=2,
        ),
        **options,
    )


def test_training_pairs_are_crops_scaled_to_the_drawn_gain(corpus: Path) -> None:
    config = tiny_config(corpus, gain_db=(-6.0, -6.0), crop_seconds=1.0)
    speech = AudioBank.from_manifest(config.speech_manifest, "speech", False)
    noise = AudioBank.from_manifest(config.noise_manifest, "noise", False)
    assert len(speech) == 4 and len(speech[1]) == round(1.2 * SR) and len(noise[0]) == 2 * SR
    rng = np.random.default_rng(0)
    for _ in range(5):
        noisy, clean = draw_pair(speech, noise, config, rng)
        assert noisy.shape == clean.shape == (SR,) and noisy.dtype == np.float32
        assert np.abs(noisy).max() == pytest.approx(10 ** (-6 / 20), rel=1e-5)
        assert np.abs(clean).max() > 0 and np.abs(noisy - clean).max() > 0
    short = crop_or_pad(np.ones(10, np.float32), 25, rng)
    assert len(short) == 25 and short.sum() == 10 and len(crop_or_pad(np.arange(40.0), 25, rng)) == 25


def test_training_lowers_the_validation_loss_and_exports_the_best_weights(corpus: Path, tmp_path: Path) -> None:
    trainer = BaselineTrainer(tiny_config(corpus), tmp_path / "run", progress=False, device="cpu")
    untrained = validation_loss(trainer.model, trainer.valid)
    model_dir = trainer.train()
    assert [row["step"] for row in trainer.history] == [10, 20, 30]
    assert trainer.best_loss == min(row["valid_loss"] for row in trainer.history) < 0.7 * untrained
    exported = load_mask_estimator(model_dir, "cpu")
    assert validation_loss(exported, trainer.valid) == pytest.approx(trainer.best_loss, rel=1e-6)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["metadata"]["training"]["best_step"] == trainer.best_step
    assert config["training_data"]["noise"].endswith("noise_train.jsonl")
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "run" / "log.csv").read_text().startswith("step,train_loss,valid_loss")


class Crash(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(corpus, steps=20)
    BaselineTrainer(config, tmp_path / "straight", progress=False, device="cpu").train()
    original = BaselineTrainer._train_step

    def crashing(self, *args):
        if self.step == 14:  # two steps after the state saved at step 12 (every 4 steps)
            raise Crash()
        return original(self, *args)

    monkeypatch.setattr(BaselineTrainer, "_train_step", crashing)
    with pytest.raises(Crash):
        BaselineTrainer(config, tmp_path / "killed", progress=False, device="cpu").train()
    monkeypatch.setattr(BaselineTrainer, "_train_step", original)
    with pytest.raises(BaselineError, match="--resume"):
        BaselineTrainer(config, tmp_path / "killed", progress=False, device="cpu")
    resumed = BaselineTrainer(config, tmp_path / "killed", resume=True, progress=False, device="cpu")
    assert resumed.step == 12
    resumed.train()
    a, b = (torch.load(tmp_path / run / "state.pt", weights_only=False) for run in ("straight", "killed"))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in a["history"]] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in b["history"]
    ]


def test_resume_accepts_a_new_budget_only(corpus: Path, tmp_path: Path) -> None:
    BaselineTrainer(tiny_config(corpus, steps=10), tmp_path / "run", progress=False, device="cpu").train()
    with pytest.raises(BaselineError, match="different configuration"):
        BaselineTrainer(tiny_config(corpus, steps=10, lr=0.5), tmp_path / "run", resume=True, device="cpu")
    longer = BaselineTrainer(tiny_config(corpus, steps=20), tmp_path / "run", resume=True, progress=False, device="cpu")
    longer.train()
    assert [row["step"] for row in longer.history] == [10, 20]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 20
    with pytest.raises(BaselineError, match="batch_size must be positive"):
        tiny_config(corpus, batch_size=0)


def test_the_best_model_is_exported_while_the_run_goes_on(corpus: Path, tmp_path: Path) -> None:
    trainer = BaselineTrainer(
        tiny_config(corpus, steps=20, valid_every=5), tmp_path / "run", progress=False, device="cpu"
    )
    exported = []  # (step, best step recorded in the model folder) of every export
    export = trainer._export

    def recording_export() -> Path:
        path = export()
        meta = json.loads((path / "config.json").read_text())["metadata"]["training"]
        exported.append((trainer.step, meta["best_step"]))
        return path

    trainer._export = recording_export
    trainer.train()
    improving = [row["step"] for row in trainer.history if row["best"]]
    assert len(improving) >= 2
    assert exported == [(step, step) for step in improving] + [(20, trainer.best_step)]


def test_the_command_trains_and_exports(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "baseline",
        "train",
        "-o",
        str(tmp_path / "run"),
        "--data-root",
        str(corpus),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--hidden-size",
        "8",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "best model (step 3" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["steps"] == 3 and config["hidden_size"] == 8 and config["lr"] == BaselineConfig.lr
    assert holds_mask_estimator(tmp_path / "run" / "model")
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(["baseline", "train", "-o", str(tmp_path / "other"), "--data-root", str(tmp_path)]) == 2
    assert "manifest not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Use by the evaluation and by `enhance`
# ---------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_eval_enhance_scores_a_mask_estimator_next_to_a_prior(
    corpus: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    umx = save_model(tiny_estimator(seed=5), tmp_path / "umx")
    manifest = corpus / "mixtures" / "valid" / "manifest.jsonl"
    out = tmp_path / "report"
    summary = evaluate_enhancement(
        {"VAE": tiny["VAE"], "UMX": umx}, manifest, out, inference=VEMConfig(niter=2), workers=1, progress=False
    )
    assert [row["model"] for row in summary] == [NOISY_LABEL, "VAE", "UMX"]
    rows = {(row["model"], row["id"]): row for row in read_rows(out / UTTERANCES_NAME)}
    mixtures = read_mixtures(manifest)
    model = load_mask_estimator(umx, "cpu")
    for record in mixtures:
        noisy, clean = read_pair(record)
        row = rows["UMX", record["id"]]
        assert float(row["si_sdr"]) == pytest.approx(
            si_sdr(clean, enhance_waves(model.enhancer(), [noisy], [record["id"]]).waves[0]), abs=1e-4
        )
        assert row["iterations"] == "" and float(rows["VAE", record["id"]]["iterations"]) == 2
    timing = (out / MARKDOWN_NAME).read_text().split("## Model time", 1)[1]
    assert "| UMX |" in timing and timing.split("| UMX |", 1)[1].split("|")[2].strip() == "–"

    # Other VEM settings: the prior is enhanced again, the mask estimator's results are reused.
    argv = [
        "eval",
        "enhance",
        "--model",
        f"VAE={tiny['VAE']}",
        "--model",
        f"UMX={umx}",
        "--manifest",
        str(manifest),
        "-o",
        str(out),
        "--iterations",
        "3",
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    entries = [json.loads(line) for line in (out / CACHE_NAME).read_text().splitlines()]
    assert sum(e["model"] == "UMX" for e in entries) == len(mixtures)
    assert sum(e["model"] == "VAE" for e in entries) == 2 * len(mixtures)
    rerun = {(row["model"], row["id"]): row for row in read_rows(out / UTTERANCES_NAME)}
    assert all(rerun["UMX", m["id"]]["si_sdr"] == rows["UMX", m["id"]]["si_sdr"] for m in mixtures)


def test_enhance_files_accepts_a_mask_estimator_checkpoint(tmp_path: Path) -> None:
    x = np.stack([hiss(1.3, 1), 0.5 * hiss(1.3, 2)], axis=1).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, SR, subtype="FLOAT")
    for name, value in (("pass", 30.0), ("mute", -30.0)):
        checkpoint = save_model(constant_mask(value), tmp_path / name)
        report = enhance_files(
            [tmp_path / "in.wav"], tmp_path / f"out-{name}", checkpoint, device="cpu", progress=False
        )
        assert not report.failed
        y, rate = sf.read(tmp_path / f"out-{name}" / "in.wav", dtype="float32", always_2d=True)
        assert rate == SR and y.shape == x.shape
        if value > 0:
            np.testing.assert_allclose(y, x, atol=1e-5)
        else:
            assert np.abs(y).max() < 1e-6
