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
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..models.base import DVAE, Decoded, Posterior
from ..models.losses import kl_terms
from .nmf import NMFNoise, m_step, mixture_loss, wiener_gain

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
# VEM iterations of a prior whose checkpoint chose none (docs/enhancement_valid/settings.md).
DEFAULT_ITERATIONS = 30


@dataclass(frozen=True)
class VEMConfig:
    """Settings of the VEM. `official()` gives the settings of the authors' launch scripts. The
    defaults, chosen on validation mixtures of the open corpus (docs/enhancement_valid), differ in two
    places: fewer iterations than 300, as many as chosen for the prior (`DVAE.vem_iterations`, from
    its checkpoint), else DEFAULT_ITERATIONS (the RNN priors score higher after 30 than after 100 or
    300, e.g. the official WSJ0 RVAE 1.9 against 0.2 dB median SI-SDR; our HiT/LigHT-DVAE priors take
    100), and autoregressive priors read the clean-power estimate as their past (for
    HiT/LigHT-DVAE about 5 times faster per iteration than generating it). The optional stop on a
    settled loss compares windows of iterations because the sampled loss fluctuates by ~5e-4 from one
    iteration to the next."""

    niter: int | None = None  # maximum number of VEM iterations; None: the prior's (`for_model`)
    lr: float = 1e-3  # Adam learning rate of the E-step
    nmf_rank: int = 8  # K, rank of the noise NMF
    mstep_samples: int = 1  # latent draws for the M-step criterion (41)
    wf_samples: int = 1  # R, latent draws averaged in the Wiener filter (35)-(36)
    estep_epochs: int = 1  # Adam steps per E-step
    kl_weight: float = 1.0  # weight of the KL terms in the E-step objective (39)
    deterministic: bool = False  # replace every latent draw by the posterior mean
    past: str = "estimate"  # past speech of autoregressive priors: one of PASTS
    tol: float = 0.0  # stop an utterance once its mean loss over the last `window`
    window: int = 10  # iterations moved less than tol (relative); tol = 0: never stop
    seed: int = 0  # root of every utterance's random stream

    def __post_init__(self) -> None:
        if self.niter is not None and not self.niter > 0:
            raise ValueError(f"VEMConfig.niter must be positive or None, got {self.niter}")
        positive = ("lr", "nmf_rank", "mstep_samples", "wf_samples", "estep_epochs", "window")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"VEMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.kl_weight < 0 or self.tol < 0:
            raise ValueError("VEMConfig.kl_weight and VEMConfig.tol must be nonnegative")
        if self.past not in PASTS:
            raise ValueError(f"VEMConfig.past must be one of {', '.join(PASTS)}, got {self.past!r}")

    def for_model(self, model: DVAE) -> VEMConfig:
        """These settings for `model`: an unset iteration count becomes the prior's own, else the default."""
        if self.niter is not None:
            return self
        return replace(self, niter=model.vem_iterations or DEFAULT_ITERATIONS)

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
class VEMResult:
    """Batched outputs, B first; frames beyond an utterance's length are zero in the (B, T, F) arrays.

    `losses`, `estep_recon` and `estep_kl` have one column per iteration, NaN after an utterance
    stopped. `estep_recon` is sum(log V_x + |X|^2 / V_x) and `estep_kl` the summed KL, both from
    the E-step forward before that iteration's Adam step. Our KL is the true one: the official
    code leaves out the -1 of each term, so its value is larger by T L / 2 (gradients are equal)."""

    speech: torch.Tensor  # (B, T, F) complex: Wiener estimate of the speech STFT (36)
    speech_var: torch.Tensor  # (B, T, F) g v_s, averaged over the Wiener-filter draws
    noise_var: torch.Tensor  # (B, T, F) W H
    wiener_gain: torch.Tensor  # (B, T, F) mean over draws of g v_s / V_x
    nmf: NMFNoise  # W (B, F, K), H (B, K, T)
    gain: torch.Tensor  # (B, T) g
    losses: torch.Tensor  # (B, I) reported loss: mean of log V_x + |X|^2 / V_x
    estep_recon: torch.Tensor  # (B, I)
    estep_kl: torch.Tensor  # (B, I)
    lengths: torch.Tensor  # (B,) frames
    iterations: torch.Tensor  # (B,) iterations run
    seconds: float = math.nan  # wall time of the VEM
    # `snapshots` asked of `enhance_spectrogram`: k -> (Wiener gain (B, T, F), seconds) of a run of k iterations
    snapshots: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)

    def utterance(self, index: int) -> VEMResult:
        """Utterance `index` as a batch of one, trimmed to its own frames and iterations."""
        T, n = int(self.lengths[index]), int(self.iterations[index])
        b = slice(index, index + 1)
        return VEMResult(
            self.speech[b, :T],
            self.speech_var[b, :T],
            self.noise_var[b, :T],
            self.wiener_gain[b, :T],
            NMFNoise(self.nmf.W[b], self.nmf.H[b, :, :T]),
            self.gain[b, :T],
            self.losses[b, :n],
            self.estep_recon[b, :n],
            self.estep_kl[b, :n],
            self.lengths[b],
            self.iterations[b],
            self.seconds,
            {k: (gain[b, :T], seconds) for k, (gain, seconds) in self.snapshots.items()},
        )


