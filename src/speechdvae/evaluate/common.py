"""Machinery shared by the evaluations: errors, model loading and fingerprints, result caches, subsets, metrics
with their NaN reasons, and torch threads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_text_atomic
from ..checkpoints import from_pretrained
from ..errors import SpeechDVAEError
from ..models import DVAE

ModelSource = DVAE | str | os.PathLike


class EvaluationError(SpeechDVAEError, ValueError):
    """Options or inputs that cannot make an evaluation (no model, bad limit, reserved label, empty set)."""


def load_source(source: ModelSource) -> DVAE:
    """A prior given in memory (put in eval mode), as a checkpoint folder or by the name of a shipped one."""
    return from_pretrained(source) if isinstance(source, (str, os.PathLike)) else source.eval()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's configuration and weights: results of other weights are never reused."""
    digest = hashlib.sha256(json.dumps(model.config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Labelled:
    """A model under its label (a prior for generation, an enhancer for enhancement), with the fingerprint of
    its weights."""

    label: str
    model: Any
    fingerprint: str


class ResultCache:
    """Results appended to a JSONL file as they are computed and found again by key. Lines cut short by an
    interruption are dropped from the file (atomically) and their results recomputed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if not self.path.is_file():
            return
        bad = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
        if bad:
            warnings.warn(f"{self.path}: dropped {bad} incomplete line(s); those results are recomputed", stacklevel=2)
            write_text_atomic(self.path, "".join(json.dumps(entry) + "\n" for entry in self.entries.values()))

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def add(self, entries: Sequence[dict]) -> None:
        """Append entries (each with its `key`) and flush them to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
                self.entries[entry["key"]] = entry
            f.flush()
            os.fsync(f.fileno())


def evenly_spaced(records: Sequence[dict], limit: int | None = None) -> list[dict]:
    """The records sorted by id, or `limit` of them evenly spaced (indices ⌊i·n/limit⌋), deterministically."""
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be positive, got {limit}")
    ordered = sorted(records, key=lambda r: r["id"])
    if limit is None or limit >= len(ordered):
        return ordered
    return [ordered[i * len(ordered) // limit] for i in range(limit)]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Batch-1 recursions run faster on one thread than split across busy cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
