"""What the inference engines with a DVAE speech prior and an NMF noise model share (the VEM, `vem`, and
posterior sampling, `langevin`): checked batches of noisy STFTs with their frame masks, per-utterance random
streams, the initial NMF factors, the past speech that autoregressive priors read, and the batched result.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Self

import torch

from ..models.base import DVAE, Decoded, Posterior
from .nmf import NMFNoise

# Floor of the observed power |X|^2: frames of digital silence would otherwise drive H and g to
# zero, V_x to zero and the updates to NaN. 1e-10 is about 200 dB below a full-scale sine's bin,
# so it changes nothing on real (peak-normalised) recordings.
POWER_FLOOR = 1e-10

# Autoregressive priors feed their own past outputs back (generation mode, SE paper eq. 31);
# the other priors ignore it.
FEEDBACK = 1.0
# What autoregressive priors read as the past speech s_{1:t-1}: their own generated past (eq. 31, the
# official choice), or the current estimate of the clean power, E[|s_t|^2 | x] under the last M-step
# (the noisy power before the first), which decodes all frames at once instead of frame by frame.
PASTS = ("generated", "estimate")
# Arithmetic of the prior's forward passes: float32, or bf16 autocast where the device computes bf16 natively
# (`prior_precision`); the NMF, the gains, the Wiener filter and the losses stay float32.
PRECISIONS = ("float32", "bfloat16")
# Field metadata of an engine setting added after results were cached: the value that runs the engine as before the
# setting existed. Cache keys (`settings_identity`) leave such a setting out at that value.
NEUTRAL = "neutral"


def settings_identity(settings: object) -> dict[str, object]:
    """An engine's settings (a dataclass) as a dict for cache keys, without the settings at their `NEUTRAL` value."""
    return {
        f.name: getattr(settings, f.name)
        for f in fields(settings)
        if not (NEUTRAL in f.metadata and getattr(settings, f.name) == f.metadata[NEUTRAL])
    }


def utterance_seed(seed: int, key: int | str, stream: str) -> int:
    """A 63-bit seed for one utterance's `stream`, stable across processes and batch layouts."""
    digest = hashlib.sha256(f"{seed}/{key}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Make `generator` the default random source of its device for the block, then give it the
    advanced state back; the global random state is left as it was."""
    device = generator.device
    forked = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=forked, device_type=device.type):
        default = torch.default_generator if device.type == "cpu" else torch.cuda.default_generators[device.index or 0]
        default.set_state(generator.get_state())
        yield
        generator.set_state(default.get_state())


def computes_bf16(device: torch.device) -> bool:
    """Whether `device` has bf16 arithmetic: GPUs with bf16, CPUs with AVX-512-BF16 or AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def prior_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `precision` "bfloat16" on a device that computes bf16 natively; float32 elsewhere (a CPU
    without bf16 would emulate it, several times slower)."""
    if precision == "bfloat16" and computes_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def in_float32(dec: Decoded) -> Decoded:
    """The decoder's outputs in float32 (they are bf16 after a forward pass under autocast)."""
    return Decoded(dec.y_logvar.float(), dec.prior_mean.float(), dec.prior_logvar.float())


def generated_past(model: DVAE, post: Posterior) -> torch.Tensor:
    """The model's own outputs exp(log v_s) decoded frame by frame from `post` (generation, eq. 31), without
    gradients: decoded again as a teacher-forced past they give generation's values and gradients."""
    with torch.no_grad():
        return model.decode(post, None, feedback=FEEDBACK).y_logvar.exp()


def decode_from_past(model: DVAE, post: Posterior, past: torch.Tensor | None) -> Decoded:
    """Decode the latents of `post`; autoregressive priors read `past` (R, T, F) as s_{1:t-1}, or their own
    generated past when it is None.

    The generated past (eq. 31) is decoded in two passes: the model's own outputs frame by frame without
    gradients, then every frame at once from them as the past. Models feed their outputs back detached
    (`DVAE.decode`), so this gives the values and gradients of decoding with feedback 1 under autograd,
    at the cost of a forward pass instead of a backward pass through the frame-by-frame recursion."""
    if not model.autoregressive:
        return model.decode(post, None)
    return model.decode(post, generated_past(model, post) if past is None else past, feedback=0.0)


@dataclass
class NoisyBatch:
    """Noisy STFTs (B, T, F) zero-padded to the longest, their floored powers (zero on padded frames), the frame
    mask (B, T), the lengths (B,) and the keys naming each utterance's random streams."""

    X: torch.Tensor
    power: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    keys: list[int | str]

    @classmethod
    def checked(
        cls,
        model: DVAE,
        X: torch.Tensor,
        lengths: Sequence[int] | torch.Tensor | None,
        keys: Sequence[int | str] | None,
    ) -> NoisyBatch:
        """Check a complex (T, F) or (B, T, F) STFT for `model`, its lengths (default: all frames) and keys
        (default: the indices), and move it to the model's device; a (T, F) input gives a batch of one."""
        freqs = model.x_dim
        if not X.is_complex() or X.dim() not in (2, 3) or X.shape[-1] != freqs:
            raise ValueError(f"expected a complex STFT (T, {freqs}) or (B, T, {freqs}), got {X.dtype} {tuple(X.shape)}")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("the STFT contains NaN or infinite values")
        X = (X if X.dim() == 3 else X[None]).to(model.device)
        batch, frames = X.shape[:2]
        lengths = torch.full((batch,), frames) if lengths is None else torch.as_tensor(lengths).long().cpu()
        if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > frames).any()):
            raise ValueError(
                f"lengths must give 1..{frames} frames for each of the {batch} utterances, got {lengths.tolist()}"
            )
        silent = [b for b in range(batch) if not bool(X[b, : lengths[b]].abs().amax() > 0)]
        if silent:
            raise ValueError(f"utterances {silent} are digital silence (all-zero STFT): nothing to enhance")
        keys = list(range(batch)) if keys is None else list(keys)
        if len(keys) != batch:
            raise ValueError(f"got {len(keys)} keys for {batch} utterances")
        dtype = next(model.parameters()).dtype
        power = (X.real.square() + X.imag.square()).to(dtype).clamp_min(POWER_FLOOR)
        mask = torch.arange(frames, device=X.device)[None] < lengths.to(X.device)[:, None]
        return cls(X, power * mask[..., None], mask, lengths, keys)

    def utterance_power(self, index: int) -> torch.Tensor:
        """The power spectrogram (T, F) of utterance `index`, without padding."""
        return self.power[index, : int(self.lengths[index])]

    def initial_noise(self, rank: int, seed: int, init: NMFNoise | None) -> NMFNoise:
        """The given NMF factors after a check of their shapes, else random ones of `rank` drawn for each
        utterance from its "nmf" stream (`NMFNoise.init_random`)."""
        batch, frames, freqs = self.power.shape
        if init is None:
            parts = [
                NMFNoise.init_random(
                    1,
                    freqs,
                    int(T),
                    rank,
                    torch.Generator().manual_seed(utterance_seed(seed, key, "nmf")),
                    self.power.dtype,
                    self.power.device,
                )
                for T, key in zip(self.lengths.tolist(), self.keys)
            ]
            return NMFNoise.stack(parts, frames)
        if init.W.shape[0] != batch or init.H.shape[-1] != frames or init.W.shape[1] != freqs:
            raise ValueError(
                f"init NMF factors {tuple(init.W.shape)}, {tuple(init.H.shape)} do not fit "
                f"{batch} utterances of {frames} frames and {freqs} bins"
            )
        return init


