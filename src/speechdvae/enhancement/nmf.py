"""NMF noise model, mixture model and M-step of the VEM (SE paper eqs. 20-22, 36, 40-44), batched, and the
posterior clean-power estimate.

The noise variance is W H with W (B, F, K) and H (B, K, T); in the time-major layout of the rest of
the project it is returned as (B, T, F). The multiplicative updates follow the official code: the
square root of the majorise-minimise ratio, W then H, L1 normalisation of W's columns, then the
gains g (B, T). A frame mask (B, T) keeps the padded frames of shorter utterances out of every sum
over frames; their H and g entries are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Floor of the random initialisation, as in the official code (NumPy's float64 machine epsilon).
INIT_FLOOR = torch.finfo(torch.float64).eps


@dataclass
class NMFNoise:
    """Noise variance factors: W (B, F, K) nonnegative spectral patterns, H (B, K, T) activations."""

    W: torch.Tensor
    H: torch.Tensor

    @classmethod
    def init_random(
        cls,
        batch: int,
        freqs: int,
        frames: int,
        rank: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> NMFNoise:
        """W then H drawn from U[0, 1) in float64, floored at INIT_FLOOR, as the official code does."""
        W = torch.rand(batch, freqs, rank, generator=generator, dtype=torch.float64)
        H = torch.rand(batch, rank, frames, generator=generator, dtype=torch.float64)
        return cls.from_arrays(W.clamp_min(INIT_FLOOR), H.clamp_min(INIT_FLOOR), dtype, device)

    @classmethod
    def from_arrays(
        cls,
        W: torch.Tensor,
        H: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> NMFNoise:
        """Given factors, (F, K) and (K, T) or batched (B, F, K) and (B, K, T), cast to `dtype`."""
        W, H = torch.as_tensor(W), torch.as_tensor(H)
        if W.dim() == 2 and H.dim() == 2:
            W, H = W[None], H[None]
        if W.dim() != 3 or H.dim() != 3 or W.shape[0] != H.shape[0] or W.shape[2] != H.shape[1]:
            raise ValueError(
                f"NMF factors must be W (B, F, K) and H (B, K, T), got {tuple(W.shape)} and {tuple(H.shape)}"
            )
        if bool((W < 0).any()) or bool((H < 0).any()):
            raise ValueError("NMF factors must be nonnegative")
        return cls(W.to(device=device, dtype=dtype), H.to(device=device, dtype=dtype))

    @classmethod
    def stack(cls, parts: Sequence[NMFNoise], frames: int) -> NMFNoise:
        """Concatenate per-utterance factors along the batch, padding H with zero frames up to `frames`."""
        H = [torch.nn.functional.pad(p.H, (0, frames - p.H.shape[-1])) for p in parts]
        return cls(torch.cat([p.W for p in parts]), torch.cat(H))

    def variance(self) -> torch.Tensor:
        """Noise variance (W H) transposed to time-major (B, T, F), computed as H^T W^T so that it is contiguous
        in that layout (the element-wise updates that read it run several times faster than on a transposed view)."""
        return torch.matmul(self.H.transpose(1, 2), self.W.transpose(1, 2))


def mixture_variance(speech_var: torch.Tensor, gain: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """V_x = g v_s + W H (eq. 40) for speech variances (B, R, T, F), gains (B, T), noise (B, T, F)."""
    return gain[:, None, :, None] * speech_var + noise_var[:, None]


def wiener_gain(speech_var: torch.Tensor, gain: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """Speech Wiener gain (eq. 36), averaged over the R draws of v_s (B, R, T, F): mean_r g v_s / V_x."""
    scaled = gain[:, None, :, None] * speech_var
    return (scaled / (scaled + noise_var[:, None])).mean(1)


def clean_power(
    power: torch.Tensor, speech_var: torch.Tensor, gain: torch.Tensor, noise_var: torch.Tensor, floor: float
) -> torch.Tensor:
    """E[|s_t|^2 | x] (B, T, F) for the unit-gain speech s the prior models: (|G X|^2 + G W H) / g with the Wiener
    gain G (of the R draws of v_s (B, R, T, F)), i.e. the posterior mean and variance of g^(1/2) s under the
    current parameters, floored at `floor`. Computed with G / g = mean_r v_s / V_x, which stays finite where a
    frame's gain has decayed to zero (there the estimate is the prior's v_s)."""
    ratio = (speech_var / mixture_variance(speech_var, gain, noise_var)).mean(1)
    return (gain[..., None] * ratio.square() * power + ratio * noise_var).clamp_min(floor)


def _weights(power: torch.Tensor, vx: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|X|^2 sum_r V_x^-2 and sum_r V_x^-1, both (B, T, F) and zero on padded frames; overwrites `vx`."""
    padded = ~mask[..., None]
    inv = vx.reciprocal_()  # in place: the element-wise passes over (B, R, T, F) dominate the M-step's time
    den = inv.sum(1).masked_fill_(padded, 0.0)
    return inv.square_().sum(1).mul_(power).masked_fill_(padded, 0.0), den


