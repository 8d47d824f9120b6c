"""The run folder shared by the trainers: the check of RUN_DIR against --resume, the state and its exact resume, the
budget, the logs and the export of the best model at every improvement, on a trainer reduced to them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import VAE_CONFIG

from speechdvae import checkpoints
from speechdvae.errors import SpeechDVAEError
from speechdvae.models import build_model
from speechdvae.train.baseline import BaselineTrainer
from speechdvae.train.dvae import Trainer
from speechdvae.train.run import RunTrainer, with_budget, with_defaults

VALID_LOSSES = [3.0, 2.0, 2.5, 1.0, 1.5]  # improvements at steps 1, 2 and 4


class ToyError(SpeechDVAEError, ValueError):
    pass


@dataclass(frozen=True)
class ToyConfig:
    manifest: str
    train: dict[str, Any] = field(default_factory=lambda: {"steps": 5, "lr": 0.1})

    @property
    def manifests(self) -> dict[str, str]:
        return {"train": self.manifest}

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "train": dict(self.train)}


class Toy(RunTrainer):
    """Adam steps on the weights' squared norm; the validation losses of the steps are VALID_LOSSES."""

    error = ToyError
    budget = ("train.steps",)
    defaults = {"train": {"lr": 0.1}}
    state_keys = (*RunTrainer.state_keys, "best_step")

    def __init__(self, config: ToyConfig, run_dir: Path, resume: bool = False) -> None:
        super().__init__(config, run_dir, torch.device("cpu"))
        state = self._open(resume)
        torch.manual_seed(0)
        self.model = build_model(VAE_CONFIG)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train["lr"])
        self.best_step = -1
        self._start(state)

    def train(self) -> Path:
        while self.step < self.config.train["steps"]:
            loss = sum(p.square().sum() for p in self.model.parameters())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step += 1
            valid = VALID_LOSSES[self.step - 1]
            improved = valid < self.best_loss
            if improved:
                self.best_step = self.step
                self._keep_best(valid)
            self.history.append({"step": self.step, "valid_loss": valid, "best": improved})
            self._save_state()
        return self._export()

    def _new_model(self) -> torch.nn.Module:
        return build_model(self.model.config)

    def _training_record(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "steps": self.step}


@pytest.fixture
def config(tmp_path: Path) -> ToyConfig:
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"id": "a", "path": "a.flac"}\n')
    return ToyConfig(str(manifest))


def budget(config: ToyConfig, steps: int) -> ToyConfig:
    return replace(config, train={**config.train, "steps": steps})


def test_only_the_budget_may_differ() -> None:
    saved = {"steps": 10, "lr": 0.1, "train": {"epochs": 3, "seed": 0}}
    current = {"steps": 20, "lr": 0.1, "train": {"epochs": 5, "seed": 0}}
    assert with_budget(saved, current, ("steps", "train.epochs")) == current
    assert with_budget(saved, current, ("steps",)) != current
    assert saved["train"]["epochs"] == 3  # the saved configuration itself is left as it was
    # options added after a state was written take their defaults, which reproduce what was done before them
    older = {"steps": 10, "train": {"epochs": 3}}
    assert with_defaults(older, {"lr": 0.1, "train": {"seed": 0}}) == {**saved, "train": {"epochs": 3, "seed": 0}}
    assert with_defaults(saved, {"lr": 0.5}) == saved


def test_a_run_is_refused_resumed_or_begun_as_resume_says(config: ToyConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Toy(budget(config, 2), run).train()
    assert json.loads((run / "config.json").read_text()) == budget(config, 2).to_json()
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert (run / "log.csv").read_text().startswith("step,valid_loss,best")
    with pytest.raises(ToyError, match="already holds a run: pass --resume"):
        Toy(budget(config, 2), run)
    with pytest.raises(ToyError, match=r"different configuration; .* \(only steps may change\)"):
        Toy(replace(config, train={"steps": 2, "lr": 0.5}), run, resume=True)
    resumed = Toy(config, run, resume=True)
    assert (resumed.step, resumed.best_step, resumed.best_loss, len(resumed.history)) == (2, 2, 2.0, 2)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 5  # the new budget
    (tmp_path / "no-state").mkdir()
    (tmp_path / "no-state" / "config.json").write_text("{}")
    with pytest.raises(ToyError, match="no state to resume from"):
        Toy(config, tmp_path / "no-state", resume=True)
    assert Toy(config, tmp_path / "new", resume=True).step == 0


def test_a_resumed_run_ends_as_an_uninterrupted_one(config: ToyConfig, tmp_path: Path) -> None:
    Toy(config, tmp_path / "straight").train()
    Toy(budget(config, 3), tmp_path / "stopped").train()
    Toy(config, tmp_path / "stopped", resume=True).train()
    a, b = (torch.load(tmp_path / run / "state.pt", weights_only=False) for run in ("straight", "stopped"))
    assert a.keys() == b.keys() == {"model", "optimizer", "config", *Toy.state_keys}
    for key in ("model", "best_state"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    assert a["history"] == b["history"] and a["best_step"] == b["best_step"] == 4


def test_the_best_weights_are_exported_at_every_improvement(config: ToyConfig, tmp_path: Path) -> None:
    trainer = Toy(config, tmp_path / "run")
    exports = []  # (step, weights) of every export, read back from the model folder
    export = trainer._export

    def recording_export() -> Path:
        path = export()
        exports.append((trainer.step, checkpoints.load_model(path, device="cpu").state_dict()))
        return path

    trainer._export = recording_export
    model_dir = trainer.train()
    assert [step for step, _ in exports] == [1, 2, 4, 5]  # one export per improvement, then the final one
    assert all(torch.equal(v, trainer.best_state[k]) for k, v in exports[-1][1].items())
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in trainer.best_state.items())
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["metadata"]["training"] == {"best_step": 4, "steps": 5}
    assert meta["training_data"]["sha256"]["train"] == hashlib.sha256(Path(config.manifest).read_bytes()).hexdigest()
    assert '"/' not in (model_dir / "config.json").read_text()


@pytest.mark.parametrize("trainer", [Trainer, BaselineTrainer])
def test_both_trainers_keep_their_runs_with_the_shared_code(trainer: type[RunTrainer]) -> None:
    assert issubclass(trainer, RunTrainer)
    for name in ("_open", "_start", "_save_state", "_keep_best", "_export"):
        assert getattr(trainer, name) is getattr(RunTrainer, name), name
