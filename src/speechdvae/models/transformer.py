"""HiT-DVAE and LigHT-DVAE: hierarchical Transformer DVAEs (Lin et al., "Speech modeling with a
hierarchical Transformer dynamical VAE", sections 2-3), with the paper's Inv-s and Inv-s-NR ablations.

Generative model (eq. 1): w ~ N(0, I); z_t ~ p(z_t | s_{1:t-1}, z_{1:t-1}, w) from the z-prior
decoder; s_t ~ N_c(0, diag(v_t)) with log v_t from the speech decoder given s_{1:t-1}, z_{1:t}, w.
Inference (eq. 4): q(w | s_{1:T}) from the last state of an LSTM over s, q(z_t | s_{1:T}, w) from a
Transformer encoder over [s_t; w].

Both decoders are post-norm, single-head Transformer decoders. Their queries come from [z; w] and
their keys/values from the past frames (`query_source="z"`, the paper's design), or the reverse
(`query_source="s"`, Inv-s). Every decoder mask is the same causal mask (position t sees 1..t):
the past frames (network inputs) are shifted right behind a zero frame, and so is z for the prior decoder, so
the prior sees s_{1:t-1}, z_{1:t-1} and the speech decoder s_{1:t-1}, z_{1:t}. LigHT
(`share_decoders=True`) runs one decoder stack twice with separate output heads; HiT has two stacks.
`decoder_residual=False` removes every residual connection of the speech decoder (Inv-s-NR).

Networks read log(s + log_eps) of the power spectrogram when `log_input` is set. With `feedback` > 0,
`decode` runs frame by frame with cached keys/values, so T frames cost T decoder steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import DVAE, Decoded, Posterior, reparameterize
from .layers import GaussianHead, LogVarianceHead, previous, randn_like_params, stack_steps

# past_source(t, y_prev) -> the power frame (B, F) used as s_{t-1} at step t >= 1, given the
# model's own log-variance output y_prev = y_{t-1} (B, F).
PastSource = Callable[[int, torch.Tensor], torch.Tensor]
# next_latent(t, prior_mean, prior_logvar) -> z_t (B, Lz) at step t.
LatentSource = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def sinusoidal_positions(start: int, length: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """The original Transformer's positional encoding of positions start .. start+length-1, (length, dim):
    sin(p / 10000^(2i/dim)) at index 2i and cos of the same angle at 2i + 1."""
    position = torch.arange(start, start + length, dtype=like.dtype, device=like.device)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=like.dtype, device=like.device) * (-math.log(1e4) / dim))
    angles = position * frequency
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[:, :dim]


def with_sequence_latent(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """cat([x_t, w]) at every frame: (B, T, D) and (B, Lw) -> (B, T, D + Lw)."""
    return torch.cat([x, w[:, None].expand(-1, x.shape[1], -1)], dim=-1)


def own_output(t: int, y_prev: torch.Tensor) -> torch.Tensor:
    """Generation: the past frame is the model's own previous variance exp(y_{t-1}), detached."""
    return y_prev.detach().exp()


def mixed_past(s: torch.Tensor, feedback: float) -> PastSource:
    """Scheduled sampling: per step and sequence, the own previous output with probability
    `feedback`, else the true s_{t-1}."""
    fed_back = torch.rand(s.shape[0], s.shape[1], 1, device=s.device) < feedback

    def past(t: int, y_prev: torch.Tensor) -> torch.Tensor:
        return torch.where(fed_back[:, t - 1], own_output(t, y_prev), s[:, t - 1])

    return past


class KeyValueCache:
    """Keys and values (concatenated on the feature axis) of the positions seen so far, grown by
    one frame per decoding step."""

    def __init__(self) -> None:
        self.keys_values: torch.Tensor | None = None

    def extend(self, keys_values: torch.Tensor) -> torch.Tensor:
        if self.keys_values is not None:
            keys_values = torch.cat([self.keys_values, keys_values], dim=1)
        self.keys_values = keys_values
        return keys_values


# One layer's caches: (self-attention, cross-attention).
LayerCache = tuple[KeyValueCache, KeyValueCache]


