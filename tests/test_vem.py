"""VEM speech enhancement: the NMF M-step, the Wiener filter and the full loop, checked against the
official reference iterations (../shared/official-dvae-se/README.md, "VEM reference") and, on tiny
random models, for batching, isolation of the caller's model and the settings."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noisy_stfts, tiny_model

from speechdvae.checkpoints import load_model
from speechdvae.enhancement import common
from speechdvae.enhancement.common import generated_past, settings_identity
from speechdvae.enhancement.enhancer import InferenceRequest
from speechdvae.enhancement.langevin import LangevinConfig
from speechdvae.enhancement.nmf import (
    INIT_FLOOR,
    NMFNoise,
    clean_power,
    m_step,
    mixture_loss,
    normalize_columns,
    update_W,
    wiener_gain,
)
from speechdvae.enhancement.vem import DEFAULT_ITERATIONS, VEMConfig, encoder_copy, enhance_spectrogram
from speechdvae.models import DVAE, build_model
from speechdvae.official import import_official
from speechdvae.stft import istft, stft

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official-dvae-se"
REFERENCE = OFFICIAL / "reference"
TAGS = [f"{corpus}_{model}" for corpus in ("wsj", "vb") for model in ("vae", "dkf", "rvae", "srnn")]
ITERATIONS = range(1, 6)
F = 513


pytestmark = pytest.mark.usefixtures("one_thread")


# -- official reference ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_models(tmp_path_factory: pytest.TempPathFactory, official_dir: Path) -> dict[str, DVAE]:
    paths = import_official(OFFICIAL, tmp_path_factory.mktemp("official"))
    return {p.name.removeprefix("official-").replace("-", "_"): load_model(p, device="cpu") for p in paths}


@pytest.fixture(scope="module")
def vem_inputs(official_dir: Path) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "vem_inputs.npz") as data:
        return dict(data)


def vem_reference(tag: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / f"vem_{tag}.npz") as data:
        return dict(data)


def time_major(array: np.ndarray) -> torch.Tensor:
    """An official (F, N) array as a batch of one (1, N, F)."""
    return torch.from_numpy(np.ascontiguousarray(array.T))[None]


def reference_state(
    ref: dict[str, np.ndarray], inputs: dict[str, np.ndarray], iteration: int
) -> tuple[NMFNoise, torch.Tensor]:
    """W, H and g after `iteration` (0: the initialisation), batched."""
    if iteration == 0:
        return NMFNoise.from_arrays(inputs["W_init"], inputs["H_init"]), torch.ones(1, inputs["g_init"].size)
    return (
        NMFNoise.from_arrays(ref[f"iter{iteration}_W"], ref[f"iter{iteration}_H"]),
        torch.from_numpy(ref[f"iter{iteration}_g"])[None],
    )


@pytest.mark.parametrize("tag", TAGS)
def test_m_step_reproduces_every_official_iteration(tag: str, vem_inputs: dict[str, np.ndarray]) -> None:
    ref = vem_reference(tag)
    power = time_major(vem_inputs["mix_power"])
    mask = torch.ones(power.shape[:2], dtype=torch.bool)
    for i in ITERATIONS:
        nmf, gain = reference_state(ref, vem_inputs, i - 1)
        speech_var = time_major(ref[f"iter{i}_Vs"])[:, None]
        nmf, gain = m_step(nmf, gain, power, speech_var, mask)
        np.testing.assert_allclose(nmf.W[0], ref[f"iter{i}_W"], rtol=1e-5, err_msg=f"{tag} iteration {i} W")
        np.testing.assert_allclose(nmf.H[0], ref[f"iter{i}_H"], rtol=1e-5, err_msg=f"{tag} iteration {i} H")
        np.testing.assert_allclose(gain[0], ref[f"iter{i}_g"], rtol=1e-5, err_msg=f"{tag} iteration {i} g")
        loss = mixture_loss(power, speech_var, gain, nmf.variance(), mask)
        np.testing.assert_allclose(loss.item(), ref["loss"][i - 1], rtol=1e-5, err_msg=f"{tag} iteration {i}")


@pytest.mark.parametrize("tag", TAGS)
def test_wiener_gain_reproduces_official(tag: str, vem_inputs: dict[str, np.ndarray]) -> None:
    ref = vem_reference(tag)
    nmf, gain = reference_state(ref, vem_inputs, 5)
    wiener = wiener_gain(time_major(ref["iter5_Vs"])[:, None], gain, nmf.variance())
    np.testing.assert_allclose(wiener[0], ref["WFs"].T, rtol=1e-5)


def test_clean_power_is_the_posterior_power_and_finite_where_the_gain_vanished() -> None:
    gen = torch.Generator().manual_seed(3)
    speech_var = torch.rand(2, 3, 6, 5, generator=gen, dtype=torch.float64) + 0.1  # (B, R, T, F)
    noise_var = torch.rand(2, 6, 5, generator=gen, dtype=torch.float64) + 0.1
    power = torch.rand(2, 6, 5, generator=gen, dtype=torch.float64)
    gain = torch.rand(2, 6, generator=gen, dtype=torch.float64) + 0.5
    wiener = wiener_gain(speech_var, gain, noise_var)
    expected = (wiener.square() * power + wiener * noise_var) / gain[..., None]  # (|G X|^2 + G W H) / g
    torch.testing.assert_close(clean_power(power, speech_var, gain, noise_var, 1e-10), expected)
    # a frame whose gain decayed to zero: the prior's mean variance, not 0 / 0
    gain[0, 2] = 0.0
    estimate = clean_power(power, speech_var, gain, noise_var, 1e-10)
    assert bool(torch.isfinite(estimate).all())
    torch.testing.assert_close(estimate[0, 2], speech_var[0, :, 2].mean(0))


@pytest.fixture(scope="module")
def official_runs(official_models: dict[str, DVAE], vem_inputs: dict[str, np.ndarray]) -> dict:
    """Five deterministic VEM iterations per official prior, from the reference initialisation.

    X is given with |X|^2 equal to the reference `mix_power` bit for bit (the official STFT
    rounded differently from ours in the last bit)."""
    X = time_major(np.sqrt(vem_inputs["mix_power"].astype(np.float64))).to(torch.complex128)
    init = NMFNoise.from_arrays(vem_inputs["W_init"], vem_inputs["H_init"])
    config = VEMConfig.official(niter=int(vem_inputs["niter"]), deterministic=True)
    cache: dict = {}

    def run(tag: str):
        if tag not in cache:
            cache[tag] = enhance_spectrogram(official_models[tag], X, config, init=init).utterance(0)
        return cache[tag]

    return run


def normwise_error(ours: torch.Tensor, theirs: np.ndarray) -> float:
    return float((ours - torch.from_numpy(theirs)).abs().max() / np.abs(theirs).max())


@pytest.mark.parametrize("tag", [t for t in TAGS if not t.endswith("srnn")])
def test_full_vem_follows_official(tag: str, official_runs, official_models: dict[str, DVAE]) -> None:
    """E-step + M-step. The losses agree to float32 rounding. The factors drift slightly: the
    forward passes differ from the reference's in the last bit (another CPU), and Adam's first
    steps (about lr * sign(gradient)) turn that into relative errors of up to ~1e-3."""
    ref, run = vem_reference(tag), official_runs(tag)
    latent_terms = run.lengths.item() * official_models[tag].z_dim / 2
    for i in ITERATIONS:
        np.testing.assert_allclose(run.estep_recon[0, i - 1], ref[f"iter{i}_estep_loss_recon"], rtol=1e-5)
        # the official KL leaves out the -1 of each of the T * L terms
        np.testing.assert_allclose(run.estep_kl[0, i - 1] + latent_terms, ref[f"iter{i}_estep_loss_kld"], rtol=1e-5)
    np.testing.assert_allclose(run.losses[0], ref["loss"], rtol=1e-5)
    assert normwise_error(run.nmf.W[0], ref["iter5_W"]) < 2e-3
    assert normwise_error(run.nmf.H[0], ref["iter5_H"]) < 2e-3
    assert normwise_error(run.gain[0], ref["iter5_g"]) < 2e-3
    assert normwise_error(run.wiener_gain[0], ref["WFs"].T) < 2e-3


@pytest.mark.parametrize("tag", ["wsj_srnn", "vb_srnn"])
def test_srnn_vem_follows_official_trend(tag: str, official_runs, official_models: dict[str, DVAE]) -> None:
    """The autoregressive decoder amplifies rounding: only the first E-step and the loss trend reproduce."""
    ref, run = vem_reference(tag), official_runs(tag)
    np.testing.assert_allclose(run.estep_recon[0, 0], ref["iter1_estep_loss_recon"], rtol=1e-5)
    np.testing.assert_allclose(
        run.estep_kl[0, 0] + run.lengths.item() * official_models[tag].z_dim / 2, ref["iter1_estep_loss_kld"], rtol=1e-5
    )
    np.testing.assert_allclose(run.losses[0], ref["loss"], rtol=1e-2)
    assert bool((run.losses[0].diff() < 0).all()) and bool((np.diff(ref["loss"]) < 0).all())


# -- NMF ------------------------------------------------------------------------------------------
def test_random_init_is_floored_uniform_and_reproducible() -> None:
    draw = lambda: NMFNoise.init_random(2, 7, 5, 3, torch.Generator().manual_seed(1))  # noqa: E731
    a, b = draw(), draw()
    assert a.W.shape == (2, 7, 3) and a.H.shape == (2, 3, 5) and a.W.dtype == torch.float32
    assert torch.equal(a.W, b.W) and torch.equal(a.H, b.H)
    expected = torch.rand(2, 7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(a.W, expected.clamp_min(INIT_FLOOR).float())
    assert float(a.H.min()) >= INIT_FLOOR and float(a.H.max()) < 1


def test_column_normalisation_keeps_the_noise_variance() -> None:
    nmf = NMFNoise.init_random(2, 6, 9, 3, torch.Generator().manual_seed(0), dtype=torch.float64)
    normalised = normalize_columns(nmf)
    torch.testing.assert_close(normalised.W.sum(1), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(normalised.variance(), nmf.variance())


def test_masked_frames_do_not_touch_the_update() -> None:
    gen = torch.Generator().manual_seed(3)
    nmf = NMFNoise.init_random(1, 6, 8, 2, gen)
    power, speech = torch.rand(1, 8, 6, generator=gen), torch.rand(1, 1, 8, 6, generator=gen)
    mask = torch.arange(8)[None] < 5
    padded = update_W(nmf, power, speech, mask)
    power_garbage = torch.where(mask[..., None], power, 1e3)
    short = NMFNoise(nmf.W, nmf.H[..., :5])
    torch.testing.assert_close(update_W(nmf, power_garbage, speech, mask).W, padded.W)
    torch.testing.assert_close(update_W(short, power[:, :5], speech[:, :, :5], mask[:, :5]).W, padded.W)


# -- the loop on tiny models ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, past",
    [
        ("vae", "generated"),
        ("dkf", "generated"),
        ("rvae", "generated"),
        ("srnn", "generated"),
        ("transformer", "generated"),
        ("srnn", "estimate"),
        ("transformer", "estimate"),
    ],
)
def test_batch_equals_one_at_a_time(kind: str, past: str) -> None:
    lengths = [14, 8, 11]
    X = noisy_stfts(lengths)
    model = tiny_model(kind)
    config = VEMConfig(niter=3, nmf_rank=3, mstep_samples=2, wf_samples=2, lr=1e-2, seed=5, past=past)
    batch = enhance_spectrogram(model, X, config, lengths=lengths)
    for b, T in enumerate(lengths):
        alone = enhance_spectrogram(model, X[b, :T], config, keys=[b])
        together = batch.utterance(b)
        for name in ("speech", "speech_var", "noise_var", "wiener_gain", "gain", "losses", "estep_recon", "estep_kl"):
            torch.testing.assert_close(
                getattr(together, name),
                getattr(alone, name),
                rtol=1e-5,
                atol=1e-7,
                msg=lambda m: f"{kind} utterance {b} {name}: {m}",
            )
        torch.testing.assert_close(together.nmf.W, alone.nmf.W, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(together.nmf.H, alone.nmf.H, rtol=1e-5, atol=1e-7)
    assert bool((batch.speech[1, 8:] == 0).all())


def test_utterances_draw_from_their_own_streams() -> None:
    """Different keys give different draws; the global random state is neither used nor changed."""
    X = noisy_stfts([20, 20])
    model = tiny_model("vae")
    config = VEMConfig(niter=2, nmf_rank=2)
    before = torch.get_rng_state()
    first = enhance_spectrogram(model, X, config)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1234)
    again = enhance_spectrogram(model, X, config)
    torch.testing.assert_close(again.wiener_gain, first.wiener_gain, rtol=0, atol=0)
    assert not torch.equal(first.nmf.W[0], first.nmf.W[1])
    other_keys = enhance_spectrogram(model, X, config, keys=["a", "b"])
    assert not torch.equal(other_keys.nmf.W, first.nmf.W)


@pytest.mark.parametrize("kind", ["rvae", "srnn"])
def test_caller_model_is_left_unchanged(kind: str) -> None:
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    result = enhance_spectrogram(model, noisy_stfts([25]), VEMConfig(niter=3, nmf_rank=2, lr=0.1))
    assert result.iterations.item() == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_encoder_copy_shares_only_the_frozen_part() -> None:
    model = tiny_model("srnn")
    clone = encoder_copy(model)
    ours = {p.data_ptr() for p in model.parameters()}
    copied = clone.encoder_parameters()
    assert len(copied) == len(model.encoder_parameters()) and not any(p.data_ptr() in ours for p in copied)
    shared = [p for p in clone.parameters() if p.data_ptr() in ours]
    assert len(shared) == len(list(model.parameters())) - len(copied) and not any(p.requires_grad for p in shared)


@pytest.mark.parametrize("kind", ["dkf", "rvae", "srnn", "transformer"])
def test_fine_tuning_the_heads_updates_only_them_and_leaves_the_rest_without_gradients(kind: str) -> None:
    model = tiny_model(kind)
    heads = {id(p) for p in model.encoder_head_parameters()}
    trunk = [p for p in model.encoder_parameters() if id(p) not in heads]
    assert heads and trunk and heads <= {id(p) for p in model.encoder_parameters()}
    clone = encoder_copy(model, "heads")
    ours = {p.data_ptr() for p in model.parameters()}
    tuned = [p for p in clone.parameters() if p.data_ptr() not in ours]
    assert len(tuned) == len(heads) and all(p.requires_grad for p in tuned)
    assert all(not p.requires_grad for p in clone.parameters() if p.data_ptr() in ours)
    # the E-step's backward pass reaches the heads only, and the run changes the result of fine-tuning everything
    X = noisy_stfts([30], seed=4)
    config = VEMConfig(niter=4, nmf_rank=2, lr=0.05, past="estimate")
    full = enhance_spectrogram(model, X, config)
    part = enhance_spectrogram(model, X, replace(config, finetune="heads"))
    assert torch.isfinite(part.wiener_gain).all() and not torch.equal(part.wiener_gain, full.wiener_gain)
    with pytest.raises(ValueError, match="finetune"):
        VEMConfig(finetune="decoder")


def test_the_neutral_value_of_a_later_setting_keeps_cache_keys() -> None:
    official = VEMConfig.official()
    later = ("finetune", "precision")
    assert not set(later) & set(settings_identity(official))
    assert settings_identity(replace(official, finetune="heads"))["finetune"] == "heads"
    assert settings_identity(replace(official, precision="bfloat16"))["precision"] == "bfloat16"
    assert settings_identity(official) == {k: v for k, v in asdict(official).items() if k not in later}


@pytest.mark.parametrize("kind", ["transformer", "dkf"])
def test_bf16_prior_passes_run_in_bf16_where_native_and_fall_back_to_float32(kind: str, monkeypatch) -> None:
    model = tiny_model(kind)
    X = noisy_stfts([30, 22], seed=6)
    config = VEMConfig(niter=2, nmf_rank=2, lr=1e-2, deterministic=True)  # no draws to amplify the rounding
    full = enhance_spectrogram(model, X, config)
    monkeypatch.setattr(common, "computes_bf16", lambda device: True)
    half = enhance_spectrogram(model, X, replace(config, precision="bfloat16"))
    # bf16 forward passes change the result, not the outputs' precision, and stay close to float32
    assert half.wiener_gain.dtype == full.wiener_gain.dtype == torch.float32
    assert not torch.equal(half.wiener_gain, full.wiener_gain)
    assert float((half.wiener_gain - full.wiener_gain).abs().mean()) < 0.01
    assert torch.allclose(half.losses, full.losses, rtol=0.01)
    # a device without bf16 arithmetic runs float32, bit for bit
    monkeypatch.setattr(common, "computes_bf16", lambda device: False)
    fallback = enhance_spectrogram(model, X, replace(config, precision="bfloat16"))
    assert torch.equal(fallback.wiener_gain, full.wiener_gain)
    with pytest.raises(ValueError, match="precision"):
        VEMConfig(precision="float16")


@pytest.mark.parametrize("kind", ["vae", "rvae"])
def test_loss_decreases_and_gains_are_valid(kind: str) -> None:
    lengths = [40]
    X = noisy_stfts(lengths, seed=2)
    result = enhance_spectrogram(tiny_model(kind), X, VEMConfig(niter=15, nmf_rank=4, tol=0.0, lr=1e-2))
    losses = result.losses[0]
    assert losses[-1] < losses[0] - 0.05 and (losses.diff() < 1e-3).float().mean() > 0.8
    gains = result.wiener_gain
    assert float(gains.min()) >= 0 and float(gains.max()) <= 1
    assert bool((result.speech.abs() <= X.abs() * (1 + 1e-6)).all())
    assert float(result.gain.min()) > 0 and bool(torch.isfinite(result.speech).all())


def test_speech_estimate_inverts_to_the_input_length() -> None:
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(5000, generator=gen) * torch.hann_window(5000)
    X = stft(wave)
    result = enhance_spectrogram(tiny_model("vae"), X, VEMConfig(niter=2, nmf_rank=2))
    out = istft(result.speech[0], length=wave.numel())
    assert out.shape == wave.shape and bool(torch.isfinite(out).all())
    # speech + noise estimates add back up to the mixture (WFn = 1 - WFs)
    noise = istft((1 - result.wiener_gain[0]) * X, length=wave.numel())
    torch.testing.assert_close(out + noise, wave, rtol=0, atol=1e-5)


def test_rank_samples_and_iterations_are_honoured() -> None:
    model = tiny_model("vae")
    calls: list[int] = []
    model.decoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    lengths = [12, 9]
    config = VEMConfig(niter=4, nmf_rank=5, mstep_samples=2, wf_samples=3, estep_epochs=2, tol=0.0)
    result = enhance_spectrogram(model, noisy_stfts(lengths), config, lengths=lengths)
    assert result.nmf.W.shape == (2, F, 5) and result.nmf.H.shape == (2, 5, 12)
    assert result.losses.shape == (2, 4) and result.iterations.tolist() == [4, 4]
    per_iteration = [1, 1, 1, 1, 2, 2]  # two E-step epochs x two utterances, then two M-step draws
    assert calls == per_iteration * 4 + [3, 3]


@pytest.mark.parametrize("kind", ["srnn", "transformer"])
def test_autoregressive_priors_read_the_generated_or_the_estimated_past(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """past="generated" decodes in generation mode (eq. 31), then every frame at once from the generated
    outputs; past="estimate" teacher-forces the noisy power in the first E-step, then the posterior clean-power
    estimate E[|s|^2 | x] of the last M-step."""
    model = tiny_model(kind)
    X = noisy_stfts([16], seed=4)
    power = X.abs().square()
    calls: list[tuple[torch.Tensor | None, float, torch.Tensor]] = []
    decode = type(model).decode

    def recording(self, post, s=None, feedback=0.0):
        out = decode(self, post, s, feedback)
        calls.append((None if s is None else s.detach().clone(), feedback, out.y_logvar.detach().exp()))
        return out

    monkeypatch.setattr(type(model), "decode", recording)
    enhance_spectrogram(model, X, VEMConfig(niter=2, nmf_rank=2, tol=0.0, past="generated"))
    assert [feedback for _, feedback, _ in calls] == [1.0, 0.0] * 5  # 2 x (E-step, M-step draw), Wiener filter
    for (_, _, generated), (past, _, _) in zip(calls[::2], calls[1::2]):
        torch.testing.assert_close(past, generated)
    calls.clear()
    config = VEMConfig(niter=2, nmf_rank=2, tol=0.0, past="estimate", deterministic=True)
    result = enhance_spectrogram(model, X, config)
    assert [feedback for _, feedback, _ in calls] == [0.0] * 5  # 2 x (E-step, M-step draw), Wiener filter
    torch.testing.assert_close(calls[0][0], power)
    # after iteration 1, the past is (|G X|^2 + G W H) / g, G = g v_s / (g v_s + W H) from its M-step
    calls.clear()
    first = enhance_spectrogram(model, X, replace(config, niter=1))
    scaled = first.gain[..., None] * calls[1][2]
    wiener = scaled / (scaled + first.noise_var)
    expected = (wiener.square() * power + wiener * first.noise_var) / first.gain[..., None]
    torch.testing.assert_close(calls[-1][0], expected, rtol=1e-4, atol=1e-9)
    assert bool(torch.isfinite(result.speech).all())


@pytest.mark.parametrize("kind", ["srnn", "transformer"])
def test_generated_past_in_two_passes_equals_generation_under_autograd(kind: str) -> None:
    """Decoding the generated outputs again as a teacher-forced past gives the values and the encoder gradients
    of generation mode itself, because models feed their outputs back detached."""
    model = tiny_model(kind)
    s = noisy_stfts([16], seed=5).abs().square().float()
    target = torch.rand_like(s)

    def loss_and_grads(two_passes: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        post = model.infer(s, sample=True)
        if two_passes:
            dec = model.decode(post, generated_past(model, post), feedback=0.0)
        else:
            dec = model.decode(post, None, feedback=1.0)
        loss = (dec.y_logvar * target).sum() + dec.prior_logvar.square().sum()
        return loss, torch.autograd.grad(loss, model.encoder_parameters(), allow_unused=True)

    (one, grads_one), (two, grads_two) = loss_and_grads(False), loss_and_grads(True)
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_one, grads_two):
        assert (a is None) == (b is None)
        if a is not None:  # float32 sums taken in another order: differences of about eps times the tensor's scale
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def expected_stop(losses: list[float], tol: float, window: int) -> int:
    """Iterations run under the rule: stop once the mean loss of the last `window` iterations
    differs from that of the `window` before by less than tol, relatively."""
    for n in range(2 * window, len(losses) + 1):
        before, after = np.mean(losses[n - 2 * window : n - window]), np.mean(losses[n - window : n])
        if abs(before - after) < tol * abs(before):
            return n
    return len(losses)


def test_convergence_stop_is_per_utterance() -> None:
    lengths = [16, 12, 14]
    X = noisy_stfts(lengths)
    model = tiny_model("vae")
    never = enhance_spectrogram(model, X, VEMConfig(niter=8, nmf_rank=2, lr=1e-2, tol=0.0), lengths=lengths)
    assert never.iterations.tolist() == [8, 8, 8]
    windows = never.losses.unfold(1, 2, 1).mean(-1)  # (3, 7) means over 2 iterations
    changes = (windows[:, 2:] - windows[:, :-2]).abs() / windows[:, :-2].abs()
    tol = float(changes.flatten().median())
    stopped = enhance_spectrogram(model, X, VEMConfig(niter=8, nmf_rank=2, lr=1e-2, tol=tol, window=2), lengths=lengths)
    expected = [expected_stop(never.losses[b].tolist(), tol, 2) for b in range(3)]
    assert stopped.iterations.tolist() == expected and len(set(expected)) > 1
    for b, n in enumerate(expected):
        torch.testing.assert_close(stopped.losses[b, :n], never.losses[b, :n])
        assert bool(stopped.losses[b, n:].isnan().all())


@pytest.mark.parametrize("kind, past", [("dkf", "generated"), ("srnn", "generated"), ("transformer", "estimate")])
def test_snapshots_equal_shorter_runs(kind: str, past: str) -> None:
    lengths = [12, 9]
    X = noisy_stfts(lengths)
    model = tiny_model(kind)
    config = VEMConfig(niter=5, nmf_rank=3, wf_samples=2, lr=1e-2, seed=2, past=past)
    full = enhance_spectrogram(model, X, config, lengths=lengths, snapshots=[2, 5])
    plain = enhance_spectrogram(model, X, config, lengths=lengths)
    torch.testing.assert_close(full.wiener_gain, plain.wiener_gain, rtol=0, atol=0)  # the run itself is unchanged
    assert sorted(full.snapshots) == [2, 5] and full.snapshots[5][0] is full.wiener_gain
    short = enhance_spectrogram(model, X, replace(config, niter=2), lengths=lengths)
    torch.testing.assert_close(full.snapshots[2][0], short.wiener_gain, rtol=0, atol=0)
    assert 0 < full.snapshots[2][1] < full.snapshots[5][1] == full.seconds
    with pytest.raises(ValueError, match="snapshots"):
        enhance_spectrogram(model, X, config, lengths=lengths, snapshots=[6])


def test_snapshots_after_a_convergence_stop_equal_the_stopped_run() -> None:
    lengths = [16, 12]
    X = noisy_stfts(lengths)
    model = tiny_model("vae")
    config = VEMConfig(niter=12, nmf_rank=2, lr=1e-2, tol=1.0, window=2)  # every utterance stops after 4
    full = enhance_spectrogram(model, X, config, lengths=lengths, snapshots=[3, 8])
    assert full.iterations.tolist() == [4, 4]
    for k in (3, 8):
        shorter = enhance_spectrogram(model, X, replace(config, niter=k), lengths=lengths)
        torch.testing.assert_close(full.snapshots[k][0], shorter.wiener_gain, rtol=0, atol=0)


def test_priors_run_their_own_settings_unless_asked_otherwise() -> None:
    model = tiny_model("vae")
    assert VEMConfig().niter == DEFAULT_ITERATIONS and InferenceRequest().for_prior(model) == VEMConfig()
    model.inference = {"engine": "vem", "niter": 4, "lr": 0.01}
    assert InferenceRequest().for_prior(model) == VEMConfig(niter=4, lr=0.01)
    assert InferenceRequest(settings={"niter": 2}).for_prior(model) == VEMConfig(niter=2, lr=0.01)
    assert InferenceRequest(official=True).for_prior(model) == VEMConfig.official()  # official ignores the prior's
    assert InferenceRequest("langevin").for_prior(model) == LangevinConfig()  # its own are the VEM's
    assert model.enhancer().settings == VEMConfig(niter=4, lr=0.01)
    assert model.enhancer(VEMConfig(niter=2)).settings == VEMConfig(niter=2)  # exact settings are kept
    model.inference = {"engine": "langevin", "niter": 30}
    assert InferenceRequest().for_prior(model) == LangevinConfig(niter=30)
    # its own Wiener average shrinks to fit fewer iterations asked for, never one given or one that fits
    model.inference = {"engine": "langevin", "niter": 100, "wf_samples": 50}
    assert InferenceRequest().for_prior(model) == LangevinConfig(niter=100, wf_samples=50)
    assert InferenceRequest(settings={"niter": 30}).for_prior(model) == LangevinConfig(niter=30, wf_samples=20)
    assert InferenceRequest(settings={"niter": 80}).for_prior(model) == LangevinConfig(niter=80, wf_samples=50)
    fewer = {"niter": 30, "warmup": 25}
    assert InferenceRequest(settings=fewer).for_prior(model) == LangevinConfig(niter=30, warmup=25, wf_samples=5)
    with pytest.raises(ValueError, match=r"wf_samples \(40\) cannot exceed the iterations after the warm-up \(20\)"):
        InferenceRequest(settings={"niter": 30, "wf_samples": 40}).for_prior(model)
    assert InferenceRequest("vem").for_prior(model) == VEMConfig()
    assert InferenceRequest(official=True).for_prior(model) == VEMConfig.official()
    X = noisy_stfts([12])
    model.inference = {"engine": "vem", "niter": 4, "nmf_rank": 2}
    assert model.enhancer().gains([X[0]], ["a"]).iterations == [4]
    with pytest.raises(ValueError, match="warmup: not settings of the vem engine"):
        InferenceRequest(settings={"warmup": 3}).for_prior(model)
    with pytest.raises(ValueError, match="official settings are the VEM's"):
        InferenceRequest("langevin", official=True)
    with pytest.raises(ValueError, match="niter must be positive"):
        VEMConfig(niter=0)


def test_official_preset_and_validation() -> None:
    official = VEMConfig.official()
    assert (
        official.niter,
        official.nmf_rank,
        official.lr,
        official.wf_samples,
        official.estep_epochs,
        official.kl_weight,
        official.tol,
    ) == (300, 8, 1e-3, 1, 1, 1.0, 0.0)
    assert VEMConfig.official(niter=5).niter == 5 and official.past == "generated"
    with pytest.raises(ValueError, match="past must be one of"):
        VEMConfig(past="clean")
    with pytest.raises(ValueError, match="nmf_rank"):
        VEMConfig(nmf_rank=0)
    model = tiny_model("vae")
    with pytest.raises(ValueError, match="complex STFT"):
        enhance_spectrogram(model, torch.zeros(10, F))
    with pytest.raises(ValueError, match="complex STFT"):
        enhance_spectrogram(model, torch.zeros(10, 100, dtype=torch.complex64))
    with pytest.raises(ValueError, match="lengths"):
        enhance_spectrogram(model, noisy_stfts([10, 10]), lengths=[10, 11])
    X = noisy_stfts([10, 10])
    with pytest.raises(ValueError, match="keys"):
        enhance_spectrogram(model, X, keys=[0])
    with pytest.raises(ValueError, match=r"utterances \[1\] are digital silence"):
        enhance_spectrogram(model, torch.stack([X[0], torch.zeros_like(X[1])]))
    with pytest.raises(ValueError, match="NaN"):
        enhance_spectrogram(model, torch.full((10, F), complex("nan"), dtype=torch.complex64))


def test_frames_of_digital_silence_stay_finite():
    """Zero frames inside an utterance (digital silence) must not turn the VEM into NaN."""
    torch.manual_seed(0)
    model = build_model({"name": "vae", "z_dim": 4, "dense_x_z": [16]})
    X = torch.randn(100, 513, dtype=torch.complex64)
    X[40:60] = 0
    result = enhance_spectrogram(model, X, VEMConfig(niter=5, tol=0.0))
    assert torch.isfinite(result.speech).all() and torch.isfinite(result.wiener_gain).all()
    assert torch.all(result.speech[0, 40:60] == 0)
