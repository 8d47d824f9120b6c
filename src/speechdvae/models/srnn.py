"""SRNN: stochastic recurrent network, an autoregressive DVAE (SE paper eqs. 18-19, Fraccaro et al. 2016).

A forward LSTM h_t summarises the past powers s_{1:t-1}; generation is p(z_t | h_t, z_{t-1}) and
p(s_t | h_t, z_t); inference q(z_t | z_{t-1}, s_{1:T}) runs a backward LSTM over [h_t, s_t].

`feedback` (decode) is the probability, per step and per sequence, that the past frame fed to
the h-LSTM is the model's own previous variance exp(y_{t-1}) rather than the true s_{t-1}:
0 = teacher forcing, 1 = generation (SE paper eq. 31), in between = scheduled sampling. The prior
uses the same h as the decoder; inference always uses h computed from the true s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import DVAE, Decoded, Posterior, reparameterize
from .layers import (
    MLP,
    GaussianHead,
    HeadSteps,
    LogVarianceHead,
    LSTMSteps,
    previous,
    run_lstm,
    stack_steps,
    zeros_like_params,
)


class SRNN(DVAE):
    """Stochastic RNN with teacher-forced, generative and scheduled-sampling decoding."""

    name = "srnn"
    autoregressive = True

    def __init__(
        self,
        x_dim: int = 513,
        z_dim: int = 16,
        dense_x_h: Sequence[int] = (256,),
        dim_rnn_h: int = 128,
        dense_hx_g: Sequence[int] = (256,),
        dim_rnn_g: int = 128,
        dense_gz_z: Sequence[int] = (64, 32),
        dense_hz_x: Sequence[int] = (256,),
        dense_hz_z: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__(x_dim, z_dim)
        self.past_mlp = MLP(x_dim, dense_x_h)
        self.past_rnn = nn.LSTM(self.past_mlp.out_dim, dim_rnn_h, batch_first=True)
        self.enc_mlp = MLP(dim_rnn_h + x_dim, dense_hx_g)
        self.enc_rnn = nn.LSTM(self.enc_mlp.out_dim, dim_rnn_g, batch_first=True)
        self.posterior = GaussianHead(dim_rnn_g + z_dim, dense_gz_z, z_dim)
        self.prior = GaussianHead(dim_rnn_h + z_dim, dense_hz_z, z_dim)
        self.decoder = LogVarianceHead(dim_rnn_h + z_dim, dense_hz_x, x_dim)

    def past_state(self, s: torch.Tensor) -> torch.Tensor:
        """Teacher-forced h_t, summarising the true s_{1:t-1}, for all t at once."""
        return self.past_rnn(self.past_mlp(previous(s)))[0]

    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        h = self.past_state(s)
        g = run_lstm(self.enc_rnn, self.enc_mlp(torch.cat([h, s], dim=-1)), backward=True)
        head = HeadSteps(self.posterior, g)
        z_prev = s.new_zeros(s.shape[0], self.z_dim)
        steps = []
        for t in range(s.shape[1]):
            mean, logvar = head(t, z_prev)
            z_prev = reparameterize(mean, logvar, sample)
            steps.append((z_prev, mean, logvar))
        return Posterior(*stack_steps(steps), cache={"s": s, "h": h, "g": g})

    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        if not 0.0 <= feedback <= 1.0:
            raise ValueError(f"feedback must be a probability in [0, 1], got {feedback}")
        if s is None and feedback < 1.0:
            raise ValueError("SRNN.decode needs the true past s unless feedback = 1")
        if feedback == 0.0:
            h = post.cache["h"] if post.cache.get("s") is s else self.past_state(s)
            y = self.decoder(torch.cat([h, post.z], dim=-1))
        else:
            h, y = self._decode_recursively(post.z, s, feedback)
        prior_mean, prior_logvar = self.prior(torch.cat([h, previous(post.z)], dim=-1))
        return Decoded(y, prior_mean, prior_logvar)

    def _decode_recursively(
        self, z: torch.Tensor, s: torch.Tensor | None, feedback: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h and y when some past frames are the model's own predictions exp(y_{t-1})."""
        batch, frames = z.shape[:2]
        rnn = LSTMSteps(self.past_rnn, batch)
        decoder = HeadSteps(self.decoder, z, known_first=False)
        if feedback < 1.0:
            true_gates = rnn.project(self.past_mlp(previous(s))).unbind(1)
            fed_back = (torch.rand(batch, frames, 1, device=z.device) < feedback).unbind(1)
        x_prev = z.new_zeros(batch, self.x_dim)
        steps = []
        for t in range(frames):
            gates = rnn.project(self.past_mlp(x_prev))
            if feedback < 1.0:
                gates = torch.where(fed_back[t], gates, true_gates[t])
            h = rnn.step(gates)
            y = decoder(t, h)
            x_prev = y.detach().exp()
            steps.append((h, y))
        return stack_steps(steps)

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        rnn = LSTMSteps(self.past_rnn, batch)
        x_prev = zeros_like_params(self, batch, self.x_dim)
        z_prev = zeros_like_params(self, batch, self.z_dim)
        variances = []
        for _ in range(frames):
            h = rnn.step(rnn.project(self.past_mlp(x_prev)))
            z_prev = reparameterize(*self.prior(torch.cat([h, z_prev], dim=-1)), sample=True)
            x_prev = self.decoder(torch.cat([h, z_prev], dim=-1)).exp()
            variances.append(x_prev)
        return torch.stack(variances, dim=1)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.enc_mlp, self.enc_rnn, self.posterior]
