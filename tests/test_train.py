import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SRNN_CONFIG, VAE_CONFIG

from speechdvae import audio, checkpoints
from speechdvae.data.manifest import read_manifest, write_manifest
from speechdvae.data.sequences import SequenceDataset, SpectrogramCache
from speechdvae.train.dvae import ConfigError, TrainConfig, Trainer, evaluate_elbo, resolve_config, resolve_precision


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tiny train/valid manifests of noise-modulated tones (each file gives a few sequences)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("valid", 2)):
        records = []
        for i in range(n):
            t = np.arange(24000) / 16000
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) * (
                1 + np.sin(2 * np.pi * 3 * t)
            ) + 0.01 * rng.standard_normal(len(t))
            path = root / f"{split}{i}.flac"
            audio.write_audio(path, x, subtype="PCM_24")
            records.append({"id": f"{split}{i}", "path": str(path), "sha256": f"{split}{i}"})
        write_manifest(root / f"{split}.jsonl", records)
    return root


def make_config(corpus, tmp_path, model=VAE_CONFIG, **train):
    options = {
        "lr": 1e-3,
        "batch_size": 4,
        "seq_len": 10,
        "epochs": 3,
        "beta_z": 0.5,
        "checkpoint_every": 2,
        "valid_batch_size": 8,
        **train,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": model, "train": options}))
    return resolve_config(
        None,
        "small",
        str(corpus / "train.jsonl"),
        str(corpus / "valid.jsonl"),
        str(corpus / "cache"),
        config_file=str(path),
    )


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_schedules():
    cfg = TrainConfig(lr=5e-5, lr_schedule="warmup_cosine", warmup_steps=10, cosine_steps=20, lr_min=1e-8)
    assert cfg.learning_rate(0) == pytest.approx(5e-6)
    assert cfg.learning_rate(9) == pytest.approx(5e-5)
    assert cfg.learning_rate(20) == pytest.approx(1e-8 + 0.5 * (5e-5 - 1e-8))
    assert cfg.learning_rate(30) == pytest.approx(1e-8) and cfg.learning_rate(99) == pytest.approx(1e-8)
    ss = TrainConfig(ss_start_epoch=2, ss_step=0.2, ss_epochs_per_step=3)
    assert [ss.feedback(e) for e in (0, 1, 2, 4, 5, 8, 11, 14, 30)] == [0, 0, 0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert TrainConfig().feedback(100) == 0.0
    warm = TrainConfig(kl_warmup_epochs=50)
    assert [warm.kl_weight(e) for e in (0, 25, 50, 80)] == [0.0, 0.5, 1.0, 1.0]


def test_bad_configuration_fails_before_any_work(corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown training option"):
        make_config(corpus, tmp_path, learning_rate=1)
    with pytest.raises(ConfigError, match="optimizer"):
        make_config(corpus, tmp_path, optimizer="sgd")
    with pytest.raises(ConfigError, match="invalid model"):
        make_config(corpus, tmp_path, model={"name": "nope"})
    with pytest.raises(ConfigError, match="manifest not found"):
        resolve_config(
            None,
            "small",
            str(tmp_path / "missing.jsonl"),
            str(corpus / "valid.jsonl"),
            None,
            config_file=str(tmp_path / "config.yaml"),
        )
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("nope", "small", str(corpus / "train.jsonl"), str(corpus / "valid.jsonl"), None)
    with pytest.raises(ConfigError, match="not enough"):
        Trainer(make_config(corpus, tmp_path, seq_len=5000), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_overrides_are_read_as_their_options_types(corpus):
    # YAML reads "5e-4" as a string and "100" as an int where a float is meant: --set must not care.
    cfg = resolve_config(
        "vae",
        "small",
        str(corpus / "train.jsonl"),
        str(corpus / "valid.jsonl"),
        None,
        [
            "train.lr=5e-4",
            "train.grad_clip=1",
            "train.warmup_steps=100",
            "train.max_steps=null",
            "train.speeds=[0.9,1,1.1]",
        ],
    )
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.grad_clip, float) and cfg.train.warmup_steps == 100
    assert cfg.train.max_steps is None and cfg.train.speeds == (0.9, 1.0, 1.1)
    for bad, message in (
        ("train.speeds=1.1", "speeds must be tuple"),
        ("train.speeds=[0.9,0.9]", "speeds must be distinct"),
        ("train.betas=[0.9]", "betas must be tuple"),
        ("train.lr=fast", "lr must be float"),
        ("train.batch_size=3.5", "batch_size must be int"),
        ("train.random_crop=maybe", "random_crop must be bool"),
        ("train.epochs=null", "epochs"),
    ):
        with pytest.raises(ConfigError, match=message):
            resolve_config("vae", "small", str(corpus / "train.jsonl"), str(corpus / "valid.jsonl"), None, [bad])


def test_manifests_come_from_the_arguments_then_the_config_then_the_data_root(corpus, tmp_path):
    manifests = tmp_path / "root" / "manifests"
    manifests.mkdir(parents=True)
    for name, source in (("speech_train", "train"), ("speech_valid", "valid"), ("other", "valid")):
        shutil.copy(corpus / f"{source}.jsonl", manifests / f"{name}.jsonl")
    root, other = str(tmp_path / "root"), str((manifests / "other.jsonl").resolve())
    cfg = resolve_config("vae", "small", None, None, None, data_root=root)
    assert cfg.valid_manifest == str((manifests / "speech_valid.jsonl").resolve())
    assert cfg.train_manifest == str((manifests / "speech_train.jsonl").resolve())
    assert (
        resolve_config("vae", "small", None, None, None, [f"data.valid={other}"], data_root=root).valid_manifest
        == other
    )
    given = str((corpus / "valid.jsonl").resolve())
    assert (
        resolve_config("vae", "small", None, given, None, [f"data.valid={other}"], data_root=root).valid_manifest
        == given
    )


def test_training_lowers_the_loss_and_exports_the_best_copy(corpus, tmp_path):
    torch.set_num_threads(1)
    trainer = Trainer(make_config(corpus, tmp_path, epochs=6, lr=3e-3), tmp_path / "run", progress=False)
    model_dir = trainer.train()
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(6))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = min(history, key=lambda h: h["valid_loss"])
    assert trainer.best_epoch == best["epoch"] and sum(h["best"] for h in history) >= 1
    exported = checkpoints.load_model(model_dir, device="cpu")
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["metadata"]["training"]["best_epoch"] == trainer.best_epoch
    # provenance: the manifests with their content hashes, no absolute path anywhere in the checkpoint
    assert meta["training_data"]["sha256"]["train"] == hashlib.sha256((corpus / "train.jsonl").read_bytes()).hexdigest()
    assert Path(meta["training_data"]["valid"]).name == "valid.jsonl"
    assert '"/' not in (model_dir / "config.json").read_text()
    for k, v in exported.state_dict().items():
        assert torch.equal(v, trainer.best_state[k])  # the best weights, not the live ones
    if trainer.best_epoch < 5:
        assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in trainer.best_state.items())
    assert (tmp_path / "run" / "log.csv").read_text().startswith("epoch,")


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "model, extra", [(VAE_CONFIG, {}), (SRNN_CONFIG, {"ss_start_epoch": 1, "ss_step": 0.5, "ss_epochs_per_step": 1})]
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch, model, extra):
    torch.set_num_threads(1)
    config = make_config(corpus, tmp_path, model=model, **extra)
    Trainer(config, tmp_path / "straight", progress=False).train()

    original = Trainer._train_step

    def crashing(self, *args):
        if self.step == 7:  # dies mid-epoch, one step after the state saved at step 6
            raise Crash()
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", crashing)
    with pytest.raises(Crash):
        Trainer(config, tmp_path / "crashed", progress=False).train()
    monkeypatch.setattr(Trainer, "_train_step", original)
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config, tmp_path / "crashed", progress=False)
    Trainer(config, tmp_path / "crashed", resume=True, progress=False).train()

    a, b = weights(tmp_path / "straight" / "state.pt"), weights(tmp_path / "crashed" / "state.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)

    def log(path):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]

    assert log(tmp_path / "straight" / "log.jsonl") == log(tmp_path / "crashed" / "log.jsonl")