def utterance_seed(seed: int, key: int | str, stream: str) -> int:
    """A 63-bit seed for one utterance's `stream`, stable across processes and batch layouts."""
    digest = hashlib.sha256(f"{seed}/{key}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def encoder_copy(model: DVAE) -> DVAE:
    """A copy of `model` whose encoder parameters are new trainable tensors and whose other
    parameters and buffers are shared with `model` (they are never updated)."""
    encoder = {id(p) for p in model.encoder_parameters()}
    shared = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in encoder}
    clone = copy.deepcopy(model, memo=shared).eval()
    for p in clone.encoder_parameters():
        p.requires_grad_(True)
    return clone


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


def generated_past(model: DVAE, post: Posterior) -> torch.Tensor:
    """The model's own outputs exp(log v_s) decoded frame by frame from `post` (generation, eq. 31), without
    gradients: decoded again as a teacher-forced past they give generation's values and gradients."""
    with torch.no_grad():
        return model.decode(post, None, feedback=FEEDBACK).y_logvar.exp()


class Utterance:
    """One utterance's power spectrogram, fine-tuned encoder copy, random stream and, when autoregressive
    priors read an estimated past, that estimate."""

    def __init__(self, model: DVAE, power: torch.Tensor, seed: int, key: int | str, past: str) -> None:
        self.power = power[None]  # (1, T, F)
        self.frames = power.shape[0]
        self.model = encoder_copy(model)
        self.params = self.model.encoder_parameters()
        self.init_generator = torch.Generator().manual_seed(utterance_seed(seed, key, "nmf"))
        self.sampler = torch.Generator(device=power.device).manual_seed(utterance_seed(seed, key, "latents"))
        self.past = self.power if past == "estimate" and model.autoregressive else None

    def forward(self, samples: int, sample: bool) -> tuple[Posterior, Decoded]:
        """Encode the noisy power (`samples` draws) and decode, from the generated or the estimated past.

        The generated past (eq. 31) is decoded in two passes: the model's own outputs frame by frame without
        gradients, then every frame at once from them as the past. Models feed their outputs back detached
        (`DVAE.decode`), so this gives the values and gradients of decoding with feedback 1 under autograd,
        at the cost of a forward pass instead of a backward pass through the frame-by-frame recursion."""
        s = self.power.expand(samples, -1, -1)
        with drawing_from(self.sampler):
            post = self.model.infer(s, sample=sample)
            if not self.model.autoregressive:
                return post, self.model.decode(post, None)
            past = generated_past(self.model, post) if self.past is None else self.past.expand(samples, -1, -1)
            return post, self.model.decode(post, past, feedback=0.0)

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


