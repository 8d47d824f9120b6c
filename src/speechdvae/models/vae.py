"""VAE: frame-wise encoder and decoder with an i.i.d. standard normal prior (the static baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import DVAE, Decoded, Posterior, reparameterize
from .layers import GaussianHead, LogVarianceHead, randn_like_params


class VAE(DVAE):
    """q(z_t | s_t) and p(s_t | z_t) with p(z_t) = N(0, I); every frame is independent."""

    name = "vae"

    def __init__(
        self,
        x_dim: int = 513,
        z_dim: int = 16,
        dense_x_z: Sequence[int] = (128,),
        dense_z_x: Sequence[int] | None = None,
        log_input: bool = False,
    ) -> None:
        super().__init__(x_dim, z_dim, log_input)
        dense_x_z = list(dense_x_z)
        dense_z_x = dense_x_z[::-1] if dense_z_x is None else list(dense_z_x)
        self.posterior = GaussianHead(x_dim, dense_x_z, z_dim)
        self.decoder = LogVarianceHead(z_dim, dense_z_x, x_dim)

    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        mean, logvar = self.posterior(self.features(s))
        return Posterior(reparameterize(mean, logvar, sample), mean, logvar)

    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        return Decoded(self.decoder(post.z), *self.standard_prior(post.z))

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        return self.decoder(randn_like_params(self, batch, frames, self.z_dim)).exp()

    def encoder_modules(self) -> list[nn.Module]:
        return [self.posterior]
