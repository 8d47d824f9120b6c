"""Building blocks shared by the RNN-based DVAEs.

tanh MLPs, Gaussian and log-variance output heads, an LSTM that can be stepped one frame at a
time, and time-shift / time-reversal helpers. Tensors are batch-first (B, T, F). Recursive loops
use `HeadSteps` and `LSTMSteps` so that everything not depending on the recursion is computed for
the whole sequence in one matrix product, leaving only the recursive part inside the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear layers, each followed by tanh; an empty list of sizes is the identity."""

    def __init__(self, in_dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        dims = [in_dim, *sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Apply the layers from index `start` on (used to finish a split first layer)."""
        for layer in islice(self.layers, start, None):
            x = torch.tanh(layer(x))
        return x


class _Head(nn.Module):
    """A tanh MLP followed by an affine output. Its first affine map (the MLP's first layer, or
    the output itself when the MLP is empty) can be split off, see `HeadSteps`."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden)

    def output(self, h: torch.Tensor):
        raise NotImplementedError

    def output_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the output layer(s), stacked into one affine map."""
        raise NotImplementedError

    def split_output(self, a: torch.Tensor):
        """Turn the result of `output_affine` into what `output` returns."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        return self.output(self.mlp(x))

    def first_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.mlp.layers):
            first = self.mlp.layers[0]
            return first.weight, first.bias
        return self.output_affine()

    def after_first_affine(self, a: torch.Tensor):
        """The rest of the network, given the result `a` of its first affine map."""
        if len(self.mlp.layers):
            return self.output(self.mlp(torch.tanh(a), start=1))
        return self.split_output(a)


class GaussianHead(_Head):
    """Mean and log-variance of a diagonal Gaussian over z_t, after an optional tanh MLP."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__(in_dim, hidden)
        self.mean = nn.Linear(self.mlp.out_dim, out_dim)
        self.logvar = nn.Linear(self.mlp.out_dim, out_dim)

    def output(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.logvar(h)

    def output_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.mean.weight, self.logvar.weight]), torch.cat([self.mean.bias, self.logvar.bias]))

    def split_output(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = a.chunk(2, dim=-1)
        return mean, logvar


class LogVarianceHead(_Head):
    """The decoder output: speech log-variance y_t after an optional tanh MLP."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__(in_dim, hidden)
        self.logvar = nn.Linear(self.mlp.out_dim, out_dim)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.logvar(h)

    def output_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logvar.weight, self.logvar.bias

    def split_output(self, a: torch.Tensor) -> torch.Tensor:
        return a


class HeadSteps:
    """Applies a head at each step to cat([known_t, new_t]) (or cat([new_t, known_t])), where
    `known` (B, T, k) is available for all frames: its share of the first affine map is computed
    once, so a step costs one (B, n) x (n, out) product plus the rest of the head."""

    def __init__(self, head: _Head, known: torch.Tensor, known_first: bool = True) -> None:
        weight, bias = head.first_affine()
        k = known.shape[-1]
        w_known, w_new = (weight[:, :k], weight[:, k:]) if known_first else (weight[:, -k:], weight[:, :-k])
        self.head = head
        self.known_part = F.linear(known, w_known, bias).unbind(1)
        self.w_new_t = w_new.t()

    def __call__(self, t: int, new: torch.Tensor):
        return self.head.after_first_affine(torch.addmm(self.known_part[t], new, self.w_new_t))


class LSTMSteps:
    """A one-layer unidirectional `nn.LSTM` run one frame at a time from a zero state.

    `project` applies the input weights (W_ih x + b_ih + b_hh) to one frame or to a whole
    sequence at once; `step` advances the state given a projected frame (gate order i, f, g, o).
    """

    def __init__(self, lstm: nn.LSTM, batch: int) -> None:
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias:
            raise ValueError("LSTMSteps needs a one-layer unidirectional LSTM with biases")
        self.w_ih = lstm.weight_ih_l0
        self.bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        self.w_hh_t = lstm.weight_hh_l0.t()
        self.h = self.w_hh_t.new_zeros(batch, lstm.hidden_size)
        self.c = self.w_hh_t.new_zeros(batch, lstm.hidden_size)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w_ih, self.bias)

    def step(self, projected: torch.Tensor) -> torch.Tensor:
        gates = torch.addmm(projected, self.h, self.w_hh_t)
        i, f, g, o = gates.chunk(4, dim=-1)
        self.c = torch.sigmoid(f) * self.c + torch.sigmoid(i) * torch.tanh(g)
        self.h = torch.sigmoid(o) * torch.tanh(self.c)
        return self.h


def previous(x: torch.Tensor) -> torch.Tensor:
    """The past frame x_{t-1} at every t, with a zero frame at t = 0: (B, T, D) -> (B, T, D)."""
    return F.pad(x, (0, 0, 1, 0))[:, :-1]


def reverse_time(x: torch.Tensor) -> torch.Tensor:
    """Flip a batch-first sequence along time."""
    return x.flip(1)


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """Output of a batch-first LSTM from a zero state over the whole sequence; with backward=True
    a unidirectional LSTM reads the sequence from the last frame to the first, so that its
    output at t summarises x_{t:T}."""
    if backward:
        return reverse_time(lstm(reverse_time(x))[0])
    return lstm(x)[0]


def stack_steps(steps: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Per-step tuples of (B, D) outputs -> a tuple of (B, T, D) sequences."""
    return tuple(torch.stack(frames, dim=1) for frames in zip(*steps))


def randn_like_params(module: nn.Module, *shape: int) -> torch.Tensor:
    """Standard normal draws on the device and in the dtype of the module's parameters."""
    p = next(module.parameters())
    return torch.randn(*shape, device=p.device, dtype=p.dtype)


def zeros_like_params(module: nn.Module, *shape: int) -> torch.Tensor:
    """Zeros on the device and in the dtype of the module's parameters."""
    p = next(module.parameters())
    return p.new_zeros(shape)
