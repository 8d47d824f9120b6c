"""The DVAE interface, checked for every model registered in `speechdvae.models.MODELS` (built with its
constructor's defaults), so that a newly registered model is covered without editing this file."""

from __future__ import annotations

import json

import pytest
import torch

from speechdvae.models import DVAE, MODELS, build_model
from speechdvae.models.losses import elbo_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def model_of(name: str, seed: int = 0) -> DVAE:
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def powers(model: DVAE, batch: int = 2, frames: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, frames, model.x_dim, generator=g).square() * 10 + 1e-3


def outputs(model: DVAE, s: torch.Tensor, feedback: float) -> list[torch.Tensor]:
    with torch.no_grad():
        post, dec = model(s, sample=False, feedback=feedback)
    return [post.z_mean, post.z_logvar, dec.y_logvar, dec.prior_mean, dec.prior_logvar]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_config_rebuilds_a_numerically_identical_model(name: str) -> None:
    model = model_of(name)
    config = json.loads(json.dumps(model.config))  # as a checkpoint stores it
    assert config["name"] == name and config == model.config
    torch.manual_seed(0)
    rebuilt = build_model(config).eval()
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
    assert state.keys() == rebuilt_state.keys()
    assert all(torch.equal(state[key], rebuilt_state[key]) for key in state)
    s = powers(model)
    for feedback in (0.0, 1.0) if model.autoregressive else (0.0,):
        for a, b in zip(outputs(model, s, feedback), outputs(rebuilt, s, feedback), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fed_back_outputs_are_detached(name: str) -> None:
    """Decoding with feedback 1 gives the values and encoder gradients of teacher forcing on the generated past."""
    model, s = model_of(name), powers(model_of(name))
    post = model.infer(s, sample=False)
    generated = model.decode(post, None, feedback=1.0)
    past = generated.y_logvar.exp().detach()
    forced = model.decode(post, past if model.autoregressive else None, feedback=0.0)
    for a, b in zip(
        (generated.y_logvar, generated.prior_mean, generated.prior_logvar),
        (forced.y_logvar, forced.prior_mean, forced.prior_logvar),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    encoder = model.encoder_parameters()
    grads = [
        torch.autograd.grad(
            decoded.y_logvar.sum() + decoded.prior_mean.sum(), encoder, retain_graph=True, allow_unused=True
        )
        for decoded in (generated, forced)
    ]
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_e_step_gradients_reach_the_encoder_parameters_and_nothing_else(name: str) -> None:
    model = model_of(name)
    s = powers(model)
    encoder = model.encoder_parameters()
    encoder_ids = {id(p) for p in encoder}
    assert 0 < len(encoder) < len(list(model.parameters())) and len(encoder_ids) == len(encoder)
    for p in model.parameters():
        p.requires_grad_(id(p) in encoder_ids)
    post, dec = model(s, feedback=1.0)
    elbo_loss(s, post, dec)["loss"].backward()
    for label, p in model.named_parameters():
        if id(p) in encoder_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, label
        else:
            assert p.grad is None, label


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prior_samples_are_speech_variances_of_the_asked_shape(name: str) -> None:
    model = model_of(name)
    torch.manual_seed(3)
    first = model.sample_prior(3, 5)
    torch.manual_seed(3)
    assert first.shape == (3, 5, model.x_dim) and torch.equal(first, model.sample_prior(3, 5))
    assert bool(torch.isfinite(first).all()) and bool((first > 0).all())
