"""The RNN speech priors (VAE, DKF, RVAE, SRNN), their shared layers, presets and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from speechdvae.checkpoints import CheckpointError, from_pretrained, load_model, read_checkpoint_config, save_model
from speechdvae.models import DVAE, Posterior, available_presets, build_model, load_preset
from speechdvae.models.layers import MLP, GaussianHead, HeadSteps, LogVarianceHead, LSTMSteps, previous
from speechdvae.models.losses import elbo_loss

X, Z = 12, 3
TINY = {
    "vae": {"name": "vae", "x_dim": X, "z_dim": Z, "dense_x_z": [8]},
    "dkf": {
        "name": "dkf",
        "x_dim": X,
        "z_dim": Z,
        "dense_x_gx": [8],
        "dim_rnn_gx": 6,
        "dense_ztm1_g": [4],
        "dense_g_z": [5],
        "dense_z_x": [4, 8],
    },
    "rvae": {"name": "rvae", "x_dim": X, "z_dim": Z, "dim_rnn_g_x": 5, "dim_rnn_g_z": 4, "dim_rnn_h": 6},
    "rvae-causal": {
        "name": "rvae",
        "x_dim": X,
        "z_dim": Z,
        "dense_x_gx": [7],
        "dim_rnn_g_x": 5,
        "bidir_g_x": False,
        "dense_z_gz": [4],
        "dim_rnn_g_z": 4,
        "dense_g_z": [5],
        "dense_z_h": [4],
        "dim_rnn_h": 6,
        "bidir_h": False,
        "dense_h_x": [8],
    },
    "srnn": {
        "name": "srnn",
        "x_dim": X,
        "z_dim": Z,
        "dense_x_h": [8],
        "dim_rnn_h": 6,
        "dense_hx_g": [8],
        "dim_rnn_g": 5,
        "dense_gz_z": [6, 4],
        "dense_hz_x": [8],
        "dense_hz_z": [6, 4],
    },
}
PAPER_PARAMS = {"vae": 138_273, "dkf": 516_641, "rvae": 1_026_849, "srnn-tf": 884_993, "srnn-ss": 884_993}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kind: str, seed: int = 0) -> DVAE:
    torch.manual_seed(seed)
    return build_model(TINY[kind]).eval()


def powers(batch: int = 2, frames: int = 7, dim: int = X, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, dim, generator=g).square() * 10 + 1e-3


def deterministic_outputs(model: DVAE, s: torch.Tensor, feedback: float = 0.0) -> list[torch.Tensor]:
    with torch.no_grad():
        post, dec = model(s, sample=False, feedback=feedback)
    return [post.z_mean, post.z_logvar, dec.y_logvar, dec.prior_mean, dec.prior_logvar]


def assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


# -- shared layers ------------------------------------------------------------------------------


def test_mlp_is_tanh_layers_and_empty_is_identity() -> None:
    torch.manual_seed(0)
    mlp, x = MLP(4, [5, 3]), torch.randn(2, 4)
    expected = torch.tanh(mlp.layers[1](torch.tanh(mlp.layers[0](x))))
    torch.testing.assert_close(mlp(x), expected)
    identity = MLP(4, [])
    assert identity.out_dim == 4 and not list(identity.parameters())
    assert torch.equal(identity(x), x)


def test_lstm_steps_match_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm, x = nn.LSTM(4, 6, batch_first=True), torch.randn(3, 9, 4)
    steps = LSTMSteps(lstm, 3)
    projected = steps.project(x).unbind(1)
    stepped = torch.stack([steps.step(p) for p in projected], dim=1)
    torch.testing.assert_close(stepped, lstm(x)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("hidden", [[], [5, 4]])
@pytest.mark.parametrize("known_first", [True, False])
def test_head_steps_equal_the_head_on_the_concatenation(hidden: list[int], known_first: bool) -> None:
    torch.manual_seed(0)
    known, new = torch.randn(2, 6, 7), torch.randn(2, 6, 3)
    for head in (GaussianHead(10, hidden, 2), LogVarianceHead(10, hidden, 4)):
        full = head(torch.cat([known, new] if known_first else [new, known], dim=-1))
        steps = HeadSteps(head, known, known_first=known_first)
        for t in range(6):
            out = steps(t, new[:, t])
            for a, b in zip(out if isinstance(out, tuple) else (out,), full if isinstance(full, tuple) else (full,)):
                torch.testing.assert_close(a, b[:, t], atol=1e-6, rtol=1e-5)


def test_previous_shifts_in_a_zero_frame() -> None:
    x = torch.arange(12.0).reshape(1, 4, 3)
    assert torch.equal(previous(x), torch.cat([torch.zeros(1, 1, 3), x[:, :3]], dim=1))


# -- the interface ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TINY))
def test_shapes_and_deterministic_path(kind: str) -> None:
    model, s = tiny(kind), powers()
    feedbacks = [0.0, 0.5, 1.0] if model.autoregressive else [0.0]
    for feedback in feedbacks:
        post, dec = model(s, sample=True, feedback=feedback)
        assert post.z.shape == post.z_mean.shape == post.z_logvar.shape == (2, 7, Z)
        assert dec.y_logvar.shape == (2, 7, X)
        assert dec.prior_mean.shape == dec.prior_logvar.shape == (2, 7, Z)
        assert not torch.equal(post.z, post.z_mean)
    first = deterministic_outputs(model, s)
    assert_all_close(first, deterministic_outputs(model, s), atol=0.0)
    post = model.infer(s, sample=False)
    assert torch.equal(post.z, post.z_mean)


@pytest.mark.parametrize("kind", list(TINY))
def test_config_rebuilds_the_same_architecture(kind: str) -> None:
    model = tiny(kind)
    rebuilt = build_model(model.config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_build_model_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*dkf"):
        build_model({"name": "nope"})
    with pytest.raises(ValueError, match="invalid config"):
        build_model({"name": "vae", "hidden": 3})


def test_non_autoregressive_models_ignore_s_and_feedback() -> None:
    for kind in ("vae", "dkf", "rvae"):
        model, s = tiny(kind), powers()
        post = model.infer(s, sample=False)
        a, b = model.decode(post), model.decode(post, s * 3, feedback=1.0)
        assert torch.equal(a.y_logvar, b.y_logvar) and torch.equal(a.prior_mean, b.prior_mean)


# -- causality ----------------------------------------------------------------------------------


def changed_frames(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return [t for t in range(a.shape[1]) if not torch.allclose(a[:, t], b[:, t], atol=0, rtol=0)]


def perturbed(x: torch.Tensor, t: int) -> torch.Tensor:
    y = x.clone()
    y[:, t] = y[:, t] * 2.0 + 1.0
    return y


@pytest.mark.parametrize("kind, causal", [("rvae-causal", True), ("rvae", False)])
def test_rvae_decoder_causality(kind: str, causal: bool) -> None:
    model, t = tiny(kind), 3
    post = model.infer(powers(), sample=False)
    with torch.no_grad():
        y = model.decode(post).y_logvar
        post.z = perturbed(post.z, t)
        y2 = model.decode(post).y_logvar
    first_changed = changed_frames(y, y2)[0]
    assert first_changed == t if causal else first_changed < t


def test_srnn_generation_reads_no_s_and_is_causal_in_z() -> None:
    model, s, t = tiny("srnn"), powers(), 3
    post = model.infer(s, sample=False)
    with torch.no_grad():
        y = model.decode(post, s, feedback=1.0).y_logvar
        assert torch.equal(model.decode(post, s * 5 + 1, feedback=1.0).y_logvar, y)
        assert torch.equal(model.decode(post, None, feedback=1.0).y_logvar, y)
        post.z = perturbed(post.z, t)
        assert changed_frames(y, model.decode(post, s, feedback=1.0).y_logvar)[0] == t


def test_srnn_fed_back_predictions_are_detached() -> None:
    """y_t sees z_{<t} only through the fed-back exp(y_{<t}), which carries no gradient."""
    model, s, t = tiny("srnn"), powers(), 4
    post = model.infer(s, sample=False)
    post.z = post.z.detach().requires_grad_(True)
    model.decode(post, s, feedback=1.0).y_logvar[:, t].sum().backward()
    assert (post.z.grad[:, :t] == 0).all() and (post.z.grad[:, t] != 0).any()


def test_teacher_forced_srnn_reads_only_the_past() -> None:
    model, s, t = tiny("srnn"), powers(), 3
    post = model.infer(s, sample=False)
    with torch.no_grad():
        y = model.decode(post, s, feedback=0.0).y_logvar
        y2 = model.decode(post, perturbed(s, t), feedback=0.0).y_logvar
    assert changed_frames(y, y2)[0] == t + 1


def test_srnn_decode_needs_s_unless_generating() -> None:
    model, s = tiny("srnn"), powers()
    post = model.infer(s)
    for feedback in (0.0, 0.5):
        with pytest.raises(ValueError, match="true past"):
            model.decode(post, None, feedback=feedback)
    with pytest.raises(ValueError, match="probability"):
        model.decode(post, s, feedback=1.5)


# -- SRNN decoding modes against naive references -----------------------------------------------


def naive_srnn_decode(model: DVAE, z: torch.Tensor, s: torch.Tensor, fed_back: torch.Tensor) -> tuple:
    """Step-by-step SRNN decoding with plain module calls; fed_back (B, T) says where the past
    frame is the previous prediction."""
    batch, frames = z.shape[:2]
    state = None
    x_pred = torch.zeros(batch, model.x_dim)
    hs, ys = [], []
    for t in range(frames):
        x_true = s[:, t - 1] if t > 0 else torch.zeros(batch, model.x_dim)
        x_prev = torch.where(fed_back[:, t : t + 1], x_pred, x_true)
        out, state = model.past_rnn(model.past_mlp(x_prev)[:, None], state)
        h = out[:, 0]
        y = model.decoder(torch.cat([h, z[:, t]], dim=-1))
        x_pred = y.exp()
        hs.append(h)
        ys.append(y)
    h, y = torch.stack(hs, dim=1), torch.stack(ys, dim=1)
    z_prev = torch.cat([torch.zeros(batch, 1, model.z_dim), z[:, :-1]], dim=1)
    prior_mean, prior_logvar = model.prior(torch.cat([h, z_prev], dim=-1))
    return y, prior_mean, prior_logvar


def decoded(model: DVAE, post: Posterior, s: torch.Tensor, feedback: float) -> tuple:
    dec = model.decode(post, s, feedback=feedback)
    return dec.y_logvar, dec.prior_mean, dec.prior_logvar


@torch.no_grad()
def test_srnn_modes_match_naive_loops() -> None:
    model, s = tiny("srnn"), powers(batch=3, frames=8)
    post = model.infer(s, sample=False)
    everywhere, nowhere = torch.ones(3, 8, dtype=torch.bool), torch.zeros(3, 8, dtype=torch.bool)
    generated, forced = naive_srnn_decode(model, post.z, s, everywhere), naive_srnn_decode(model, post.z, s, nowhere)
    assert_all_close(decoded(model, post, s, 1.0), generated)
    assert_all_close(decoded(model, post, s, 0.0), forced)
    # the recursive path with every frame true equals the whole-sequence fast path
    h, y = model._decode_recursively(post.z, s, 0.0)
    torch.testing.assert_close(y, forced[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(generated[0], forced[0], atol=1e-3)


@torch.no_grad()
def test_scheduled_sampling_mixes_per_step_and_sequence() -> None:
    model, s = tiny("srnn"), powers(batch=4, frames=8)
    post = model.infer(s, sample=False)
    assert_all_close(decoded(model, post, s, 1e-12), decoded(model, post, s, 0.0))
    assert_all_close(decoded(model, post, s, 1 - 1e-12), decoded(model, post, s, 1.0))
    torch.manual_seed(5)
    mixed = decoded(model, post, s, 0.5)
    torch.manual_seed(5)
    fed_back = torch.rand(4, 8, 1)[..., 0] < 0.5
    assert fed_back[:, 1:].any() and not fed_back[:, 1:].all()
    assert_all_close(mixed, naive_srnn_decode(model, post.z, s, fed_back))
    torch.manual_seed(5)
    assert_all_close(decoded(model, post, s, 0.5), mixed, atol=0.0)


# -- generation, E-step and training ------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TINY))
def test_sample_prior(kind: str) -> None:
    model = tiny(kind)
    v = model.sample_prior(3, 10)
    assert v.shape == (3, 10, X) and torch.isfinite(v).all() and (v > 0).all()
    assert not torch.allclose(v[0], v[1])


@pytest.mark.parametrize("kind", list(TINY))
def test_e_step_gradients_reach_only_the_encoder(kind: str) -> None:
    model, s = tiny(kind), powers()
    for p in model.parameters():
        p.requires_grad_(False)
    encoder = model.encoder_parameters()
    for p in encoder:
        p.requires_grad_(True)
    post, dec = model(s, feedback=1.0)
    elbo_loss(s, post, dec)["loss"].backward()
    encoder_ids = {id(p) for p in encoder}
    for name, p in model.named_parameters():
        if id(p) in encoder_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert 0 < len(encoder) < len(list(model.parameters()))


@pytest.mark.parametrize("kind", list(TINY))
def test_elbo_decreases_with_adam(kind: str) -> None:
    model, s = tiny(kind).train(), powers(batch=4, frames=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        torch.manual_seed(0)
        post, dec = model(s, feedback=0.0)
        loss = elbo_loss(s, post, dec, beta_z=0.1)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


# -- presets and checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["vae", "dkf", "rvae", "rvae-causal", "srnn-tf", "srnn-ss"])
@pytest.mark.parametrize("size", ["paper", "small"])
def test_presets_build_and_round_trip(preset: str, size: str, tmp_path: Path) -> None:
    config = load_preset(preset, size)["model"]
    assert config["z_dim"] == 16 and config["x_dim"] == 513
    torch.manual_seed(0)
    model = build_model(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    if size == "paper" and preset in PAPER_PARAMS:
        assert n_params == PAPER_PARAMS[preset]
    if size == "small":
        paper = build_model(load_preset(preset, "paper")["model"])
        assert n_params < 0.6 * sum(p.numel() for p in paper.parameters())
    s = powers(batch=1, frames=5, dim=513)
    save_model(model, tmp_path / "ckpt", metadata={"training_data": "tiny"})
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert loaded.config == model.config
    assert_all_close(deterministic_outputs(loaded, s, 1.0), deterministic_outputs(model, s, 1.0), atol=0.0)


def test_preset_errors_list_the_choices() -> None:
    assert {"vae", "dkf", "rvae", "rvae-causal", "srnn-tf", "srnn-ss"} <= set(available_presets())
    with pytest.raises(ValueError, match="unknown preset 'nope'.*rvae-causal"):
        load_preset("nope", "small")
    with pytest.raises(ValueError, match="no size 'huge'.*paper, small"):
        load_preset("vae", "huge")
    assert load_preset("rvae-causal", "paper")["model"]["bidir_h"] is False


def test_checkpoint_config_contents(tmp_path: Path) -> None:
    model = tiny("dkf")
    save_model(model, tmp_path / "ckpt", metadata={"training_data": "open corpus", "epochs": 3})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model"] == model.config and config["sample_rate"] == 16000
    assert config["stft"]["n_fft"] == 1024 and config["stft"]["hop_length"] == 256
    assert config["stft"]["window"] == "sine"
    assert config["training_data"] == "open corpus" and config["metadata"] == {"epochs": 3}
    assert config["format_version"] == 1 and config["speechdvae_version"]
    assert read_checkpoint_config(tmp_path / "ckpt") == config


def test_inference_settings_round_trip_and_are_checked(tmp_path: Path) -> None:
    model = tiny("vae")
    save_model(model, tmp_path / "plain")
    assert "inference" not in read_checkpoint_config(tmp_path / "plain")
    assert load_model(tmp_path / "plain", device="cpu").inference is None
    model.inference = {"engine": "langevin", "niter": 30, "step_size": 0.1}
    save_model(model, tmp_path / "tuned")
    assert read_checkpoint_config(tmp_path / "tuned")["inference"] == model.inference
    assert load_model(tmp_path / "tuned", device="cpu").inference == model.inference
    config_path = tmp_path / "tuned" / "config.json"
    bad_entries = {
        "must be": ({"niter": 30}, {"engine": "gibbs"}, 100),
        "not settings of the vem engine": ({"engine": "vem", "step_size": 0.1},),
        "niter must be positive": ({"engine": "vem", "niter": 0},),
        "niter must be of type int": ({"engine": "langevin", "niter": "100"}, {"engine": "langevin", "niter": True}),
    }
    for message, entries in bad_entries.items():
        for bad in entries:
            config_path.write_text(json.dumps({**read_checkpoint_config(tmp_path / "plain"), "inference": bad}))
            with pytest.raises(CheckpointError, match=f'config.json: "inference".*{message}'):
                load_model(tmp_path / "tuned")


@pytest.mark.parametrize(
    "name, inference",
    [
        ("default", {"engine": "langevin", "niter": 100, "wf_samples": 50}),
        ("fast", {"engine": "langevin", "niter": 20}),
    ],
)
def test_shipped_priors_carry_their_validated_inference(name: str, inference: dict) -> None:
    model = from_pretrained(name, device="cpu")
    assert model.inference == inference
    assert model.enhancer().settings.engine == inference["engine"]


def test_save_replaces_a_checkpoint_only_when_complete(tmp_path: Path) -> None:
    path, key = tmp_path / "ckpt", "decoder.logvar.weight"
    older, newer = tiny("vae", seed=0), tiny("vae", seed=1)
    save_model(older, path)
    with pytest.raises(FileNotFoundError):
        save_model(newer, path, extra_files={"LICENSE.txt": tmp_path / "missing.txt"})
    assert torch.equal(load_model(path, device="cpu").state_dict()[key], older.state_dict()[key])
    save_model(newer, path)
    assert torch.equal(load_model(path, device="cpu").state_dict()[key], newer.state_dict()[key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_refuses_to_replace_other_folders(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="not a speechdvae checkpoint"):
        save_model(tiny("vae"), tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty.*not a speechdvae checkpoint"):
        load_model(tmp_path / "empty")
    save_model(tiny("vae"), tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["name"] = "mystery"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*unknown model 'mystery'"):
        load_model(tmp_path / "ckpt")
    config["model"] = tiny("dkf").config
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors.*do not match"):
        load_model(tmp_path / "ckpt")


def test_from_pretrained_takes_a_path_or_a_shipped_name(tmp_path: Path) -> None:
    model = tiny("srnn")
    save_model(model, tmp_path / "mine")
    loaded = from_pretrained(tmp_path / "mine", device="cpu")
    assert torch.equal(loaded.state_dict()["decoder.logvar.bias"], model.state_dict()["decoder.logvar.bias"])
    with pytest.raises(CheckpointError, match="unknown pretrained model 'no-such-prior'.*available"):
        from_pretrained("no-such-prior")


@pytest.mark.parametrize("name", ["vae", "dkf", "rvae"])
def test_log_input_feeds_the_encoder_log_powers(name):
    """With log_input the encoder sees log(s + 1e-8): same weights, raw model fed the logs agrees."""
    config = {**load_preset(name, "small")["model"], "log_input": True}
    torch.manual_seed(0)
    logged = build_model(config)
    raw = build_model({**config, "log_input": False})
    raw.load_state_dict(logged.state_dict())
    s = torch.rand(2, 7, 513) * 100
    a = logged.infer(s, sample=False)
    b = raw.infer(torch.log(s + 1e-8), sample=False)
    torch.testing.assert_close(a.z_mean, b.z_mean)
    assert build_model(logged.config).log_input and not build_model({"name": name}).log_input