# How `EnhancementResult.utterance` cuts a field down to one utterance: along the frames or the iterations
# (axis 1, as `field(metadata=...)`), or along the batch only (no metadata).
PER_FRAME = {"axis": "frames"}
PER_ITERATION = {"axis": "iterations"}


@dataclass
class EnhancementResult:
    """Batched outputs of an inference engine, B first; frames beyond an utterance's length are zero in the
    (B, T, F) arrays, and iteration histories are NaN after an utterance stopped."""

    speech: torch.Tensor = field(metadata=PER_FRAME)  # (B, T, F) complex: Wiener estimate of the speech STFT (36)
    speech_var: torch.Tensor = field(metadata=PER_FRAME)  # (B, T, F) g v_s, averaged over the Wiener-filter draws
    noise_var: torch.Tensor = field(metadata=PER_FRAME)  # (B, T, F) W H
    wiener_gain: torch.Tensor = field(metadata=PER_FRAME)  # (B, T, F) mean over draws of g v_s / V_x
    nmf: NMFNoise  # W (B, F, K), H (B, K, T)
    gain: torch.Tensor = field(metadata=PER_FRAME)  # (B, T) g
    losses: torch.Tensor = field(metadata=PER_ITERATION)  # (B, I) mean of log V_x + |X|^2 / V_x per iteration
    lengths: torch.Tensor  # (B,) frames
    iterations: torch.Tensor  # (B,) iterations run
    seconds: float = field(default=math.nan, kw_only=True)  # wall time of the run, snapshots not counted
    # the snapshots asked of the engine: k -> (Wiener gain (B, T, F), seconds) of the same run stopped after k
    # iterations, identical to a run of k iterations (`Clock` times it)
    snapshots: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict, kw_only=True)

    def utterance(self, index: int) -> Self:
        """Utterance `index` as a batch of one, trimmed to its own frames and iterations."""
        T, n = int(self.lengths[index]), int(self.iterations[index])
        b = slice(index, index + 1)
        ends = {PER_FRAME["axis"]: T, PER_ITERATION["axis"]: n}

        def trimmed(name: str, axis: str | None) -> object:
            value = getattr(self, name)
            if isinstance(value, NMFNoise):
                return NMFNoise(value.W[b], value.H[b, :, :T])
            if name == "snapshots":
                return {k: (gain[b, :T], seconds) for k, (gain, seconds) in value.items()}
            if name == "seconds":
                return value
            return value[b] if axis is None else value[b, : ends[axis]]

        return type(self)(**{f.name: trimmed(f.name, f.metadata.get("axis")) for f in fields(self)})


def check_snapshots(snapshots: Sequence[int], lowest: int, niter: int) -> list[int]:
    """The snapshot iteration counts below `niter`, sorted; each must lie in lowest..niter."""
    if any(not lowest <= k <= niter for k in snapshots):
        raise ValueError(f"snapshots must lie in {lowest}..{niter} iterations, got {sorted(snapshots)}")
    return sorted(set(snapshots) - {niter})


class Clock:
    """The wall time of a run without the time spent taking snapshots: what a run stopping earlier would take."""

    def __init__(self) -> None:
        self.start, self.excluded = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def exclude(self, since: float) -> None:
        """Leave out the time since `since` (a `time.perf_counter()` value)."""
        self.excluded += time.perf_counter() - since
