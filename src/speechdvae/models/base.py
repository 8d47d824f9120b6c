"""The DVAE interface: what training, resynthesis, generation and enhancement rely on.

Every model maps a power spectrogram s of shape (B, T, F) to
  * a posterior q(z | s) (and q(w | s) for hierarchical models)  -> `infer`
  * a decoder log-variance log v_s and a prior p(z_t | ...)       -> `decode`
so callers never branch on the model type. Autoregressive models take a `feedback`
probability: 0 feeds the true past s_{1:t-1} (teacher forcing, "GT"), 1 feeds the model's own
past outputs exp(log v_s) (generation, "GEN", eq. 31 of the SE paper), values in between give
scheduled sampling. Fed-back outputs are detached: no gradient flows through the recursion, so decoding
with feedback 1 equals decoding with feedback 0 from the generated outputs as the past (the VEM relies on
it). Tensors are batch-first everywhere.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .layers import GaussianHead

if TYPE_CHECKING:
    from ..enhancement.enhancer import Inference, LangevinEnhancer, VEMEnhancer


LOG_EPS = 1e-8


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """mean + eps * exp(logvar / 2) when sampling, else (a copy of) the mean."""
    if not sample:
        return mean.clone()
    return mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)


@dataclass
class Posterior:
    """Output of `infer`: samples (or means) and Gaussian parameters of q."""

    z: torch.Tensor  # (B, T, Lz)
    z_mean: torch.Tensor
    z_logvar: torch.Tensor
    w: torch.Tensor | None = None  # (B, Lw) for hierarchical models
    w_mean: torch.Tensor | None = None
    w_logvar: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)  # model-private intermediate results reused by decode


@dataclass
class Decoded:
    """Output of `decode`: speech log-variance and the prior over z under the same past."""

    y_logvar: torch.Tensor  # (B, T, F)
    prior_mean: torch.Tensor  # (B, T, Lz); zeros for an i.i.d. standard normal prior
    prior_logvar: torch.Tensor


class Configured(nn.Module):
    """A network whose `config` ("name" and every constructor argument, defaults included) is captured once, as
    it is built, so that a checkpoint can rebuild it; subclasses never copy their arguments by hand."""

    name: ClassVar[str] = "network"
    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _capturing_config(cls.__init__)  # type: ignore[method-assign]


def _capturing_config(init: Callable[..., None]) -> Callable[..., None]:
    """`init`, then `self.config` from its bound arguments; the most derived constructor, finishing last, wins."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: Configured, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = list(bound.arguments.items())[1:]
        self.config = {"name": self.name, **{key: _as_json(value) for key, value in arguments}}

    return wrapped


def _as_json(value: Any) -> Any:
    """Sequences as lists, as JSON stores them (a config read back from a checkpoint compares equal)."""
    return [_as_json(item) for item in value] if isinstance(value, (list, tuple)) else value


def _unique_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of `modules`, each once (modules may share some), in order."""
    return list(dict.fromkeys(p for module in modules for p in module.parameters()))


class DVAE(Configured):
    """Base class of all speech priors. Subclasses set the class attributes and implement
    `infer`, `decode`, `sample_prior` and `encoder_modules`."""

    name: ClassVar[str] = "dvae"
    input_description: ClassVar[str] = "power spectrogram |STFT|^2, shape (T, 513)"
    autoregressive: ClassVar[bool] = False
    hierarchical: ClassVar[bool] = False

    def __init__(self, x_dim: int = 513, z_dim: int = 16, log_input: bool = False) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.log_input = log_input
        # The inference chosen for this prior on validation mixtures (the "inference" entry of its checkpoint): the
        # engine ("vem" or "langevin") and the settings that differ from that engine's defaults. None: the VEM with
        # its default settings.
        self.inference: dict[str, Any] | None = None

    # -- the interface -------------------------------------------------------------------
    def infer(self, s: torch.Tensor, sample: bool = True) -> Posterior:
        """q(z | s) (and q(w | s)); with sample=False every sample is replaced by its mean."""
        raise NotImplementedError

    def decode(self, post: Posterior, s: torch.Tensor | None = None, feedback: float = 0.0) -> Decoded:
        """v_s and p(z_t | ...) given the latents of `post`; `s` is the true past for AR models."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_prior(self, batch: int, frames: int) -> torch.Tensor:
        """Ancestral sampling from the generative model: speech variances (batch, frames, F)."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The modules of the inference network, fine-tuned in the VEM E-step."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------
    def forward(self, s: torch.Tensor, sample: bool = True, feedback: float = 0.0) -> tuple[Posterior, Decoded]:
        post = self.infer(s, sample=sample)
        return post, self.decode(post, s if self.autoregressive else None, feedback=feedback)

    def features(self, s: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of a power spectrogram: s itself (the papers), or log(s + LOG_EPS).

        Log compression tames the 1e-10..1e5 range of raw powers feeding tanh layers, which
        otherwise saturate and make training slow to start.
        """
        return torch.log(s + LOG_EPS) if self.log_input else s

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of the encoder's modules, each once, in module order."""
        return _unique_parameters(self.encoder_modules())

    def encoder_head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the encoder's Gaussian heads (the layers giving the posterior's mean and log-variance,
        with their own hidden layers): what the VEM fine-tunes with `finetune="heads"`."""
        return _unique_parameters(
            [m for module in self.encoder_modules() for m in module.modules() if isinstance(m, GaussianHead)]
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def enhancer(self, inference: Inference | None = None) -> VEMEnhancer | LangevinEnhancer:
        """This prior as an enhancer with an NMF noise model, by the engine and settings `inference` gives it (exact
        settings, or an `InferenceRequest`; None: the prior's own, `self.inference`)."""
        from ..enhancement.enhancer import prior_enhancer

        return prior_enhancer(self, inference)

    def standard_prior(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of an i.i.d. N(0, I) prior shaped like z."""
        return torch.zeros_like(z), torch.zeros_like(z)
