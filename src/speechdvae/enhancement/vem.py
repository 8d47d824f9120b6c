"""Unsupervised speech enhancement with a DVAE speech prior and an NMF noise model: the variational
EM of the SE paper (Algorithm 1), batched over utterances of different lengths.

Each utterance has its own copy of the prior's encoder (fine-tuned in the E-step; the decoder is
shared and frozen, the caller's model is never modified), its own Adam state, NMF factors and gains,
and its own random stream derived from (seed, key), so a batch gives the same result as one
utterance at a time. `VEMConfig.official()` keeps the official code's choices: one Adam step per
iteration over the encoder only, KL weight 1, autoregressive priors decoded in generation mode
(eq. 31), the M-step of `nmf.m_step` on a fresh draw of the latents, and a Wiener filter (eq. 36)
computed from another fresh draw. The defaults depart from them for speed (`VEMConfig`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..models.base import DVAE, Decoded, Posterior
from ..models.losses import kl_terms
from .common import (
    NEUTRAL,
    PASTS,
    PER_ITERATION,
    POWER_FLOOR,
    PRECISIONS,
    Clock,
    EnhancementResult,
    NoisyBatch,
    check_snapshots,
    decode_from_past,
    drawing_from,
    in_float32,
    prior_precision,
    utterance_seed,
)
from .nmf import NMFNoise, clean_power, m_step, mixture_loss, wiener_gain

# VEM iterations of a prior whose checkpoint chose none (docs/enhancement_valid/settings.md).
DEFAULT_ITERATIONS = 30
# What the E-step fine-tunes: the whole encoder (the paper), or only its Gaussian heads (`DVAE.encoder_heads`), the
# layers that map the encoder's features to the posterior's parameters, so the backward pass stops before the
# recurrent or attention layers below them.
FINETUNE = ("encoder", "heads")


@dataclass(frozen=True)
class VEMConfig:
    """Settings of the VEM. `official()` gives the settings of the authors' launch scripts. The
    defaults, chosen on validation mixtures of the open corpus (docs/enhancement_valid), differ in two
    places: DEFAULT_ITERATIONS instead of 300 (a prior's checkpoint may choose its own,
    `DVAE.inference`), and autoregressive priors read the clean-power estimate as their past (for
    HiT/LigHT-DVAE about 5 times faster per iteration than generating it). The optional stop on a
    settled loss compares windows of iterations because the sampled loss fluctuates by ~5e-4 from one
    iteration to the next."""

    engine: ClassVar[str] = "vem"  # the name of the engine these settings run (`speechdvae ... --inference`)

    niter: int = DEFAULT_ITERATIONS  # maximum number of VEM iterations
    lr: float = 1e-3  # Adam learning rate of the E-step
    nmf_rank: int = 8  # K, rank of the noise NMF
    mstep_samples: int = 1  # latent draws for the M-step criterion (41)
    wf_samples: int = 1  # R, latent draws averaged in the Wiener filter (35)-(36)
    estep_epochs: int = 1  # Adam steps per E-step
    kl_weight: float = 1.0  # weight of the KL terms in the E-step objective (39)
    deterministic: bool = False  # replace every latent draw by the posterior mean
    past: str = "estimate"  # past speech of autoregressive priors: one of PASTS
    # what the E-step fine-tunes: one of FINETUNE; "encoder" is the algorithm as it was before the option existed,
    # so cached results keyed without it stay valid (`evaluate.enhancement.result_key`)
    finetune: str = field(default="encoder", metadata={NEUTRAL: "encoder"})
    # arithmetic of the prior's forward passes (`common.prior_precision`): one of PRECISIONS
    precision: str = field(default="float32", metadata={NEUTRAL: "float32"})
    tol: float = 0.0  # stop an utterance once its mean loss over the last `window`
    window: int = 10  # iterations moved less than tol (relative); tol = 0: never stop
    seed: int = 0  # root of every utterance's random stream

    def __post_init__(self) -> None:
        positive = ("niter", "lr", "nmf_rank", "mstep_samples", "wf_samples", "estep_epochs", "window")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"VEMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.kl_weight < 0 or self.tol < 0:
            raise ValueError("VEMConfig.kl_weight and VEMConfig.tol must be nonnegative")
        if self.past not in PASTS:
            raise ValueError(f"VEMConfig.past must be one of {', '.join(PASTS)}, got {self.past!r}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"VEMConfig.finetune must be one of {', '.join(FINETUNE)}, got {self.finetune!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"VEMConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def official(cls, **overrides: object) -> VEMConfig:
        """The authors' settings (launch scripts, WSJ0): 300 iterations, K = 8, lr 1e-3, R = 1,
        one E-step epoch, a fresh draw for the M-step, generated past (eq. 31), no early stop."""
        official = cls(
            niter=300,
            lr=1e-3,
            nmf_rank=8,
            mstep_samples=1,
            wf_samples=1,
            estep_epochs=1,
            kl_weight=1.0,
            tol=0.0,
            past="generated",
        )
        return replace(official, **overrides)


@dataclass
class VEMResult(EnhancementResult):
    """Batched outputs (`EnhancementResult`) and the two E-step terms per iteration: `estep_recon` is
    sum(log V_x + |X|^2 / V_x) and `estep_kl` the summed KL, both from the E-step forward before that iteration's
    Adam step. Our KL is the true one: the official code leaves out the -1 of each term, so its value is larger
    by T L / 2 (gradients are equal)."""

    estep_recon: torch.Tensor = field(metadata=PER_ITERATION)  # (B, I)
    estep_kl: torch.Tensor = field(metadata=PER_ITERATION)  # (B, I)


def tuned_parameters(model: DVAE, finetune: str = "encoder") -> list[torch.nn.Parameter]:
    """The parameters the E-step fine-tunes (`FINETUNE`)."""
    return model.encoder_parameters() if finetune == "encoder" else model.encoder_head_parameters()


def encoder_copy(model: DVAE, finetune: str = "encoder") -> DVAE:
    """A copy of `model` whose fine-tuned parameters (`tuned_parameters`) are new trainable tensors and whose other
    parameters and buffers share `model`'s memory as frozen tensors (never updated, no gradients: autograd keeps no
    graph for the layers below the fine-tuned ones)."""
    tuned = {id(p) for p in tuned_parameters(model, finetune)}
    shared: dict[int, torch.Tensor] = {id(b): b for b in model.buffers()}
    shared |= {
        id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters() if id(p) not in tuned
    }
    clone = copy.deepcopy(model, memo=shared).eval()
    for p in tuned_parameters(clone, finetune):
        p.requires_grad_(True)
    return clone


class Utterance:
    """One utterance's power spectrogram, fine-tuned encoder copy, random stream and, when autoregressive
    priors read an estimated past, that estimate."""

    def __init__(
        self,
        model: DVAE,
        power: torch.Tensor,
        seed: int,
        key: int | str,
        past: str,
        finetune: str = "encoder",
        precision: str = "float32",
    ) -> None:
        self.power = power[None]  # (1, T, F)
        self.precision = precision
        self.frames = power.shape[0]
        self.model = encoder_copy(model, finetune)
        self.params = tuned_parameters(self.model, finetune)
        self.sampler = torch.Generator(device=power.device).manual_seed(utterance_seed(seed, key, "latents"))
        self.past = self.power if past == "estimate" and model.autoregressive else None

    def forward(self, samples: int, sample: bool) -> tuple[Posterior, Decoded]:
        """Encode the noisy power (`samples` draws) and decode, from the generated or the estimated past
        (`decode_from_past`), in the configured precision; the decoder's outputs come back in float32."""
        s = self.power.expand(samples, -1, -1)
        with drawing_from(self.sampler), prior_precision(self.power.device, self.precision):
            post = self.model.infer(s, sample=sample)
            past = None if self.past is None else self.past.expand(samples, -1, -1)
            return post, in_float32(decode_from_past(self.model, post, past))

    def estep_terms(
        self,
        gain: torch.Tensor,
        noise_var: torch.Tensor,
        sample: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sum(log V_x + |X|^2 / V_x) and the KL of eq. (39), with one latent draw."""
        post, dec = self.forward(1, sample)
        vx = gain[:, None] * dec.y_logvar[0].exp() + noise_var
        kl_z, kl_w = kl_terms(post, dec)
        return (torch.log(vx) + self.power[0] / vx).sum(), kl_z + kl_w

    def fine_tune_gradients(
        self, gain: torch.Tensor, noise_var: torch.Tensor, sample: bool, kl_weight: float
    ) -> tuple[float, float]:
        """Set the encoder copy's gradients of the E-step objective; returns its two terms."""
        with record_function("E-step forward"):
            recon, kl = self.estep_terms(gain, noise_var, sample)
        with record_function("E-step backward"):
            grads = torch.autograd.grad(recon + kl_weight * kl, self.params, allow_unused=True)
        for p, grad in zip(self.params, grads):
            p.grad = grad
        return recon.item(), kl.item()

    @torch.no_grad()
    def speech_variance(self, samples: int, sample: bool) -> torch.Tensor:
        """v_s (samples, T, F) decoded from `samples` latent draws of the current encoder."""
        return self.forward(samples, sample)[1].y_logvar.exp()


def enhance_spectrogram(
    model: DVAE,
    X: torch.Tensor,
    config: VEMConfig = VEMConfig(),
    lengths: Sequence[int] | torch.Tensor | None = None,
    keys: Sequence[int | str] | None = None,
    init: NMFNoise | None = None,
    progress: bool = False,
    snapshots: Sequence[int] = (),
) -> VEMResult:
    """Enhance noisy STFTs X, complex (T, F) or (B, T, F) with per-utterance `lengths` in frames.

    `keys` name each utterance's random stream (default: its index in the batch); `init` gives the
    initial NMF factors instead of drawing them. A (T, F) input gives a batch of one.

    `snapshots` (iteration counts up to niter) adds the Wiener gains that runs of those many iterations
    would give, identical to running them one by one (the draws of a snapshot leave the random streams as
    they were), with the time such a run would take: one run gives a whole curve of quality against
    iterations.
    """
    pending = check_snapshots(snapshots, 1, config.niter)
    clock = Clock()
    batch = NoisyBatch.checked(model, X, lengths, keys)
    utts = [
        Utterance(model, batch.utterance_power(b), config.seed, key, config.past, config.finetune, config.precision)
        for b, key in enumerate(batch.keys)
    ]
    nmf = batch.initial_noise(config.nmf_rank, config.seed, init)
    state = _VEMState(nmf, config, batch.power, batch.mask)
    optimizer = torch.optim.Adam([p for u in utts for p in u.params], lr=config.lr)
    taken = {}
    for iteration in tqdm(range(1, config.niter + 1), desc="VEM", disable=not progress, leave=False):
        state.iterate(utts, optimizer)
        while pending and (pending[0] == iteration or not state.active.any()):
            began = time.perf_counter()
            gain = state.snapshot(utts)
            taken[pending.pop(0)] = (gain, clock.elapsed())
            clock.exclude(began)
        if not state.active.any():
            break
    result = state.result(utts, batch.X, batch.lengths)
    result.seconds = clock.elapsed()
    if config.niter in snapshots:
        taken[config.niter] = (result.wiener_gain, result.seconds)
    result.snapshots = taken
    return result


class _VEMState:
    """NMF factors, gains, histories and the stopping rule of a batch while the VEM runs."""

    def __init__(self, nmf: NMFNoise, config: VEMConfig, power: torch.Tensor, mask: torch.Tensor) -> None:
        self.nmf, self.config, self.power, self.mask = nmf, config, power, mask
        self.gain = power.new_ones(power.shape[:2])
        self.sample = not config.deterministic
        self.active = torch.ones(power.shape[0], dtype=torch.bool)
        self.losses: list[torch.Tensor] = []
        self.recon: list[torch.Tensor] = []
        self.kl: list[torch.Tensor] = []

    def iterate(self, utts: list[Utterance], optimizer: torch.optim.Optimizer) -> None:
        """E-step (Adam steps on the active encoders), a fresh draw of v_s, then the M-step."""
        active = self.active.tolist()
        recon, kl = torch.full((2, len(utts)), float("nan"), dtype=torch.float64)
        noise_var = self.nmf.variance()
        for _ in range(self.config.estep_epochs):
            for b, u in enumerate(utts):
                if active[b]:
                    recon[b], kl[b] = u.fine_tune_gradients(
                        self.gain[b, : u.frames], noise_var[b, : u.frames], self.sample, self.config.kl_weight
                    )
            with record_function("E-step Adam"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        with record_function("M-step draw of v_s"):
            speech_var = self.speech_variance(utts, self.config.mstep_samples, active)
        with record_function("M-step NMF and gains"):
            nmf, gain = m_step(self.nmf, self.gain, self.power, speech_var, self.mask)
        keep = self.active.to(self.power.device)
        self.nmf = NMFNoise(
            torch.where(keep[:, None, None], nmf.W, self.nmf.W), torch.where(keep[:, None, None], nmf.H, self.nmf.H)
        )
        self.gain = torch.where(keep[:, None], gain, self.gain)
        noise_var = self.nmf.variance()
        with record_function("loss"):
            loss = mixture_loss(self.power, speech_var, self.gain, noise_var, self.mask)
        if any(u.past is not None for u in utts):
            past = clean_power(self.power, speech_var, self.gain, noise_var, POWER_FLOOR)
            for b, u in enumerate(utts):
                if active[b] and u.past is not None:
                    u.past = past[b : b + 1, : u.frames]
        self._record(torch.where(self.active, loss.double().cpu(), float("nan")), recon, kl)

    def speech_variance(self, utts: list[Utterance], samples: int, active: list[bool]) -> torch.Tensor:
        """v_s (B, samples, T, F) drawn from the active utterances' encoders; ones elsewhere."""
        out = self.power.new_ones(len(utts), samples, *self.power.shape[1:])
        for b, u in enumerate(utts):
            if active[b]:
                out[b, :, : u.frames] = u.speech_variance(samples, self.sample)
        return out

    def _record(self, loss: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor) -> None:
        """Append the iteration's values and deactivate utterances whose windowed loss has settled."""
        self.losses.append(loss)
        self.recon.append(recon)
        self.kl.append(kl)
        window = self.config.window
        if self.config.tol > 0 and len(self.losses) >= 2 * window:
            recent = torch.stack(self.losses[-2 * window :])
            before, after = recent[:window].mean(0), recent[window:].mean(0)
            self.active &= ~((before - after).abs() < self.config.tol * before.abs())

    def wiener_filter(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Wiener gain (36) from a fresh draw of `wf_samples` latents per utterance, zero beyond each
        utterance's frames, with the drawn v_s and the noise variance."""
        speech_var = self.speech_variance(utts, self.config.wf_samples, [True] * len(utts))
        noise_var = self.nmf.variance()
        wiener = torch.where(self.mask[..., None], wiener_gain(speech_var, self.gain, noise_var), 0.0)
        return wiener, speech_var, noise_var

    def snapshot(self, utts: list[Utterance]) -> torch.Tensor:
        """The Wiener gain a run stopping here would give; every random stream is left as it was."""
        states = [u.sampler.get_state() for u in utts]
        wiener = self.wiener_filter(utts)[0]
        for u, state in zip(utts, states):
            u.sampler.set_state(state)
        return wiener

    def result(self, utts: list[Utterance], X: torch.Tensor, lengths: torch.Tensor) -> VEMResult:
        """Wiener filter (36) from a fresh draw of `wf_samples` latents per utterance."""
        wiener, speech_var, noise_var = self.wiener_filter(utts)
        frames = self.mask[..., None]
        scaled = self.gain[..., None] * speech_var.mean(1)
        names, values = ("losses", "estep_recon", "estep_kl"), (self.losses, self.recon, self.kl)
        history = {name: torch.stack(h, dim=1) for name, h in zip(names, values)}
        return VEMResult(
            speech=wiener * X,
            speech_var=torch.where(frames, scaled, 0.0),
            noise_var=torch.where(frames, noise_var, 0.0),
            wiener_gain=wiener,
            nmf=self.nmf,
            gain=self.gain,
            lengths=lengths,
            iterations=(~history["losses"].isnan()).sum(1),
            **history,
        )
