"""The ELBO, in one place: Itakura-Saito reconstruction + beta-weighted KL terms, and the prior log-density of
latent values.

Used by training (clean speech: v = v_s), by the VEM E-step (noisy speech: v = g v_s + W H) and, for the
log-density, by posterior sampling. Sums are over every bin; callers choose the normalisation.
"""

from __future__ import annotations

import torch

from .base import Decoded, Posterior

# The papers' code adds 1e-10 to the speech variance in the IS divergence and to the prior
# variance in the KL denominator.
EPS = 1e-10


def itakura_saito(x: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise d_IS(x, v) = x/v - log(x/v) - 1 with v = exp(logvar) + EPS; zero power x is safe.

    Written as x/v + log v - log x - 1, which saves a division and a clamp on the hot path of
    training; EPS is the papers' code's floor on the variance.
    """
    v = logvar.float().exp() + EPS  # float32 even when the decoder ran under bf16 autocast
    return x / v + torch.log(v) - torch.log(x.clamp_min(1e-30)) - 1.0


def gaussian_kl(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """Element-wise KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), in float32."""
    mean_q, logvar_q, mean_p, logvar_p = (t.float() for t in (mean_q, logvar_q, mean_p, logvar_p))
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).square()) / (logvar_p.exp() + EPS) - 1.0)


def kl_terms(post: Posterior, dec: Decoded) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL of the frame latents z, and of the sequence latent w (0 if absent)."""
    kl_z = gaussian_kl(post.z_mean, post.z_logvar, dec.prior_mean, dec.prior_logvar).sum()
    if post.w_mean is None:
        return kl_z, kl_z.new_zeros(())
    kl_w = gaussian_kl(post.w_mean, post.w_logvar, torch.zeros_like(post.w_mean), torch.zeros_like(post.w_logvar)).sum()
    return kl_z, kl_w


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, exp(logvar)) without the constant -log(2 pi) / 2, in float32, with the variance
    floored as in `gaussian_kl`."""
    x, mean, logvar = (t.float() for t in (x, mean, logvar))
    return -0.5 * (logvar + (x - mean).square() / (logvar.exp() + EPS))


def log_prior(post: Posterior, dec: Decoded) -> torch.Tensor:
    """log p(z) + log p(w), summed, without constants, of the latent values `post.z` (and `post.w`): z under the
    prior p(z_t | ...) that `dec` gives with them (the densities `kl_terms` compares q with), w under N(0, I)."""
    log_p = gaussian_log_density(post.z, dec.prior_mean, dec.prior_logvar).sum()
    if post.w is None:
        return log_p
    return log_p + gaussian_log_density(post.w, torch.zeros_like(post.w), torch.zeros_like(post.w)).sum()


def elbo_loss(
    s: torch.Tensor, post: Posterior, dec: Decoded, beta_z: float = 1.0, beta_w: float = 1.0, kl_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """Negative ELBO on clean speech power `s`, normalised per frame (B * T).

    `kl_weight` is the KL warm-up factor, multiplying both beta-weighted KL terms.
    """
    frames = s.shape[0] * s.shape[1]
    recon = itakura_saito(s, dec.y_logvar).sum()
    kl_z, kl_w = kl_terms(post, dec)
    loss = (recon + kl_weight * (beta_z * kl_z + beta_w * kl_w)) / frames
    return {"loss": loss, "recon": recon / frames, "kl_z": kl_z / frames, "kl_w": kl_w / frames}
