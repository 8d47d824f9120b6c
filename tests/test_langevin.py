"""Langevin posterior sampling: batching, random streams, settings, every prior family, the enhancer and the command
line, and, on a toy prior whose speech can be told from the noise, that it enhances."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noisy_stfts, tiny_model, tone_burst

import speechdvae
from speechdvae.cli import build_parser
from speechdvae.commands import ENGINES
from speechdvae.enhancement.enhancer import INFERENCE_CONFIGS, LangevinEnhancer, VEMEnhancer, load_enhancer
from speechdvae.enhancement.langevin import Chain, LangevinConfig, LangevinResult, enhance_by_sampling
from speechdvae.enhancement.vem import VEMConfig
from speechdvae.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = LangevinConfig(niter=4, warmup=1, wf_samples=2, nmf_rank=3, step_size=0.05, seed=5)
FIELDS = ("speech", "speech_var", "noise_var", "wiener_gain", "gain", "losses", "step_sizes")


@pytest.mark.parametrize(
    "kind, past",
    [
        ("vae", "estimate"),
        ("dkf", "estimate"),
        ("rvae", "estimate"),
        ("srnn", "estimate"),
        ("srnn", "generated"),
        ("transformer", "estimate"),
    ],
)
def test_batch_equals_one_at_a_time(kind: str, past: str) -> None:
    lengths = [14, 8, 11]
    X = noisy_stfts(lengths)
    model = tiny_model(kind)
    config = replace(FAST, past=past, steps=2)
    batch = enhance_by_sampling(model, X, config, lengths=lengths)
    assert batch.speech.shape == X.shape and batch.losses.shape == (3, config.niter)
    assert batch.iterations.tolist() == [config.niter] * 3 and batch.lengths.tolist() == lengths
    assert bool((batch.speech[1, 8:] == 0).all()) and bool((batch.wiener_gain[1, 8:] == 0).all())
    for b, T in enumerate(lengths):
        alone = enhance_by_sampling(model, X[b, :T], config, keys=[b])
        together = batch.utterance(b)
        assert isinstance(together, LangevinResult) and together.speech.shape == (1, T, 513)
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(together, name),
                getattr(alone, name),
                rtol=1e-5,
                atol=1e-7,
                msg=lambda m: f"{kind} utterance {b} {name}: {m}",
            )
        torch.testing.assert_close(together.nmf.W, alone.nmf.W, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(together.nmf.H, alone.nmf.H, rtol=1e-5, atol=1e-7)
    gains = batch.wiener_gain
    assert bool(torch.isfinite(batch.speech).all()) and float(gains.min()) >= 0 and float(gains.max()) <= 1


@pytest.mark.parametrize(
    "kind, past, reused", [("dkf", "estimate", True), ("srnn", "generated", True), ("srnn", "estimate", False)]
)
def test_reused_forward_passes_equal_fresh_ones(monkeypatch, kind: str, past: str, reused: bool) -> None:
    """Reusing the accepted proposal's forward pass (and the warm-up's decoding) computes what decoding anew does,
    with one forward pass per iteration instead of two; an estimated past changes between iterations: no reuse."""
    lengths = [14, 9]
    X = noisy_stfts(lengths)
    model = tiny_model(kind)
    config = replace(FAST, niter=7, warmup=2, past=past)
    calls = {"n": 0}
    decode = Chain.decode

    def counted(self, latents, grads):
        calls["n"] += 1
        return decode(self, latents, grads)

    monkeypatch.setattr(Chain, "decode", counted)
    fast = enhance_by_sampling(model, X, config, lengths=lengths)
    fast_calls, calls["n"] = calls["n"], 0
    run, warm = Chain.run, Chain.speech_variance

    def fresh_run(self, gain, noise_var):
        self.decoded = None
        return run(self, gain, noise_var)

    def fresh_warm(self):
        self.warm_var = None
        return warm(self)

    monkeypatch.setattr(Chain, "run", fresh_run)
    monkeypatch.setattr(Chain, "speech_variance", fresh_warm)
    fresh = enhance_by_sampling(model, X, config, lengths=lengths)
    for name in FIELDS:
        torch.testing.assert_close(getattr(fast, name), getattr(fresh, name), rtol=1e-6, atol=1e-8)
    sampled = config.niter - config.warmup
    assert calls["n"] == 2 * sampled * len(lengths)
    assert fast_calls == ((sampled + 1) if reused else 2 * sampled) * len(lengths)


def test_utterances_draw_from_their_own_streams() -> None:
    """The same seed and key give the same result whatever the global random state, which is left as it was;
    another key or seed gives another."""
    X = noisy_stfts([20, 20])
    X[1] = X[0]
    model = tiny_model("dkf")
    before = torch.get_rng_state()
    first = enhance_by_sampling(model, X, FAST, keys=["a", "b"])
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1234)
    again = enhance_by_sampling(model, X, FAST, keys=["a", "b"])
    torch.testing.assert_close(again.wiener_gain, first.wiener_gain, rtol=0, atol=0)
    assert not torch.allclose(first.wiener_gain[0], first.wiener_gain[1])  # same input, different keys
    swapped = enhance_by_sampling(model, X, FAST, keys=["b", "a"])
    torch.testing.assert_close(swapped.wiener_gain, first.wiener_gain.flip(0), rtol=0, atol=0)
    reseeded = enhance_by_sampling(model, X, replace(FAST, seed=6), keys=["a", "b"])
    assert not torch.allclose(reseeded.wiener_gain, first.wiener_gain)


@pytest.mark.parametrize("kind", ["srnn", "transformer"])
def test_caller_model_is_left_unchanged(kind: str) -> None:
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    enhance_by_sampling(model, noisy_stfts([12]), FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_latents_move_only_after_the_warmup() -> None:
    """During the warm-up only the noise model moves, so the step size cannot change the losses; afterwards it does."""
    X = noisy_stfts([16])
    model = tiny_model("vae")
    small = enhance_by_sampling(model, X, replace(FAST, niter=6, warmup=3))
    large = enhance_by_sampling(model, X, replace(FAST, niter=6, warmup=3, step_size=0.5))
    torch.testing.assert_close(small.losses[:, :3], large.losses[:, :3], rtol=0, atol=0)
    assert not torch.allclose(small.losses[:, 3:], large.losses[:, 3:])


def test_steps_to_non_finite_densities_are_refused() -> None:
    """A decoder that gives an infinite variance far from the origin: every step of a huge size lands there, is
    refused and halves the step size, so the latents stay where the encoder put them and the output stays finite."""
    model = tiny_model("vae")
    far = lambda module, args, out: torch.where(args[0].abs().amax(-1, keepdim=True) > 10, math.inf, out)  # noqa: E731
    model.decoder.register_forward_hook(far)
    X = noisy_stfts([12])
    config = replace(FAST, niter=5, warmup=1, steps=2, step_size=1e4)
    result = enhance_by_sampling(model, X, config)
    assert result.step_sizes.tolist() == [1e4 / 2**8]  # (5 - 1) iterations of 2 steps
    assert bool(torch.isfinite(result.wiener_gain).all())
    still = enhance_by_sampling(model, X, replace(config, step_size=1e-30))
    torch.testing.assert_close(result.wiener_gain, still.wiener_gain)


@pytest.mark.parametrize("kind", ["dkf", "srnn"])
def test_snapshots_equal_shorter_runs(kind: str) -> None:
    lengths = [12, 9]
    X = noisy_stfts(lengths)
    model = tiny_model(kind)
    config = LangevinConfig(niter=9, warmup=2, wf_samples=3, nmf_rank=2, seed=4)
    full = enhance_by_sampling(model, X, config, lengths=lengths, snapshots=[5, 7, 9])
    plain = enhance_by_sampling(model, X, config, lengths=lengths)
    torch.testing.assert_close(full.wiener_gain, plain.wiener_gain, rtol=0, atol=0)
    for k in (5, 7):
        shorter = enhance_by_sampling(model, X, replace(config, niter=k), lengths=lengths)
        torch.testing.assert_close(full.snapshots[k][0], shorter.wiener_gain, rtol=1e-6, atol=1e-7)
    assert full.snapshots[9][0] is full.wiener_gain and full.snapshots[5][1] < full.snapshots[9][1]
    with pytest.raises(ValueError, match="snapshots"):
        enhance_by_sampling(model, X, config, lengths=lengths, snapshots=[4])  # before warm-up + wf_samples


def test_settings_are_checked() -> None:
    for field, value in (("niter", 0), ("steps", 0), ("step_size", 0.0), ("step_size", -1.0), ("nmf_rank", 0)):
        with pytest.raises(ValueError, match=f"LangevinConfig.{field} must be positive"):
            LangevinConfig(**{field: value})
    with pytest.raises(ValueError, match="step_size must be finite"):
        LangevinConfig(step_size=math.inf)
    with pytest.raises(ValueError, match=r"warmup must be in \[0, niter=10\)"):
        LangevinConfig(niter=10, warmup=10)
    with pytest.raises(ValueError, match=r"wf_samples \(6\) cannot exceed the iterations after the warm-up \(5\)"):
        LangevinConfig(niter=10, warmup=5, wf_samples=6)
    with pytest.raises(ValueError, match="past must be one of generated, estimate"):
        LangevinConfig(past="clean")
    model = tiny_model("vae")
    with pytest.raises(ValueError, match="complex STFT"):
        enhance_by_sampling(model, torch.zeros(10, 513))
    with pytest.raises(ValueError, match="lengths"):
        enhance_by_sampling(model, noisy_stfts([10, 10]), FAST, lengths=[10, 11])
    with pytest.raises(ValueError, match="keys"):
        enhance_by_sampling(model, noisy_stfts([10, 10]), FAST, keys=[0])


def toy_prior_and_mixture() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A VAE whose linear decoder mixes two harmonic combs (periods of 10 and 14 bins, ±3 in log-variance), speech
    drawn from it with one comb per block of 10 frames, white noise of its mean variance, and the oracle Wiener
    estimate: the speech can be told from the noise only by choosing the right comb in each frame."""
    torch.manual_seed(0)
    model = build_model({"name": "vae", "z_dim": 2, "dense_x_z": [16], "dense_z_x": [], "log_input": True}).eval()
    bins = torch.arange(513, dtype=torch.float32)
    with torch.no_grad():
        model.decoder.logvar.weight.copy_(torch.stack([3 * torch.cos(2 * math.pi * bins / p) for p in (10, 14)], 1))
        model.decoder.logvar.bias.fill_(-1.0)
        z = torch.zeros(40, 2)
        z[torch.arange(40), (torch.arange(40) // 10) % 2] = 1.5
        speech_var = model.decoder(z).exp()
    gen = torch.Generator().manual_seed(1)

    def draw(var: torch.Tensor) -> torch.Tensor:
        parts = [torch.randn(var.shape, generator=gen) for _ in range(2)]
        return (var / 2).sqrt() * torch.complex(*parts)

    noise_var = torch.full_like(speech_var, float(speech_var.mean()))
    S = draw(speech_var)
    X = S + draw(noise_var)
    return model, S, X, speech_var / (speech_var + noise_var) * X


def test_sampling_finds_the_speech_of_a_toy_prior() -> None:
    """With a rank-1 noise model (the noise is white), the chains must pick the right comb in every frame: the
    estimate gains over 2 dB of SNR where latents left at the (random) encoder's draw gain under 0.5 dB."""
    model, S, X, oracle = toy_prior_and_mixture()

    def snr(estimate: torch.Tensor) -> float:
        return 10 * math.log10(float(S.abs().square().sum() / (estimate - S).abs().square().sum()))

    config = LangevinConfig(nmf_rank=1, step_size=0.1)  # latents of a N(0, I) prior travel further than a DKF's
    moved = enhance_by_sampling(model, X, config)
    frozen = enhance_by_sampling(model, X, replace(config, step_size=1e-12))
    assert snr(X) < 0.1 and snr(oracle) > 5
    assert snr(moved.speech[0]) > 2.0 > 0.5 > snr(frozen.speech[0])
    losses = moved.losses[0]
    assert losses[-1] < losses[config.warmup] - 0.02 and losses[-1] < frozen.losses[0, -1] - 0.02


def test_enhancers_follow_the_settings_type() -> None:
    assert list(ENGINES) == list(INFERENCE_CONFIGS)  # the command line's names are the settings' own
    model = tiny_model("srnn")
    assert isinstance(load_enhancer(model), VEMEnhancer) and isinstance(model.enhancer(VEMConfig()), VEMEnhancer)
    enhancer = load_enhancer(model, FAST)
    assert isinstance(enhancer, LangevinEnhancer) and enhancer.settings == FAST and enhancer.prior is model
    spectra = [noisy_stfts([9])[0], torch.zeros(5, 513, dtype=torch.complex64), noisy_stfts([13], seed=1)[0]]
    result = enhancer.gains(spectra, ["x", "silent", "y"])
    assert [tuple(g.shape) for g in result.gains] == [(9, 513), (5, 513), (13, 513)]
    assert result.iterations == [FAST.niter, 0, FAST.niter] and bool((result.gains[1] == 0).all())
    alone = enhancer.gains(spectra[2:], ["y"])
    torch.testing.assert_close(alone.gains[0], result.gains[2], rtol=1e-5, atol=1e-7)


def test_command_line_enhances_with_langevin(tmp_path, tiny) -> None:
    wave = tone_burst(seconds=0.5, floor=0.01)
    sf.write(tmp_path / "noisy.wav", wave, 16000)
    options = ["--inference", "langevin", "--iterations", "3", "--warmup", "1", "--wf-samples", "2", "--step-size"]
    argv = ["enhance", str(tmp_path / "noisy.wav"), "-o", str(tmp_path / "out"), "--model", str(tiny["VAE"])]
    args = build_parser().parse_args([*argv, *options, "0.05", "--workers", "1", "--no-progress"])
    assert args.func(args) == 0
    enhanced, rate = sf.read(tmp_path / "out" / "noisy.wav")
    assert rate == 16000 and enhanced.shape == wave.shape and np.isfinite(enhanced).all()


def test_library_call_takes_the_engine_and_its_settings() -> None:
    wave = tone_burst(seconds=0.3, floor=0.01)
    model = tiny_model("vae")
    speech = speechdvae.enhance(wave, 16000, model, inference="langevin", niter=3, warmup=1, wf_samples=2)
    assert speech.shape == wave.shape and speech.dtype == np.float32 and np.isfinite(speech).all()
    with pytest.raises(ValueError, match="inference engine must be one of vem, langevin"):
        speechdvae.enhance(wave, 16000, model, inference="gibbs")
    with pytest.raises(ValueError, match="lr: not settings of the langevin engine"):
        speechdvae.enhance(wave, 16000, model, inference="langevin", lr=0.1)