class Attention(nn.Module):
    """Single-head scaled dot-product attention with learned query, key/value and output maps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keys_values: torch.Tensor, causal: bool) -> torch.Tensor:
        """Attend from x (B, T, D) to the positions of `keys_values` (B, S, 2D), from `key_value`."""
        keys, values = keys_values.chunk(2, dim=-1)
        return self.out(F.scaled_dot_product_attention(self.query(x), keys, values, is_causal=causal))


def add_norm(norm: nn.LayerNorm, x: torch.Tensor, sublayer_out: torch.Tensor, residual: bool) -> torch.Tensor:
    """LayerNorm(x + sublayer(x)), or LayerNorm(sublayer(x)) without the residual connection."""
    return norm(x + sublayer_out if residual else sublayer_out)


class TransformerLayer(nn.Module):
    """Post-norm layer of the original Transformer: self-attention, then (decoder layers) attention
    over a memory sequence, then a ReLU feed-forward, each followed by add & norm. Decoder layers
    are causal; encoder layers (`cross=False`) attend to every position."""

    def __init__(self, dim: int, ff_dim: int, cross: bool) -> None:
        super().__init__()
        self.self_attn, self.self_norm = Attention(dim), nn.LayerNorm(dim)
        self.cross_attn = Attention(dim) if cross else None
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.ff_norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        residual: bool = True,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """All positions at once (no cache), or only the newest position (B, 1, D) of x and memory
        when `cache` holds the keys/values of the earlier ones (and is extended with it)."""
        caches = cache if cache is not None else (None, None)
        x = self._attend(self.self_attn, self.self_norm, x, x, caches[0], residual)
        if self.cross_attn is not None:
            x = self._attend(self.cross_attn, self.cross_norm, x, memory, caches[1], residual)
        return add_norm(self.ff_norm, x, self.ff(x), residual)

    def _attend(
        self,
        attention: Attention,
        norm: nn.LayerNorm,
        x: torch.Tensor,
        source: torch.Tensor,
        cache: KeyValueCache | None,
        residual: bool,
    ) -> torch.Tensor:
        keys_values = attention.key_value(source)
        if cache is not None:
            keys_values = cache.extend(keys_values)
        causal = self.cross_attn is not None and cache is None
        return add_norm(norm, x, attention(x, keys_values, causal), residual)


class TransformerStack(nn.Module):
    """Linear input embedding + sinusoidal positions + layers. Without `memory_dim` an encoder; with
    it a decoder whose keys/values in the second attention come from the embedded memory sequence."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, ff_dim: int, memory_dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.memory_embed = nn.Linear(memory_dim, dim) if memory_dim is not None else None
        self.layers = nn.ModuleList(
            TransformerLayer(dim, ff_dim, cross=memory_dim is not None) for _ in range(num_layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        residual: bool = True,
        caches: list[LayerCache] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, dim); with `caches`, x and memory hold the frames from `start` on."""
        x = self._embed(self.embed, x, start)
        if self.memory_embed is not None:
            memory = self._embed(self.memory_embed, memory, start)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, residual, None if caches is None else caches[i])
        return x

    def new_caches(self) -> list[LayerCache]:
        """Empty per-layer key/value caches for frame-by-frame decoding."""
        return [(KeyValueCache(), KeyValueCache()) for _ in self.layers]

    @staticmethod
    def _embed(linear: nn.Linear, x: torch.Tensor, start: int) -> torch.Tensor:
        h = linear(x)
        return h + sinusoidal_positions(start, h.shape[1], h.shape[2], h)


class TransformerDVAE(DVAE):
    """HiT-DVAE (`share_decoders=False`) or LigHT-DVAE (`share_decoders=True`), with the Inv-s
    (`query_source="s"`) and NR (`decoder_residual=False`) ablation switches."""

    name = "transformer"
    autoregressive = True
    hierarchical = True

    def __init__(
        self,
        x_dim: int = 513,
        z_dim: int = 16,
        w_dim: int = 32,
        d_model: int = 256,
        num_layers: int = 4,
        dim_feedforward: int = 1024,
        dim_rnn_w: int = 1308,
        num_rnn_w: int = 1,
        share_decoders: bool = False,
        query_source: str = "z",
        decoder_residual: bool = True,
        log_input: bool = True,
        log_eps: float = 1e-8,
    ) -> None:
        super().__init__(x_dim, z_dim)
        if query_source not in ("z", "s"):
            raise ValueError(f"query_source must be 'z' (queries from [z; w]) or 's' (Inv-s), got {query_source!r}")
        self.w_dim = w_dim
        self.query_source = query_source
        self.decoder_residual = decoder_residual
        self.log_input = log_input
        self.log_eps = log_eps
        self.w_rnn = nn.LSTM(x_dim, dim_rnn_w, num_rnn_w, batch_first=True)
        self.w_head = GaussianHead(dim_rnn_w, [], w_dim)
        self.z_encoder = TransformerStack(x_dim + w_dim, d_model, num_layers, dim_feedforward)
        self.z_head = GaussianHead(d_model, [], z_dim)
        query_dim, memory_dim = (z_dim + w_dim, x_dim) if query_source == "z" else (x_dim, z_dim + w_dim)
        self.decoders = nn.ModuleList(
            TransformerStack(query_dim, d_model, num_layers, dim_feedforward, memory_dim)
            for _ in range(1 if share_decoders else 2)
        )
        self.prior_head = GaussianHead(d_model, [], z_dim)
        self.speech_head = LogVarianceHead(d_model, [], x_dim)

    @property
    def prior_decoder(self) -> TransformerStack:
        return self.decoders[0]

    @property
    def speech_decoder(self) -> TransformerStack:
        """The same stack as `prior_decoder` in LigHT."""
        return self.decoders[-1]

    def network_input(self, s: torch.Tensor) -> torch.Tensor:
        """What the networks read from power frames: log(s + log_eps), or s itself."""
        return torch.log(s + self.log_eps) if self.log_input else s

    # -- inference -------------------------------------------------------------------------
    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        x = self.network_input(s)
        last_state = self.w_rnn(x)[1][0][-1]
        w_mean, w_logvar = self.w_head(last_state)
        w = reparameterize(w_mean, w_logvar, sample)
        z_mean, z_logvar = self.z_head(self.z_encoder(with_sequence_latent(x, w)))
        return Posterior(reparameterize(z_mean, z_logvar, sample), z_mean, z_logvar, w, w_mean, w_logvar)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.w_rnn, self.w_head, self.z_encoder, self.z_head]

    # -- generation ------------------------------------------------------------------------
    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        if not 0.0 <= feedback <= 1.0:
            raise ValueError(f"feedback must be a probability in [0, 1], got {feedback}")
        if s is None and feedback < 1.0:
            raise ValueError("TransformerDVAE.decode needs the true past s unless feedback = 1")
        if feedback == 0.0:
            return self._decode_parallel(post.z, post.w, previous(self.network_input(s)))
        return self.decode_steps(post.z, post.w, own_output if feedback == 1.0 else mixed_past(s, feedback))

    def decode_steps(self, z: torch.Tensor, w: torch.Tensor, past_source: PastSource) -> Decoded:
        """Frame-by-frame decoding with cached keys/values. At step t >= 1 the past frame s_{t-1} is
        `past_source(t, y_{t-1})` (a power frame); at t = 0 the network input is the zero start frame."""
        y, prior_mean, prior_logvar = self._run_steps(w, z.shape[1], past_source, lambda t, mean, logvar: z[:, t])
        return Decoded(y, prior_mean, prior_logvar)

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        """Ancestral sampling: w ~ N(0, I), then z_t from the prior decoder and the variance v_t,
        fed back as the next past frame."""
        w = randn_like_params(self, batch, self.w_dim)
        y = self._run_steps(w, frames, own_output, lambda t, mean, logvar: reparameterize(mean, logvar, True))[0]
        return y.exp()

    def _decoder_inputs(
        self, z: torch.Tensor, w: torch.Tensor, past: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries, memory) of a decoder for latent frames z and network-input past frames."""
        zw = with_sequence_latent(z, w)
        return (zw, past) if self.query_source == "z" else (past, zw)

    def _decode_parallel(self, z: torch.Tensor, w: torch.Tensor, past: torch.Tensor) -> Decoded:
        """All frames at once given the (shifted) past network inputs: the teacher-forced pass."""
        prior = self.prior_decoder(*self._decoder_inputs(previous(z), w, past))
        speech = self.speech_decoder(*self._decoder_inputs(z, w, past), residual=self.decoder_residual)
        return Decoded(self.speech_head(speech), *self.prior_head(prior))

    def _run_steps(
        self, w: torch.Tensor, frames: int, past_source: PastSource, next_latent: LatentSource
    ) -> tuple[torch.Tensor, ...]:
        """y, prior mean and prior log-variance (B, frames, .) decoded one frame at a time."""
        prior_caches, speech_caches = self.prior_decoder.new_caches(), self.speech_decoder.new_caches()
        past = w.new_zeros(w.shape[0], 1, self.x_dim)
        z_prev = w.new_zeros(w.shape[0], 1, self.z_dim)
        steps = []
        for t in range(frames):
            if t:
                past = self.network_input(past_source(t, y))[:, None]  # noqa: F821 (y: the previous frame's output)
            prior = self.prior_decoder(*self._decoder_inputs(z_prev, w, past), caches=prior_caches, start=t)
            mean, logvar = (p[:, 0] for p in self.prior_head(prior))
            z_prev = next_latent(t, mean, logvar)[:, None]
            speech = self.speech_decoder(
                *self._decoder_inputs(z_prev, w, past), residual=self.decoder_residual, caches=speech_caches, start=t
            )
            y = self.speech_head(speech)[:, 0]
            steps.append((y, mean, logvar))
        return stack_steps(steps)
