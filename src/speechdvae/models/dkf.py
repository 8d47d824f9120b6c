"""DKF: deep Kalman filter/smoother (SE paper eqs. 12-13, Krishnan et al. 2017).

Generation: z_t ~ p(z_t | z_{t-1}) through a gated transition, s_t ~ p(s_t | z_t).
Inference: q(z_t | z_{t-1}, s_{t:T}) from a backward LSTM over s and a combiner with z_{t-1}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import DVAE, Decoded, Posterior, reparameterize
from .layers import MLP, GaussianHead, LogVarianceHead, previous, run_lstm, stack_steps, zeros_like_params


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}): a gate mixes a linear and a non-linear proposal for the mean; the
    variance is Softplus of a linear map of the rectified proposal."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.gate_hidden = nn.Linear(z_dim, z_dim)
        self.gate_out = nn.Linear(z_dim, z_dim)
        self.proposal_hidden = nn.Linear(z_dim, z_dim)
        self.proposal_out = nn.Linear(z_dim, z_dim)
        self.linear_mean = nn.Linear(z_dim, z_dim)
        self.variance = nn.Linear(z_dim, z_dim)

    def forward(self, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(z_prev))))
        proposal = self.proposal_out(F.relu(self.proposal_hidden(z_prev)))
        mean = (1 - gate) * self.linear_mean(z_prev) + gate * proposal
        logvar = F.softplus(self.variance(F.relu(proposal))).log()
        return mean, logvar


class DKF(DVAE):
    """Deep Kalman smoother: backward-LSTM inference, gated transition prior, frame-wise decoder."""

    name = "dkf"

    def __init__(
        self,
        x_dim: int = 513,
        z_dim: int = 16,
        dense_x_gx: Sequence[int] = (256,),
        dim_rnn_gx: int = 128,
        dense_ztm1_g: Sequence[int] = (32,),
        dense_g_z: Sequence[int] = (32,),
        dense_z_x: Sequence[int] = (32, 64, 128, 256),
        log_input: bool = False,
    ) -> None:
        super().__init__(x_dim, z_dim, log_input)
        self.x_mlp = MLP(x_dim, dense_x_gx)
        self.x_rnn = nn.LSTM(self.x_mlp.out_dim, dim_rnn_gx, batch_first=True)
        self.combiner_mlp = MLP(z_dim, [*dense_ztm1_g, dim_rnn_gx])
        self.posterior = GaussianHead(dim_rnn_gx, dense_g_z, z_dim)
        self.transition = GatedTransition(z_dim)
        self.decoder = LogVarianceHead(z_dim, dense_z_x, x_dim)

    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        g = run_lstm(self.x_rnn, self.x_mlp(self.features(s)), backward=True)
        z_prev = s.new_zeros(s.shape[0], self.z_dim)
        steps = []
        for g_t in g.unbind(1):
            mean, logvar = self.posterior((self.combiner_mlp(z_prev) + g_t) / 2)
            z_prev = reparameterize(mean, logvar, sample)
            steps.append((z_prev, mean, logvar))
        return Posterior(*stack_steps(steps), cache={"g": g})

    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        return Decoded(self.decoder(post.z), *self.transition(previous(post.z)))

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        z_prev = zeros_like_params(self, batch, self.z_dim)
        zs = []
        for _ in range(frames):
            z_prev = reparameterize(*self.transition(z_prev), sample=True)
            zs.append(z_prev)
        return self.decoder(torch.stack(zs, dim=1)).exp()

    def encoder_modules(self) -> list[nn.Module]:
        return [self.x_mlp, self.x_rnn, self.combiner_mlp, self.posterior]