def _as_batch(
    X: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None, freqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a complex (T, F) or (B, T, F) STFT and its lengths; returns (B, T, F) and (B,) lengths."""
    if not X.is_complex() or X.dim() not in (2, 3) or X.shape[-1] != freqs:
        raise ValueError(f"expected a complex STFT (T, {freqs}) or (B, T, {freqs}), got {X.dtype} {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("the STFT contains NaN or infinite values")
    X = X if X.dim() == 3 else X[None]
    batch, frames = X.shape[:2]
    lengths = torch.full((batch,), frames) if lengths is None else torch.as_tensor(lengths).long().cpu()
    if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > frames).any()):
        raise ValueError(
            f"lengths must give 1..{frames} frames for each of the {batch} utterances, got {lengths.tolist()}"
        )
    silent = [b for b in range(batch) if not bool(X[b, : lengths[b]].abs().amax() > 0)]
    if silent:
        raise ValueError(f"utterances {silent} are digital silence (all-zero STFT): nothing to enhance")
    return X, lengths


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

    An unset `config.niter` runs the prior's own number of iterations (`VEMConfig.for_model`).
    `keys` name each utterance's random stream (default: its index in the batch); `init` gives the
    initial NMF factors instead of drawing them. A (T, F) input gives a batch of one.

    `snapshots` (iteration counts up to niter) adds the Wiener gains that runs of those many iterations
    would give, identical to running them one by one (the draws of a snapshot leave the random streams as
    they were), with the time such a run would take: one run gives a whole curve of quality against
    iterations.
    """
    config = config.for_model(model)
    if any(not 0 < k <= config.niter for k in snapshots):
        raise ValueError(f"snapshots must lie in 1..{config.niter} iterations, got {sorted(snapshots)}")
    start = time.perf_counter()
    X, lengths = _as_batch(X.to(model.device), lengths, model.x_dim)
    keys = list(range(len(lengths))) if keys is None else list(keys)
    if len(keys) != len(lengths):
        raise ValueError(f"got {len(keys)} keys for {len(lengths)} utterances")
    dtype = next(model.parameters()).dtype
    power = (X.real.square() + X.imag.square()).to(dtype).clamp_min(POWER_FLOOR)
    batch, frames, freqs = power.shape
    mask = torch.arange(frames, device=power.device)[None] < lengths.to(power.device)[:, None]
    power = power * mask[..., None]
    utts = [
        Utterance(model, power[b, :T], config.seed, key, config.past)
        for b, (T, key) in enumerate(zip(lengths.tolist(), keys))
    ]
    if init is None:
        init = NMFNoise.stack(
            [
                NMFNoise.init_random(1, freqs, u.frames, config.nmf_rank, u.init_generator, dtype, power.device)
                for u in utts
            ],
            frames,
        )
    elif init.W.shape[0] != batch or init.H.shape[-1] != frames or init.W.shape[1] != freqs:
        raise ValueError(
            f"init NMF factors {tuple(init.W.shape)}, {tuple(init.H.shape)} do not fit "
            f"{batch} utterances of {frames} frames and {freqs} bins"
        )
    state = _VEMState(init, config, power, mask)
    optimizer = torch.optim.Adam([p for u in utts for p in u.params], lr=config.lr)
    taken = 0.0  # time spent on snapshots, which a run of fewer iterations does not take
    pending = sorted(set(snapshots) - {config.niter})
    for iteration in tqdm(range(1, config.niter + 1), desc="VEM", disable=not progress, leave=False):
        state.iterate(utts, optimizer)
        while pending and (pending[0] == iteration or not state.active.any()):
            began = time.perf_counter()
            gain = state.snapshot(utts)
            now = time.perf_counter()
            state.snapshots[pending.pop(0)] = (gain, now - start - taken)
            taken += now - began
        if not state.active.any():
            break
    result = state.result(utts, X, lengths)
    result.seconds = time.perf_counter() - start - taken
    if config.niter in snapshots:
        result.snapshots[config.niter] = (result.wiener_gain, result.seconds)
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
        self.snapshots: dict[int, tuple[torch.Tensor, float]] = {}

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
        loss = mixture_loss(self.power, speech_var, self.gain, noise_var, self.mask)
        if any(u.past is not None for u in utts):
            past = self.clean_power(speech_var, noise_var)
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

    def clean_power(self, speech_var: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
        """E[|s_t|^2 | x] (B, T, F) for the unit-gain speech s the prior models: (|G X|^2 + G W H) / g with the
        Wiener gain G, i.e. the posterior mean and variance of g^(1/2) s under the current parameters."""
        wiener = wiener_gain(speech_var, self.gain, noise_var)
        scaled = wiener.square() * self.power + wiener * noise_var
        return (scaled / self.gain[..., None]).clamp_min(POWER_FLOOR)

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
        history = [torch.stack(h, dim=1) for h in (self.losses, self.recon, self.kl)]
        return VEMResult(
            wiener * X,
            torch.where(frames, scaled, 0.0),
            torch.where(frames, noise_var, 0.0),
            wiener,
            self.nmf,
            self.gain,
            *history,
            lengths,
            (~history[0].isnan()).sum(1),
            snapshots=self.snapshots,
        )