def test_scheduled_sampling_selects_only_fully_generative_epochs(corpus, tmp_path):
    torch.set_num_threads(1)
    config = make_config(
        corpus,
        tmp_path,
        model=SRNN_CONFIG,
        epochs=4,
        ss_start_epoch=1,
        ss_step=0.5,
        ss_epochs_per_step=1,
        early_stop_patience=1,
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.train()
    feedback = [h["feedback"] for h in trainer.history]
    assert feedback[:3] == [0.0, 0.5, 1.0]
    assert all(not h["best"] for h in trainer.history if h["feedback"] < 1) and trainer.best_epoch >= 2


def test_a_later_stage_continues_the_schedule_and_step_budget(corpus, tmp_path):
    torch.set_num_threads(1)
    schedule = {"lr_schedule": "warmup_cosine", "warmup_steps": 2, "cosine_steps": 200, "lr_min": 1e-6}
    n = Trainer(make_config(corpus, tmp_path), tmp_path / "probe", progress=False).train_data.num_batches(4, 1, True)
    begin, end = 2 * n, 2 * n + 3  # a whole run of `end` steps would log three epochs
    config = make_config(corpus, tmp_path, epochs=100, max_steps=end, start_step=begin, **schedule)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.learning_rate(begin))
    trainer.train()
    assert [h["step"] for h in trainer.history] == [end]  # three steps in one epoch
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.learning_rate(end - 1))
    with pytest.raises(ConfigError, match="start_step"):
        make_config(corpus, tmp_path, max_steps=10, start_step=10)