def update_W(nmf: NMFNoise, power: torch.Tensor, scaled_speech_var: torch.Tensor, mask: torch.Tensor) -> NMFNoise:
    """Eq. (43): W <- W sqrt([(|X|^2 V_x^-2) H^T] / [V_x^-1 H^T]); V_x uses the current W H."""
    num, den = _weights(power, scaled_speech_var + nmf.variance()[:, None], mask)
    Ht = nmf.H.transpose(1, 2)
    ratio = torch.matmul(num.transpose(1, 2), Ht) / torch.matmul(den.transpose(1, 2), Ht)
    return NMFNoise(nmf.W * ratio.sqrt(), nmf.H)


def update_H(nmf: NMFNoise, power: torch.Tensor, scaled_speech_var: torch.Tensor, mask: torch.Tensor) -> NMFNoise:
    """Eq. (42): H <- H sqrt([W^T (|X|^2 V_x^-2)] / [W^T V_x^-1]); padded frames keep their H."""
    num, den = _weights(power, scaled_speech_var + nmf.variance()[:, None], mask)
    Wt = nmf.W.transpose(1, 2)
    ratio = torch.matmul(Wt, num.transpose(1, 2)) / torch.matmul(Wt, den.transpose(1, 2))
    return NMFNoise(nmf.W, nmf.H * torch.where(mask[:, None, :], ratio, 1.0).sqrt())


def normalize_columns(nmf: NMFNoise) -> NMFNoise:
    """Divide each column of W by its L1 norm and scale the matching row of H up: W H is unchanged."""
    norms = nmf.W.abs().sum(1)  # (B, K)
    return NMFNoise(nmf.W / norms[:, None, :], nmf.H * norms[:, :, None])


def update_gain(
    gain: torch.Tensor, power: torch.Tensor, speech_var: torch.Tensor, noise_var: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. (44): g_t <- g_t sqrt(sum_f |X|^2 v_s V_x^-2 / sum_f v_s V_x^-1), with the unscaled v_s."""
    inv = mixture_variance(speech_var, gain, noise_var).reciprocal_()
    weighted = speech_var * inv
    den = weighted.sum((1, 3))
    num = weighted.mul_(inv).mul_(power[:, None]).sum((1, 3))
    return gain * torch.where(mask, num / den, 1.0).sqrt()


def m_step(
    nmf: NMFNoise, gain: torch.Tensor, power: torch.Tensor, speech_var: torch.Tensor, mask: torch.Tensor
) -> tuple[NMFNoise, torch.Tensor]:
    """One M-step from speech variance samples v_s (B, R, T, F): W, H, normalisation, then g."""
    scaled = gain[:, None, :, None] * speech_var
    nmf = update_W(nmf, power, scaled, mask)
    nmf = normalize_columns(update_H(nmf, power, scaled, mask))
    return nmf, update_gain(gain, power, speech_var, nmf.variance(), mask)


def mixture_loss(
    power: torch.Tensor, speech_var: torch.Tensor, gain: torch.Tensor, noise_var: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-utterance mean over samples, frames and bins of log V_x + |X|^2 / V_x (the official
    reported loss); padded frames are left out. Returns (B,)."""
    vx = mixture_variance(speech_var, gain, noise_var)
    ratio = power[:, None] / vx
    terms = torch.where(mask, vx.log_().add_(ratio).sum((1, 3)), 0.0)
    count = mask.sum(1) * speech_var.shape[1] * speech_var.shape[-1]
    return terms.sum(1) / count
