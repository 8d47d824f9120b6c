"""RVAE: recurrent VAE with an i.i.d. N(0, I) prior (SE paper eqs. 14-17, Leglaive et al. 2020).

Non-causal (both flags True): q(z_t | z_{1:t-1}, s_{1:T}) from a bi-LSTM over s, and
p(s_t | z_{1:T}) from a bi-LSTM over z. Causal (both flags False): the encoder's s-LSTM runs
backward in time, q(z_t | z_{1:t-1}, s_{t:T}) (eq. 16), and the decoder LSTM runs forward,
p(s_t | z_{1:t}) (eq. 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import DVAE, Decoded, Posterior, reparameterize
from .layers import MLP, GaussianHead, HeadSteps, LogVarianceHead, LSTMSteps, randn_like_params, run_lstm, stack_steps


class RVAE(DVAE):
    """Recurrent VAE; `bidir_g_x` / `bidir_h` select the non-causal encoder / decoder."""

    name = "rvae"

    def __init__(
        self,
        x_dim: int = 513,
        z_dim: int = 16,
        dense_x_gx: Sequence[int] = (),
        dim_rnn_g_x: int = 128,
        bidir_g_x: bool = True,
        dense_z_gz: Sequence[int] = (),
        dim_rnn_g_z: int = 128,
        dense_g_z: Sequence[int] = (),
        dense_z_h: Sequence[int] = (),
        dim_rnn_h: int = 128,
        bidir_h: bool = True,
        dense_h_x: Sequence[int] = (),
        log_input: bool = False,
    ) -> None:
        super().__init__(x_dim, z_dim, log_input)
        self.x_mlp = MLP(x_dim, dense_x_gx)
        self.x_rnn = nn.LSTM(self.x_mlp.out_dim, dim_rnn_g_x, batch_first=True, bidirectional=bidir_g_x)
        self.zprev_mlp = MLP(z_dim, dense_z_gz)
        self.zprev_rnn = nn.LSTM(self.zprev_mlp.out_dim, dim_rnn_g_z, batch_first=True)
        g_x_dim = dim_rnn_g_x * (2 if bidir_g_x else 1)
        self.posterior = GaussianHead(g_x_dim + dim_rnn_g_z, dense_g_z, z_dim)
        self.z_mlp = MLP(z_dim, dense_z_h)
        self.z_rnn = nn.LSTM(self.z_mlp.out_dim, dim_rnn_h, batch_first=True, bidirectional=bidir_h)
        self.decoder = LogVarianceHead(dim_rnn_h * (2 if bidir_h else 1), dense_h_x, x_dim)

    def speech_features(self, s: torch.Tensor) -> torch.Tensor:
        """g_x[t] = [summary of s_{t:T}, summary of s_{1:t}]; the second half only when non-causal.

        The bi-LSTM returns [forward, backward]; rolling by one hidden size puts the backward
        half first, the layout the posterior's input weights expect."""
        a = self.x_mlp(self.features(s))
        if self.x_rnn.bidirectional:
            return self.x_rnn(a)[0].roll(self.x_rnn.hidden_size, dims=-1)
        return run_lstm(self.x_rnn, a, backward=True)

    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        g_x = self.speech_features(s)
        head = HeadSteps(self.posterior, g_x)
        rnn = LSTMSteps(self.zprev_rnn, s.shape[0])
        z_prev = s.new_zeros(s.shape[0], self.z_dim)
        steps = []
        for t in range(s.shape[1]):
            g_z = rnn.step(rnn.project(self.zprev_mlp(z_prev)))
            mean, logvar = head(t, g_z)
            z_prev = reparameterize(mean, logvar, sample)
            steps.append((z_prev, mean, logvar))
        return Posterior(*stack_steps(steps), cache={"g_x": g_x})

    def speech_logvar(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder log-variance y from the latent sequence (from z_{1:t} only when causal)."""
        return self.decoder(self.z_rnn(self.z_mlp(z))[0])

    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        return Decoded(self.speech_logvar(post.z), *self.standard_prior(post.z))

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        return self.speech_logvar(randn_like_params(self, batch, frames, self.z_dim)).exp()

    def encoder_modules(self) -> list[nn.Module]:
        return [self.x_mlp, self.x_rnn, self.zprev_mlp, self.zprev_rnn, self.posterior]
