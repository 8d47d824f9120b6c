"""The run folder of every trainer: configuration, resumable state, log and best model.

A run is a folder RUN_DIR holding `config.json` (the run's full configuration), `state.pt` (the complete training
state: weights, optimizer, progress, best weights so far and log; rewritten atomically, so that a kill at any
moment, even `kill -9`, leaves the previous state intact), `log.jsonl` / `log.csv` (one row per validation) and
`model/`, the weights of the best validation loss as a checkpoint (`speechdvae.checkpoints`) naming the manifests
it was trained on with their content hashes. The model is exported at every improvement, so a long run's best
model can be used (or committed) while the run goes on. A run continued with `resume=True` starts from its last
state and repeats exactly what an uninterrupted run does; only the options of its budget may change.

`RunTrainer` implements this once for the trainer of the speech priors (`train.dvae`) and for that of the
supervised baseline (UMX, `train.baseline`).
"""

from __future__ import annotations

import abc
import copy
import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .. import checkpoints
from ..atomic import atomic_path, write_json_atomic, write_text_atomic

CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
MODEL_DIR = "model"


class RunConfiguration(Protocol):
    """What the run folder needs of a trainer's configuration."""

    @property
    def manifests(self) -> dict[str, str]:
        """The manifests of the run's data by role, as the exported checkpoint names them."""

    def to_json(self) -> dict[str, Any]:
        """The full configuration as config.json holds it."""


def save_state(path: Path, state: dict) -> None:
    """`torch.save` a training state atomically: a kill leaves the previous state intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def write_history(run_dir: Path, history: list[dict]) -> None:
    """The run's log rows as `log.jsonl` and `log.csv` (from the first row on), both written atomically."""
    write_text_atomic(run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    if history:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(run_dir / "log.csv", out.getvalue())


def with_budget(saved: dict[str, Any], current: dict[str, Any], budget: tuple[str, ...]) -> dict[str, Any]:
    """The configuration `saved` with the budget options of `current` ("option", or "section.option" for an option
    inside a section): equal to `current` when only the budget differs."""
    out = copy.deepcopy(saved)
    for key in budget:
        section, _, name = key.rpartition(".")
        target, source = (out[section], current[section]) if section else (out, current)
        target[name] = source[name]
    return out


def option_defaults(config_class: type) -> dict[str, Any]:
    """The options of a config dataclass that have defaults, as config.json writes them (tuples as lists)."""
    return {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default
        for f in dataclasses.fields(config_class)
        if f.default is not dataclasses.MISSING
    }


def with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`saved` with the options it lacks set to their `defaults` (nested like config.json): options added to a
    trainer after a state was written default to what the trainer did before they existed."""
    out = copy.deepcopy(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


class RunTrainer(abc.ABC):
    """The part of a trainer that lives in its run folder: the check of RUN_DIR against `resume`, the training
    state and log, the best weights and their export.

    A subclass names its error class, its `budget` (the options a resumed run may change) and the attributes its
    state holds beyond the common ones (`state_keys`). Its constructor calls `_open` before reading any data,
    builds `model` and `optimizer`, then calls `_start` with what `_open` returned; it calls `_save_state` when it
    saves, `_keep_best` when the validation loss improves and `_export` at the end. `_new_model` and
    `_training_record` describe the exported model.
    """

    error: ClassVar[type[Exception]]  # raised for a run folder or a saved state that cannot be used
    # The options a resumed run may change, as keys of config.json ("option" or "section.option"): they extend or
    # shorten the run without changing what a step computes.
    budget: ClassVar[tuple[str, ...]]
    # The defaults of the options in config.json (nested like it), given to the options a saved state lacks.
    defaults: ClassVar[dict[str, Any]]
    state_keys: ClassVar[tuple[str, ...]] = ("step", "elapsed", "best_loss", "best_state", "history")

    config: RunConfiguration
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, config: RunConfiguration, run_dir: str | os.PathLike, device: torch.device) -> None:
        self.config, self.run_dir, self.device = config, Path(run_dir), device
        self.step = 0
        self.elapsed = 0.0  # training and validation seconds, over every resumption of the run
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files."""
        return True

    # -- the run folder ------------------------------------------------------------------
    def _open(self, resume: bool) -> dict | None:
        """Check RUN_DIR before any work: None for a new run, else the state to resume from, checked to come from
        the same configuration (up to the budget)."""
        path = self.run_dir / STATE_FILE
        if not path.exists():
            if resume and (self.run_dir / CONFIG_FILE).exists():
                raise self.error(f"{self.run_dir} has no state to resume from")
            return None
        if not resume:
            raise self.error(
                f"{self.run_dir} already holds a run: pass --resume to continue it, or choose another folder"
            )
        state = torch.load(path, map_location=self.device, weights_only=False)
        # compared as config.json holds them (tuples as lists), whatever the state's pickle kept
        current, saved = (json.loads(json.dumps(c)) for c in (self.config.to_json(), state["config"]))
        if with_budget(with_defaults(saved, self.defaults), current, self.budget) != current:
            names = ", ".join(key.rpartition(".")[2] for key in self.budget)
            raise self.error(
                f"{path} was written with a different configuration; resume with the same options "
                f"(only {names} may change)"
            )
        return state

    def _start(self, state: dict | None) -> None:
        """Continue from `state` (what `_open` returned) or begin a new run; config.json then holds the current
        configuration (a resumed run's new budget included)."""
        if state is not None:
            self._restore(state)
        if self.main:
            write_json_atomic(self.run_dir / CONFIG_FILE, self.config.to_json())

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **{key: getattr(self, key) for key in self.state_keys},
            "config": self.config.to_json(),
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key in self.state_keys:
            setattr(self, key, state[key])

    def _save_state(self) -> None:
        """state.pt and the log files."""
        if self.main:
            save_state(self.run_dir / STATE_FILE, self._state())
            write_history(self.run_dir, self.history)

    # -- the best model ------------------------------------------------------------------
    def _keep_best(self, loss: float) -> None:
        """Keep the current weights as the best, of validation loss `loss`, and export them."""
        self.best_loss = loss
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._export()

    def _export(self) -> Path:
        """Write the best weights (the current ones while none were kept) as the checkpoint RUN_DIR/model, with
        the run's manifests (relative to the working directory, with their content hashes) as its training data
        and `_training_record()` as its training metadata."""
        out = self.run_dir / MODEL_DIR
        if self.main:
            model = self._new_model()
            model.load_state_dict(self.best_state if self.best_state is not None else self.model.state_dict())
            meta = {
                "training_data": checkpoints.manifest_provenance(self.config.manifests),
                "training": self._training_record(),
            }
            checkpoints.save_model(model, out, metadata=meta)
        return out

    @abc.abstractmethod
    def _new_model(self) -> nn.Module:
        """A model of the run's architecture, on the CPU, to receive the exported weights."""

    @abc.abstractmethod
    def _training_record(self) -> dict[str, Any]:
        """How the exported model was trained (best validation, budget used, options)."""
