"""HiT-DVAE / LigHT-DVAE and their Inv-s / Inv-s-NR ablations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from speechdvae.models import Posterior, load_preset
from speechdvae.models.losses import elbo_loss
from speechdvae.models.transformer import TransformerDVAE, TransformerStack, sinusoidal_positions
from speechdvae.train.dvae import TrainConfig

X, Z, W, D, FF = 12, 3, 4, 8, 16
VARIANTS = {
    "hit": {"share_decoders": False, "query_source": "z", "decoder_residual": True},
    "light": {"share_decoders": True, "query_source": "z", "decoder_residual": True},
    "hit-inv-s": {"share_decoders": False, "query_source": "s", "decoder_residual": True},
    "hit-inv-s-nr": {"share_decoders": False, "query_source": "s", "decoder_residual": False},
    "light-inv-s": {"share_decoders": True, "query_source": "s", "decoder_residual": True},
    "light-inv-s-nr": {"share_decoders": True, "query_source": "s", "decoder_residual": False},
}
PAPER_PARAMS = {"hit": 21.75e6, "light": 17.46e6}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(variant: str = "hit", seed: int = 0, **overrides) -> TransformerDVAE:
    torch.manual_seed(seed)
    kwargs = {
        "x_dim": X,
        "z_dim": Z,
        "w_dim": W,
        "d_model": D,
        "num_layers": 2,
        "dim_feedforward": FF,
        "dim_rnn_w": 6,
        **VARIANTS[variant],
        **overrides,
    }
    return TransformerDVAE(**kwargs).eval()


def powers(batch: int = 2, frames: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, X, generator=g).square() * 10 + 1e-3


def outputs(dec) -> list[torch.Tensor]:
    return [dec.y_logvar, dec.prior_mean, dec.prior_logvar]


def assert_outputs_close(a, b, atol: float = 1e-5) -> None:
    for x, y in zip(outputs(a), outputs(b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def first_changed(a: torch.Tensor, b: torch.Tensor) -> int:
    return next(t for t in range(a.shape[1]) if not torch.equal(a[:, t], b[:, t]))


def perturbed(x: torch.Tensor, t: int) -> torch.Tensor:
    y = x.clone()
    y[:, t] = y[:, t] * 2.0 + 1.0
    return y


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def naive_generation(model: TransformerDVAE, post: Posterior) -> list[torch.Tensor]:
    """GEN by recomputing the teacher-forced pass on the whole prefix at every frame."""
    z, w = post.z, post.w
    frames, ys, means, logvars = z.shape[1], [], [], []
    for t in range(frames):
        past = torch.stack([y.exp() for y in ys] + [z.new_zeros(z.shape[0], X)], dim=1)  # last frame unread
        prefix = Posterior(z[:, : t + 1], z[:, : t + 1], z[:, : t + 1], w, w, w)
        dec = model.decode(prefix, past, feedback=0.0)
        ys.append(dec.y_logvar[:, t])
        means.append(dec.prior_mean[:, t])
        logvars.append(dec.prior_logvar[:, t])
    return [torch.stack(v, dim=1) for v in (ys, means, logvars)]


# -- building blocks ----------------------------------------------------------------------------


def test_positional_encoding_follows_the_sinusoid_formula() -> None:
    pe = sinusoidal_positions(3, 4, 6, torch.zeros(1))
    for p in range(4):
        for i in range(3):
            angle = (p + 3) / 10000 ** (2 * i / 6)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(0, 2, 5, torch.zeros(1)).shape == (2, 5)


def test_parameter_count_is_that_of_single_head_post_norm_layers() -> None:
    model, lz_lw = tiny("hit"), Z + W
    attention = 4 * D * D + 4 * D  # query, key, value and output maps
    feed_forward = 2 * D * FF + FF + D
    encoder_layer = attention + feed_forward + 2 * 2 * D
    decoder_layer = 2 * attention + feed_forward + 3 * 2 * D
    decoder = (lz_lw * D + D) + (X * D + D) + 2 * decoder_layer
    lstm = 4 * 6 * (X + 6 + 2)
    expected = (
        lstm
        + 2 * (6 * W + W)
        + (X + W) * D
        + D
        + 2 * encoder_layer
        + 2 * (D * Z + Z)
        + 2 * decoder
        + 2 * (D * Z + Z)
        + D * X
        + X
    )
    assert count(model) == expected


def test_light_has_exactly_one_decoder_stack_fewer_parameters() -> None:
    hit, light = tiny("hit"), tiny("light")
    assert len(hit.decoders) == 2 and len(light.decoders) == 1
    assert light.prior_decoder is light.speech_decoder
    assert count(hit) - count(light) == count(hit.speech_decoder) > 0
    assert not any(k.startswith("decoders.1.") for k in light.state_dict())


@pytest.mark.parametrize("kind", ["hit", "light"])
def test_paper_preset_parameter_counts_are_near_the_papers(kind: str) -> None:
    config = dict(load_preset(kind, "paper")["model"])
    config.pop("name")
    assert count(TransformerDVAE(**config)) == pytest.approx(PAPER_PARAMS[kind], rel=0.005)


def test_inv_s_swaps_the_sources_of_queries_and_keys_values() -> None:
    for variant, (query_dim, memory_dim) in (("hit", (Z + W, X)), ("hit-inv-s", (X, Z + W))):
        for stack in tiny(variant).decoders:
            assert (stack.embed.in_features, stack.memory_embed.in_features) == (query_dim, memory_dim)


def test_without_residuals_the_decoder_output_does_not_carry_the_query() -> None:
    """At the first position the causal cross-attention sees one memory frame, so its output is
    independent of the query: without residual connections the layer output is too."""
    torch.manual_seed(0)
    stack = TransformerStack(5, D, 2, FF, memory_dim=4).eval()
    query, memory = torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    other = perturbed(query, 0)
    with torch.no_grad():
        assert torch.allclose(stack(query, memory, residual=False)[:, 0], stack(other, memory, residual=False)[:, 0])
        assert not torch.allclose(stack(query, memory)[:, 0], stack(other, memory)[:, 0], atol=1e-3)


def test_no_residual_switch_acts_on_the_speech_decoder_only() -> None:
    s = powers()
    for share in (False, True):
        nr = tiny("hit-inv-s-nr", share_decoders=share)
        with_residual = tiny("hit-inv-s", share_decoders=share)
        with_residual.load_state_dict(nr.state_dict())
        with torch.no_grad():
            post = nr.infer(s, sample=False)
            a, b = nr.decode(post, s), with_residual.decode(post, s)
        assert torch.equal(a.prior_mean, b.prior_mean) and torch.equal(a.prior_logvar, b.prior_logvar)
        assert not torch.allclose(a.y_logvar, b.y_logvar, atol=1e-3)


# -- interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["hit", "light-inv-s-nr"])
def test_shapes_and_the_sequence_latent(variant: str) -> None:
    model, s = tiny(variant), powers()
    assert model.autoregressive and model.hierarchical
    for feedback in (0.0, 0.5, 1.0):
        post, dec = model(s, sample=True, feedback=feedback)
        assert post.z.shape == post.z_mean.shape == post.z_logvar.shape == (2, 7, Z)
        assert post.w.shape == post.w_mean.shape == post.w_logvar.shape == (2, W)
        assert dec.y_logvar.shape == (2, 7, X) and dec.prior_mean.shape == dec.prior_logvar.shape == (2, 7, Z)
        assert not torch.equal(post.w, post.w_mean)
    post = model.infer(s, sample=False)
    assert torch.equal(post.z, post.z_mean) and torch.equal(post.w, post.w_mean)
    # w summarises the whole sequence: it changes when only the last frame changes
    assert not torch.equal(model.infer(perturbed(s, 6), sample=False).w_mean, post.w_mean)


def test_log_input_feeds_log_power_to_the_networks() -> None:
    s = powers()
    logged, raw = tiny("hit", log_input=True, log_eps=1e-3), tiny("hit", log_input=False)
    raw.load_state_dict(logged.state_dict())
    with torch.no_grad():
        a, b = logged.infer(s, sample=False), raw.infer(torch.log(s + 1e-3), sample=False)
        torch.testing.assert_close(a.z_mean, b.z_mean)
        torch.testing.assert_close(a.w_logvar, b.w_logvar)
        assert_outputs_close(logged.decode(a, s), raw.decode(b, torch.log(s + 1e-3)), atol=1e-6)


def test_config_rebuilds_the_model_and_bad_options_raise() -> None:
    model = tiny("light-inv-s-nr")
    config = dict(model.config)
    assert config.pop("name") == "transformer"
    rebuilt = TransformerDVAE(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="query_source"):
        tiny("hit", query_source="x")
    post = model.infer(powers())
    with pytest.raises(ValueError, match="true past"):
        model.decode(post, None, feedback=0.5)
    with pytest.raises(ValueError, match="probability"):
        model.decode(post, powers(), feedback=-0.1)


# -- teacher forcing, generation and their equivalence ------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_incremental_decoding_with_the_true_past_equals_teacher_forcing(variant: str) -> None:
    model, s = tiny(variant), powers()
    with torch.no_grad():
        post = model.infer(s, sample=True)
        teacher_forced = model.decode(post, s, feedback=0.0)
        stepped = model.decode_steps(post.z, post.w, lambda t, y_prev: s[:, t - 1])
    assert_outputs_close(stepped, teacher_forced)


@pytest.mark.parametrize("variant", ["hit", "light", "hit-inv-s-nr"])
def test_incremental_generation_equals_recomputing_the_prefix(variant: str) -> None:
    model, s = tiny(variant), powers(frames=6)
    with torch.no_grad():
        post = model.infer(s, sample=False)
        generated = model.decode(post, None, feedback=1.0)
        for a, b in zip(outputs(generated), naive_generation(model, post), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["hit", "light-inv-s"])
def test_teacher_forcing_reads_only_the_past(variant: str) -> None:
    model, s, t = tiny(variant), powers(), 3
    with torch.no_grad():
        post = model.infer(s, sample=False)
        a, b = model.decode(post, s), model.decode(post, perturbed(s, t))
        assert first_changed(a.y_logvar, b.y_logvar) == t + 1
        assert first_changed(a.prior_mean, b.prior_mean) == t + 1
        post.z = perturbed(post.z, t)
        c = model.decode(post, s)
        assert first_changed(a.y_logvar, c.y_logvar) == t  # s_t from z_{1:t}
        assert first_changed(a.prior_mean, c.prior_mean) == t + 1  # z_t from z_{1:t-1}


@pytest.mark.parametrize("variant", ["hit", "light-inv-s-nr"])
def test_generation_reads_no_s_and_is_causal(variant: str) -> None:
    model, s, t = tiny(variant), powers(), 3
    with torch.no_grad():
        post = model.infer(s, sample=False)
        a = model.decode(post, s, feedback=1.0)
        assert_outputs_close(model.decode(post, s * 5 + 1, feedback=1.0), a, atol=0.0)
        assert_outputs_close(model.decode(post, None, feedback=1.0), a, atol=0.0)
        post.z = perturbed(post.z, t)
        b = model.decode(post, s, feedback=1.0)
        assert first_changed(a.y_logvar, b.y_logvar) == t
        assert first_changed(a.prior_mean, b.prior_mean) == t + 1
        assert not torch.allclose(a.y_logvar[:, -1], b.y_logvar[:, -1])


def test_scheduled_sampling_goes_from_teacher_forcing_to_generation() -> None:
    model, s = tiny("light"), powers()
    torch.manual_seed(0)
    with torch.no_grad():
        post = model.infer(s, sample=False)
        teacher_forced, generated = model.decode(post, s, 0.0), model.decode(post, s, 1.0)
        assert_outputs_close(model.decode(post, s, 1e-9), teacher_forced)
        assert_outputs_close(model.decode(post, s, 1.0 - 1e-9), generated, atol=0.0)
        mixed = model.decode(post, s, 0.5).y_logvar
    assert not torch.allclose(mixed, teacher_forced.y_logvar) and not torch.allclose(mixed, generated.y_logvar)


def test_scheduled_sampling_backpropagates_through_the_loop() -> None:
    model, s = tiny("hit"), powers()
    post, dec = model(s, sample=True, feedback=0.5)
    elbo_loss(s, post, dec)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.speech_decoder.parameters())


@pytest.mark.parametrize("variant", ["hit", "light-inv-s-nr"])
def test_sample_prior_is_finite_positive_and_seeded(variant: str) -> None:
    model = tiny(variant)
    torch.manual_seed(3)
    a = model.sample_prior(3, 9)
    torch.manual_seed(3)
    b = model.sample_prior(3, 9)
    assert a.shape == (3, 9, X) and torch.isfinite(a).all() and (a > 0).all()
    assert torch.equal(a, b) and not torch.equal(a, model.sample_prior(3, 9))
    assert not torch.allclose(a[0], a[1])


# -- training and the E-step -------------------------------------------------------------------


def test_gradients_reach_every_encoder_parameter_and_nothing_else_when_the_rest_is_frozen() -> None:
    model, s = tiny("light"), powers()
    encoder_ids = {id(p) for p in model.encoder_parameters()}
    encoder_names = {n for n, p in model.named_parameters() if id(p) in encoder_ids}
    assert encoder_names and all(n.split(".")[0] in ("w_rnn", "w_head", "z_encoder", "z_head") for n in encoder_names)
    assert len(encoder_ids) == sum(
        1 for n, _ in model.named_parameters() if n.split(".")[0] in ("w_rnn", "w_head", "z_encoder", "z_head")
    )
    for p in model.parameters():
        p.requires_grad_(id(p) in encoder_ids)
    post, dec = model(s, sample=True, feedback=1.0)
    elbo_loss(s, post, dec, beta_z=0.01, beta_w=0.01)["loss"].backward()
    for name, p in model.named_parameters():
        if id(p) in encoder_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_elbo_decreases_with_a_few_adamw_steps() -> None:
    model, s = tiny("light"), powers(batch=4, frames=10)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-9, weight_decay=1e-5)
    torch.manual_seed(0)
    losses = []
    for _ in range(20):
        post, dec = model(s, sample=True)
        loss = elbo_loss(s, post, dec, beta_z=0.01, beta_w=0.01)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_save_load_round_trip(tmp_path: Path) -> None:
    from speechdvae.checkpoints import load_model, save_model

    s = powers()
    for variant in ("hit", "light-inv-s-nr"):
        model = tiny(variant)
        loaded = load_model(save_model(model, tmp_path / variant), device="cpu")
        assert loaded.config == model.config
        with torch.no_grad():
            post = model.infer(s, sample=False)
            assert_outputs_close(loaded.decode(loaded.infer(s, sample=False), s), model.decode(post, s), atol=0.0)


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(VARIANTS))
def test_presets_select_the_variant_and_valid_training_settings(preset: str) -> None:
    for size in ("paper", "small"):
        section = load_preset(preset, size)
        model_config = dict(section["model"])
        assert model_config.pop("name") == "transformer"
        assert {k: model_config[k] for k in VARIANTS[preset]} == VARIANTS[preset]
        train = TrainConfig.from_dict(section["train"])
        assert (train.optimizer, train.lr_schedule, train.beta_z, train.beta_w) == (
            "adamw",
            "warmup_cosine",
            0.01,
            0.01,
        )
        assert train.max_steps == train.warmup_steps + train.cosine_steps
        if size == "small":
            assert TransformerDVAE(**model_config).config["num_layers"] == model_config["num_layers"]
    paper = load_preset(preset, "paper")
    assert (
        paper["model"]["d_model"],
        paper["model"]["num_layers"],
        paper["model"]["dim_feedforward"],
        paper["model"]["z_dim"],
        paper["model"]["w_dim"],
    ) == (256, 4, 1024, 16, 32)
    train = TrainConfig.from_dict(paper["train"])
    assert (train.lr, train.betas, train.eps, train.weight_decay) == (5e-5, (0.9, 0.99), 1e-9, 1e-5)
    assert (train.warmup_steps, train.cosine_steps, train.lr_min) == (5000, 20000, 1e-8)