def test_resume_refuses_a_changed_configuration_but_accepts_a_new_budget(corpus, tmp_path):
    Trainer(make_config(corpus, tmp_path, epochs=1), tmp_path / "run", progress=False).train()
    with pytest.raises(ConfigError, match="different configuration"):
        Trainer(make_config(corpus, tmp_path, epochs=1, lr=0.5), tmp_path / "run", resume=True, progress=False)
    longer = Trainer(make_config(corpus, tmp_path, epochs=2), tmp_path / "run", resume=True, progress=False)
    assert longer.epoch == 1
    longer.train()
    assert [h["epoch"] for h in longer.history] == [0, 1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 2


def test_a_state_older_than_an_option_resumes_with_its_default(corpus, tmp_path):
    Trainer(make_config(corpus, tmp_path, epochs=1), tmp_path / "run", progress=False).train()
    state_path = tmp_path / "run" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    for option in ("warp", "join_speakers", "speeds"):  # written before these options existed
        del state["config"]["train"][option]
    torch.save(state, state_path)
    with pytest.raises(ConfigError, match="different configuration"):
        Trainer(make_config(corpus, tmp_path, epochs=2, warp=0.1), tmp_path / "run", resume=True, progress=False)
    assert Trainer(make_config(corpus, tmp_path, epochs=2), tmp_path / "run", resume=True, progress=False).epoch == 1


def test_joined_speakers_cut_validation_files_as_streams_too(corpus, tmp_path):
    """With join_speakers, a speaker's validation files are cut as one stream like its training files: sequences
    longer than each file still find validation data."""
    records = [{**r, "speaker": "one"} for r in read_manifest(corpus / "valid.jsonl")]
    write_manifest(tmp_path / "valid.jsonl", records)
    config = make_config(corpus, tmp_path, seq_len=60, join_speakers=True)
    config.valid_manifest = str(tmp_path / "valid.jsonl")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    apart = SequenceDataset(trainer.valid_data.cache, 60)
    assert len(trainer.valid_data) > len(apart)
    assert sum(trainer.valid_data.cache.lengths) // 60 == len(trainer.valid_data)


def test_ddp_two_processes_train_in_sync(corpus, tmp_path):
    """torchrun with 2 gloo processes: replicas stay identical (checked by the trainer at the end),
    each step consumes one global batch, and the result is not that of one process on its shard."""
    make_config(corpus, tmp_path, epochs=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [
        "--config",
        str(tmp_path / "config.yaml"),
        "--train",
        str(corpus / "train.jsonl"),
        "--valid",
        str(corpus / "valid.jsonl"),
        "--cache",
        str(corpus / "cache"),
        "--no-progress",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "speechdvae",
            "train",
            *common,
            "-o",
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    shard = tmp_path / "shard.yaml"
    shard.write_text((tmp_path / "config.yaml").read_text().replace("batch_size: 4", "batch_size: 2"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "speechdvae",
            "train",
            *common[:-1],
            "--config",
            str(shard),
            "--no-progress",
            "-o",
            str(tmp_path / "single"),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    ddp = torch.load(tmp_path / "ddp" / "state.pt", weights_only=False)
    single = torch.load(tmp_path / "single" / "state.pt", weights_only=False)
    meta = json.loads((tmp_path / "ddp" / "model" / "config.json").read_text())
    assert json.dumps(meta).count('"processes": 2') == 1
    n = len(SequenceDataset(SpectrogramCache(corpus / "train.jsonl", corpus / "cache", show_progress=False), 10))
    assert ddp["step"] == 2 * ((n // 2) // 2)  # 2 epochs of global batches of 4 (2 per process)
    assert single["step"] == 2 * (n // 2)
    assert any(not torch.allclose(ddp["model"][k], single["model"][k]) for k in ddp["model"])


def test_fine_tuning_starts_from_a_checkpoint(corpus, tmp_path):
    first = Trainer(make_config(corpus, tmp_path, epochs=1), tmp_path / "first", progress=False).train()
    tuned = Trainer(make_config(corpus, tmp_path, epochs=1, init_from=str(first)), tmp_path / "tuned", progress=False)
    start = checkpoints.load_model(first, device="cpu").state_dict()
    assert all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in start.items())
    with pytest.raises(ConfigError, match="different architecture"):
        Trainer(
            make_config(corpus, tmp_path, model={**VAE_CONFIG, "z_dim": 3}, init_from=str(first)),
            tmp_path / "other",
            progress=False,
        )
    with pytest.raises(ConfigError, match="no checkpoint"):
        make_config(corpus, tmp_path, init_from=str(tmp_path / "nowhere"))


def test_best_model_is_exported_while_the_run_goes_on(corpus, tmp_path):
    torch.set_num_threads(1)
    trainer = Trainer(make_config(corpus, tmp_path, epochs=4, lr=3e-3), tmp_path / "run", progress=False)
    exported = []  # (epoch, weights) of every export, read back from the model folder
    export = trainer._export

    def recording_export():
        path = export()
        exported.append((trainer.epoch, checkpoints.load_model(path, device="cpu").state_dict()))
        return path

    trainer._export = recording_export
    trainer.train()
    improving = [h["epoch"] for h in trainer.history if h["best"]]
    assert len(improving) >= 2
    assert [epoch for epoch, _ in exported[:-1]] == improving  # one export per improvement, then the final one
    assert any(not torch.equal(v, exported[0][1][k]) for k, v in exported[-1][1].items())


def test_validation_is_the_shared_elbo_evaluation(corpus, tmp_path):
    torch.set_num_threads(1)
    trainer = Trainer(make_config(corpus, tmp_path), tmp_path / "run", progress=False)
    valid = trainer.validate(0.0)
    again = evaluate_elbo(trainer.model, trainer.valid_data, 0.5, 0.5, batch_size=8, seed=trainer.cfg.seed + 1)
    assert valid == again and valid["loss"] == pytest.approx(valid["recon"] + 0.5 * valid["kl_z"])


def test_precision(corpus, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bfloat16"
    with pytest.raises(ConfigError, match="precision"):
        make_config(corpus, tmp_path, precision="half")
    # bf16 autocast trains the same model to a comparable loss; weights and loss stay float32
    torch.set_num_threads(1)
    losses = {}
    for precision in ("float32", "bfloat16"):
        trainer = Trainer(
            make_config(corpus, tmp_path, epochs=4, lr=3e-3, precision=precision), tmp_path / precision, progress=False
        )
        trainer.train()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        losses[precision] = trainer.best_loss
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.1)
    assert losses["bfloat16"] != losses["float32"]  # autocast did run in bf16


def test_noise_floor_reaches_training_and_validation(corpus, tmp_path):
    with pytest.raises(ConfigError, match="floor_db must be negative"):
        make_config(corpus, tmp_path, floor_db=0.0)
    plain = Trainer(make_config(corpus, tmp_path), tmp_path / "plain", progress=False)
    floored = Trainer(make_config(corpus, tmp_path, floor_db=-20.0), tmp_path / "floored", progress=False)
    for name in ("train_data", "valid_data"):
        assert getattr(plain, name).floor_db is None and getattr(floored, name).floor_db == -20.0
        clean = next(iter(getattr(plain, name).batches(4, shuffle=False)))
        noisy = next(iter(getattr(floored, name).batches(4, shuffle=False)))
        # a -20-dBFS floor dwarfs the tones' quietest bins, not their loudest
        assert noisy.min() > 100 * clean.min() and noisy.max() < 2 * clean.max()
    # the validation loss is scored on the floored sequences
    assert floored.validate(0.0)["recon"] != plain.validate(0.0)["recon"]


def test_speed_perturbation_reaches_training_data_only(corpus, tmp_path):
    plain = Trainer(make_config(corpus, tmp_path), tmp_path / "plain", progress=False)
    faster = Trainer(make_config(corpus, tmp_path, speeds=[0.9, 1.0, 1.1]), tmp_path / "speeds", progress=False)
    assert len(faster.train_data.cache.ids) == 3 * len(plain.train_data.cache.ids)
    assert 2.5 * len(plain.train_data) < len(faster.train_data) < 3.5 * len(plain.train_data)
    assert faster.valid_data.cache.ids == plain.valid_data.cache.ids
    # a run with speeds resumes with the same speeds
    faster.train()
    again = Trainer(
        make_config(corpus, tmp_path, speeds=[0.9, 1.0, 1.1], epochs=4),
        tmp_path / "speeds",
        resume=True,
        progress=False,
    )
    assert again.epoch == 3
