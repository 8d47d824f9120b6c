"""One trainer for every speech prior.

It writes a run folder (`train.run`): `config.json` (the full resolved configuration), `state.pt` (the complete
training state, rewritten atomically every `checkpoint_every` steps and at each epoch end), `log.jsonl` /
`log.csv` (one row per epoch) and `model/` (the best model on validation). `resume=True` continues exactly where
the last state left off (mid-epoch, random number generators included), so an interrupted run (even `kill -9`)
ends with the same weights as an uninterrupted one; only `epochs`, `max_steps` and `early_stop_patience` may
change.

Under `torchrun --nproc_per_node N` the same code trains with DistributedDataParallel: every
process reads its own shard of each batch, gradients are averaged, rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoints
from ..data.sequences import SequenceDataset, SpectrogramCache, check_speeds
from ..errors import SpeechDVAEError
from ..models import DVAE, build_model, load_preset
from ..models.losses import elbo_loss
from .run import RunTrainer, option_defaults

PRECISIONS = ("auto", "float32", "bfloat16")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on `device`: GPUs with bf16, CPUs with AMX tiles. On an AVX-512-BF16 CPU
    without AMX it made LSTM and Transformer training steps slower (benchmarks/bench_train.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" -> "bfloat16" on hardware with native bf16, else "float32"; other values pass through."""
    if precision == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast of the forward pass for precision "bfloat16" (or "auto" on native hardware), else nothing."""
    if resolve_precision(precision, device) == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ConfigError(SpeechDVAEError, ValueError):
    """An invalid training configuration or missing data, reported before any work starts."""


@dataclass
class TrainConfig:
    """Optimisation settings. Epoch-based quantities count passes over the training sequences."""

    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant" or "warmup_cosine" (LigHT-DVAE paper)
    warmup_steps: int = 0
    cosine_steps: int = 0
    lr_min: float = 0.0
    batch_size: int = 128
    seq_len: int = 50
    random_crop: bool = False
    join_speakers: bool = False  # cut each speaker's training and validation files as one stream (short ones used too)
    warp: float = 0.0  # VTLP: each training sequence's frequency axis warped by a factor from U[1 - warp, 1 + warp]
    speeds: tuple[float, ...] = (1.0,)  # speed perturbation: training files also resampled to play at these speeds
    floor_db: float | None = None  # white noise at this level (dBFS) added to training and validation power
    epochs: int = 300
    max_steps: int | None = None  # stop after this many optimiser steps (None: no limit)
    # The step count a new run starts at: a stage continuing a published model (init_from) goes on with its
    # predecessor's learning-rate schedule and step budget instead of starting them again.
    start_step: int = 0
    beta_z: float = 1.0
    beta_w: float = 1.0
    kl_warmup_epochs: int = 0  # KL weight epoch / kl_warmup_epochs, then 1 (0: off)
    early_stop_patience: int | None = None  # epochs without validation improvement
    grad_clip: float | None = None  # max global gradient norm
    # Scheduled sampling for autoregressive models: feedback probability 0 before
    # `ss_start_epoch`, then `ss_step`, 2 * `ss_step`, ... every `ss_epochs_per_step` epochs, up to 1.
    ss_start_epoch: int | None = None
    ss_step: float = 0.2
    ss_epochs_per_step: int = 50
    seed: int = 0
    init_from: str | None = None  # checkpoint folder whose weights start the run (fine-tuning)
    checkpoint_every: int = 200  # steps between state saves (also saved at every epoch end)
    valid_batch_size: int = 256
    # "bfloat16": forward passes under bf16 autocast (loss, gradients and weights stay float32); "auto": bf16
    # where it pays (CPUs with AMX, GPUs with bf16), else float32.
    precision: str = "auto"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
            )
        types = {f.name: f.type for f in fields(cls)}
        cfg = cls(**{k: _typed(k, v, types[k]) for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.optimizer not in ("adam", "adamw"):
            problems.append(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in ("constant", "warmup_cosine"):
            problems.append(f"lr_schedule must be constant or warmup_cosine, got {self.lr_schedule!r}")
        for name in ("lr", "batch_size", "seq_len", "epochs", "checkpoint_every", "valid_batch_size"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.start_step < 0 or (self.max_steps is not None and self.start_step >= self.max_steps):
            problems.append(f"start_step must lie in [0, max_steps), got {self.start_step!r}")
        if self.floor_db is not None and not self.floor_db < 0:
            problems.append(f"floor_db must be negative (dBFS), got {self.floor_db!r}")
        if not 0 <= self.warp < 0.5:
            problems.append(f"warp must lie in [0, 0.5), got {self.warp!r}")
        try:
            check_speeds(self.speeds)
        except ValueError as err:
            problems.append(str(err))
        if not 0 < self.ss_step <= 1 or self.ss_epochs_per_step < 1:
            problems.append("ss_step must lie in (0, 1] and ss_epochs_per_step be >= 1")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            problems.append(f"init_from: no checkpoint at {self.init_from}")
        if problems:
            raise ConfigError("; ".join(problems))

    def feedback(self, epoch: int) -> float:
        """Probability of feeding the model's own past instead of the true past at `epoch`."""
        if self.ss_start_epoch is None or epoch < self.ss_start_epoch:
            return 0.0
        stage = 1 + (epoch - self.ss_start_epoch) // self.ss_epochs_per_step
        return min(1.0, round(stage * self.ss_step, 6))

    def final_feedback(self) -> float:
        return 0.0 if self.ss_start_epoch is None else 1.0

    def kl_weight(self, epoch: int) -> float:
        return 1.0 if self.kl_warmup_epochs <= 0 else min(1.0, epoch / self.kl_warmup_epochs)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup_steps`, cosine decay to `lr_min` over `cosine_steps`."""
        if self.lr_schedule == "constant":
            return self.lr
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.cosine_steps))
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * progress))


@dataclass
class RunConfig:
    """Everything that defines a run: model, optimisation and data."""

    model: dict
    train: TrainConfig
    train_manifest: str
    valid_manifest: str
    cache_dir: str
    preset: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def manifests(self) -> dict[str, str]:
        return {"train": self.train_manifest, "valid": self.valid_manifest}

    def to_json(self) -> dict:
        d = asdict(self)
        d["train"]["betas"] = list(self.train.betas)
        return d


def _typed(name: str, value: Any, annotation: str) -> Any:
    """`value` as the type its field declares (YAML reads 5e-4 as a string and 1 where 1.0 is meant);
    ConfigError when it is not one. None passes where the field admits it."""
    if value is None and annotation.endswith("| None"):
        return None
    kind = annotation.removesuffix(" | None")
    try:
        if kind == "float" and not isinstance(value, bool):
            return float(value)
        if kind == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(value)
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "str" and isinstance(value, str):
            return value
        if kind.startswith("tuple") and not isinstance(value, str | dict):
            items = tuple(float(v) for v in value)
            if "..." in kind or len(items) == kind.count(",") + 1:
                return items
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"training option {name} must be {annotation}, got {value!r}")


def resolve_config(
    preset: str | None,
    size: str,
    train_manifest: str | None,
    valid_manifest: str | None,
    cache_dir: str | None,
    overrides: list[str] = (),
    config_file: str | None = None,
    data_root: str | None = None,
) -> RunConfig:
    """Preset (or a YAML/JSON config file) + `section.key=value` overrides -> a checked RunConfig. A manifest
    comes from the argument, else from `data.train` / `data.valid`, else from `data_root` (the open corpus
    layout: manifests/speech_{train,valid}.jsonl)."""
    import yaml

    if config_file:
        raw = yaml.safe_load(Path(config_file).read_text())
    elif preset:
        try:
            raw = copy.deepcopy(load_preset(preset, size))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    else:
        raise ConfigError("give a --preset or a --config file")
    raw.setdefault("train", {})
    raw.setdefault("data", {})
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("model", "train", "data"):
            raise ConfigError(f"override {item!r} must look like model.KEY=VALUE, train.KEY=VALUE or data.KEY=VALUE")
        raw[section][name] = yaml.safe_load(value)
    data = raw["data"]
    manifests = Path(data_root) / "manifests" if data_root else None
    train_manifest = train_manifest or data.get("train") or (manifests and str(manifests / "speech_train.jsonl"))
    valid_manifest = valid_manifest or data.get("valid") or (manifests and str(manifests / "speech_valid.jsonl"))
    for label, path in (("training", train_manifest), ("validation", valid_manifest)):
        if not path:
            raise ConfigError(f"no {label} manifest: pass --{label[:5]} or set data.{label[:5]}")
        if not Path(path).is_file():
            raise ConfigError(f"{label} manifest not found: {path}")
    try:
        build_model(raw["model"])
    except (ValueError, KeyError) as err:
        raise ConfigError(f"invalid model section: {err}") from None
    return RunConfig(
        model=raw["model"],
        train=TrainConfig.from_dict(raw["train"]),
        train_manifest=str(Path(train_manifest).resolve()),
        valid_manifest=str(Path(valid_manifest).resolve()),
        cache_dir=str(Path(cache_dir or Path(train_manifest).resolve().parent.parent / "cache" / "spectrograms")),
        preset=preset,
    )


# -- distributed helpers -------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend=backend)
        return cls(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


# -- the training criterion on held-out data ----------------------------------------------


@torch.no_grad()
def evaluate_elbo(
    model: DVAE,
    data: SequenceDataset,
    beta_z: float,
    beta_w: float,
    feedback: float = 0.0,
    batch_size: int = 256,
    seed: int = 1,
    dist: Dist | None = None,
) -> dict[str, float]:
    """The trainer's criterion (negative ELBO per frame: IS + beta-weighted KL) of `model` on every sequence
    of `data`, z sampled under a fixed seed; shared by validation and by comparisons of checkpoints."""
    dist = dist or Dist()
    device = model.device
    model.eval()
    totals = np.zeros(5)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in data.batches(batch_size, shuffle=False, rank=dist.rank, world_size=dist.world_size):
            batch = batch.to(device)
            post, dec = model(batch, sample=True, feedback=feedback)
            terms = elbo_loss(batch, post, dec, beta_z, beta_w)
            frames = batch.shape[0] * batch.shape[1]
            totals += [float(terms[k]) * frames for k in ("loss", "recon", "kl_z", "kl_w")] + [frames]
    totals = np.asarray(dist.all_sum(totals.tolist(), device))
    return {k: float(v) for k, v in zip(("loss", "recon", "kl_z", "kl_w"), totals[:4] / totals[4])}


# -- the trainer ---------------------------------------------------------------------------


class Trainer(RunTrainer):
    """Trains one model as described by a RunConfig, writing into `run_dir`."""

    error = ConfigError
    budget = ("train.epochs", "train.max_steps", "train.early_stop_patience")
    defaults = {"train": option_defaults(TrainConfig)}
    state_keys = (*RunTrainer.state_keys, "epoch", "batch_in_epoch", "best_epoch", "stale_epochs", "epoch_sums")
    config: RunConfig
    model: DVAE

    def __init__(
        self, config: RunConfig, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True
    ) -> None:
        self.dist = Dist.from_env()
        super().__init__(config, run_dir, self.dist.device())
        self.cfg = config.train
        self.progress = progress and self.main
        state = self._open(resume)

        torch.manual_seed(self.cfg.seed)
        self.model = build_model(config.model).to(self.device)
        if self.cfg.init_from:
            start = checkpoints.load_model(self.cfg.init_from, device=self.device)
            if start.config != self.model.config:
                raise ConfigError(f"init_from: {self.cfg.init_from} holds a different architecture ({start.config})")
            self.model.load_state_dict(start.state_dict())
        torch.manual_seed(self.cfg.seed + self.dist.rank)  # same initial weights, independent sampling noise
        self.train_data = SequenceDataset(
            SpectrogramCache(
                config.train_manifest, config.cache_dir, show_progress=self.progress, speeds=self.cfg.speeds
            ),
            self.cfg.seq_len,
            random_crop=self.cfg.random_crop,
            warp=self.cfg.warp,
            join_speakers=self.cfg.join_speakers,
            floor_db=self.cfg.floor_db,
        )
        self.valid_data = SequenceDataset(
            SpectrogramCache(config.valid_manifest, config.cache_dir, show_progress=self.progress),
            self.cfg.seq_len,
            join_speakers=self.cfg.join_speakers,
            floor_db=self.cfg.floor_db,
        )
        for label, data in (("training", self.train_data), ("validation", self.valid_data)):
            if len(data) < self.dist.world_size:
                raise ConfigError(
                    f"the {label} manifest yields {len(data)} sequences of {self.cfg.seq_len} frames: "
                    "not enough to train (shorter seq_len or more data needed)"
                )
        self.module = self.model
        if self.dist.world_size > 1:
            self.module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(
            self.model.parameters(),
            lr=self.cfg.learning_rate(self.cfg.start_step),
            betas=self.cfg.betas,
            eps=self.cfg.eps,
            weight_decay=self.cfg.weight_decay,
        )
        self.step = self.cfg.start_step  # a resumed run restores its own count
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_epoch = -1
        self.stale_epochs = 0
        self.epoch_sums = np.zeros(4)  # running sums of the epoch's training loss terms
        self._start(state)

    @property
    def main(self) -> bool:
        return self.dist.main

    # -- state: the run's, plus the random number generators -------------------------------
    def _state(self) -> dict:
        return {
            **super()._state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _restore(self, state: dict) -> None:
        super()._restore(state)
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # -- loop ----------------------------------------------------------------------------
    def _finished(self) -> bool:
        out_of_steps = self.cfg.max_steps is not None and self.step >= self.cfg.max_steps
        patience = self.cfg.early_stop_patience
        stopped = (
            patience is not None
            and self.stale_epochs >= patience
            and self.cfg.feedback(self.epoch) >= self.cfg.final_feedback()
        )
        return self.epoch >= self.cfg.epochs or out_of_steps or stopped

    def train(self) -> Path:
        """Run until the epoch budget, the step budget or early stopping; returns the model folder."""
        from tqdm import tqdm

        n_batches = self.train_data.num_batches(self._local_batch(), self.dist.world_size, drop_last=True)
        while not self._finished():
            feedback, kl_weight = self.cfg.feedback(self.epoch), self.cfg.kl_weight(self.epoch)
            self.model.train()
            bar = tqdm(
                total=n_batches,
                initial=self.batch_in_epoch,
                desc=f"epoch {self.epoch}",
                unit="batch",
                disable=not self.progress,
                leave=False,
            )
            t0 = time.time()
            for batch in self.train_data.batches(
                self._local_batch(),
                shuffle=True,
                seed=self.cfg.seed,
                epoch=self.epoch,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                drop_last=True,
                skip=self.batch_in_epoch,
            ):
                terms = self._train_step(batch.to(self.device), feedback, kl_weight)
                self.epoch_sums += [terms[k] for k in ("loss", "recon", "kl_z", "kl_w")]
                self.batch_in_epoch += 1
                self.step += 1
                bar.update()
                bar.set_postfix(loss=f"{terms['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
                if self.step % self.cfg.checkpoint_every == 0:
                    self.elapsed += time.time() - t0
                    t0 = time.time()
                    self._save_state()
                if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
                    break
            bar.close()
            self.elapsed += time.time() - t0
            epoch_done = self.batch_in_epoch >= n_batches
            self._end_epoch(self.epoch_sums / max(1, self.batch_in_epoch), feedback, complete=epoch_done)
        self._check_replicas()
        return self._export()

    def _local_batch(self) -> int:
        return max(1, self.cfg.batch_size // self.dist.world_size)

    def _train_step(self, batch: torch.Tensor, feedback: float, kl_weight: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.learning_rate(self.step)
        with autocast(self.device, self.cfg.precision):
            post, dec = self.module(batch, sample=True, feedback=feedback)
        terms = elbo_loss(batch, post, dec, self.cfg.beta_z, self.cfg.beta_w, kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def validate(self, feedback: float) -> dict[str, float]:
        """Validation ELBO terms (per frame), with a fixed seed so epochs compare fairly."""
        return evaluate_elbo(
            self.model,
            self.valid_data,
            self.cfg.beta_z,
            self.cfg.beta_w,
            feedback=feedback,
            batch_size=self.cfg.valid_batch_size,
            seed=self.cfg.seed + 1,
            dist=self.dist,
        )

    def _end_epoch(self, train_sums: np.ndarray, feedback: float, complete: bool) -> None:
        train_means = [float(v) for v in train_sums]
        valid = self.validate(self.cfg.final_feedback())
        # best-model selection only once training runs in its final (test) mode
        selectable = feedback >= self.cfg.final_feedback()
        improved = selectable and valid["loss"] < self.best_loss
        if improved:
            self.best_epoch, self.stale_epochs = self.epoch, 0
            self._keep_best(valid["loss"])
        elif selectable:
            self.stale_epochs += 1
        self.history.append(
            {
                "epoch": self.epoch,
                "step": self.step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "feedback": feedback,
                "kl_weight": self.cfg.kl_weight(self.epoch),
                "train_loss": train_means[0],
                "train_recon": train_means[1],
                "train_kl_z": train_means[2],
                "train_kl_w": train_means[3],
                "valid_loss": valid["loss"],
                "valid_recon": valid["recon"],
                "valid_kl_z": valid["kl_z"],
                "valid_kl_w": valid["kl_w"],
                "best": improved,
                "seconds": round(self.elapsed, 1),
            }
        )
        if self.main:
            print(
                f"epoch {self.epoch}: train {train_means[0]:.4f}  valid {valid['loss']:.4f}"
                f"{'  *' if improved else ''}  feedback {feedback:.1f}  ({self.elapsed:.0f} s)",
                flush=True,
            )
        if complete:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.epoch_sums = np.zeros(4)
        self._save_state()

    def _check_replicas(self) -> None:
        """Under DDP every process must end with the same weights; anything else is a setup error."""
        if self.dist.world_size == 1:
            return
        checksum = sum(float(p.double().sum()) for p in self.model.parameters())
        sums = [None] * self.dist.world_size
        torch.distributed.all_gather_object(sums, checksum)
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(checksum)):
            raise RuntimeError(f"DDP replicas diverged (parameter checksums {sums})")

    def _new_model(self) -> DVAE:
        return build_model(self.config.model)

    def _training_record(self) -> dict[str, Any]:
        return {
            "preset": self.config.preset,
            "best_epoch": self.best_epoch,
            "best_valid_loss": self.best_loss,
            "steps": self.step,
            "epochs": self.epoch,
            "seconds": round(self.elapsed, 1),
            "processes": self.dist.world_size,
            "train": self.config.to_json()["train"],
        }
