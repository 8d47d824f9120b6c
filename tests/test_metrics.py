"""Metrics against known cases, the reference packages, and bad input that must give NaN, not a crash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pesq
import pytest
import soundfile as sf
from pystoi import stoi

from speechdvae.audio import SAMPLE_RATE, read_audio
from speechdvae.evaluate import metrics as M

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "official-dvae-se" / "reference" / "audio"


def speech_like(seconds: float = 1.5, seed: int = 1) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal that PESQ and ESTOI treat as speech."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    return 0.3 * envelope * voiced / np.max(np.abs(voiced))


def noise_at_snr(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise scaled so that energy(x) / energy(noise) is exactly `snr_db`."""
    noise = rng.standard_normal(len(x))
    return noise * np.sqrt(np.sum(x**2) / np.sum(noise**2) / 10 ** (snr_db / 10))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    path = CLIPS / "conf-getpin.wav"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return read_audio(path)[0].astype(np.float64)


def test_identical_signals_reach_each_metric_optimum() -> None:
    x = speech_like()
    values = M.compute_metrics(x, x)
    assert values["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert values["si_sdr"] > 150.0
    # Maxima of the P.862.2 / P.862.1 mappings at raw 4.5, as computed by the pesq C code.
    assert values["pesq_wb"] == pytest.approx(4.644, abs=1e-3)
    assert values["pesq_nb"] == pytest.approx(4.549, abs=1e-3)
    assert values["pesq_nb_raw"] == pytest.approx(4.5, abs=1e-4)
    assert values["estoi"] == pytest.approx(1.0, abs=1e-9)


def test_si_sdr_of_white_noise_at_10_db() -> None:
    x = speech_like(3.0)
    y = x + noise_at_snr(x, 10.0, np.random.default_rng(0))
    # The only deviation from 10 dB is the chance correlation of noise and speech: the gain
    # error is about |n|/|x|/sqrt(N) = 0.32/220, i.e. 0.013 dB (1 sigma); 0.08 dB is 6 sigma.
    assert M.si_sdr(x, y) == pytest.approx(10.0, abs=0.08)
    assert M.si_sdr(x, 3.0 * y) == pytest.approx(M.si_sdr(x, y), rel=1e-12)
    assert M.si_sdr(x, y + 0.5) == pytest.approx(M.si_sdr(x, y), rel=1e-9)  # zero-mean


def test_si_sdr_is_exact_for_noise_orthogonal_to_zero_mean_speech() -> None:
    x = speech_like()
    x = x - x.mean()
    noise = np.random.default_rng(3).standard_normal(len(x))
    noise -= noise.mean()
    noise -= np.dot(noise, x) / np.dot(x, x) * x
    noise *= np.sqrt(np.dot(x, x) / np.dot(noise, noise) / 10)
    assert M.si_sdr(x, x + noise) == pytest.approx(10.0, abs=1e-9)
    assert M.si_sdr(x, 0.2 * x - 2.0 * noise) == pytest.approx(10 * math.log10(0.04 / 0.4), abs=1e-9)


def test_rmse_matches_a_least_squares_fit_of_the_estimate() -> None:
    rng = np.random.default_rng(5)
    x = speech_like()
    y = 0.7 * x + noise_at_snr(x, 5.0, rng)
    y = np.concatenate([y, rng.standard_normal(37)])  # longer estimate: truncated to the reference
    alpha, *_ = np.linalg.lstsq(y[: len(x), None], x, rcond=None)
    expected = np.sqrt(np.mean((x - alpha[0] * y[: len(x)]) ** 2))
    assert M.rmse(x, y) == pytest.approx(expected, rel=1e-10)
    assert M.rmse(x, -2.0 * x) == pytest.approx(0.0, abs=1e-12)


def test_rmse_of_an_orthogonal_estimate_is_the_reference_rms() -> None:
    x = speech_like()
    y = np.random.default_rng(2).standard_normal(len(x))
    y -= np.dot(y, x) / np.dot(x, x) * x
    assert M.rmse(x, y) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-10)


def test_wrappers_agree_with_the_reference_packages(speech: np.ndarray) -> None:
    noisy = speech + noise_at_snr(speech, 5.0, np.random.default_rng(7))
    values = M.compute_metrics(speech, noisy)
    assert values["pesq_wb"] == pesq.pesq(SAMPLE_RATE, speech, noisy, "wb")
    assert values["pesq_nb"] == pesq.pesq(SAMPLE_RATE, speech, noisy, "nb")
    assert values["estoi"] == stoi(speech, noisy, SAMPLE_RATE, extended=True)
    assert values["pesq_nb_raw"] == M.nb_mos_lqo_to_raw(values["pesq_nb"])
    assert 1.0 < values["pesq_wb"] < 4.0 and 0.3 < values["estoi"] < 0.99


def test_nb_raw_inverts_the_p862_1_mapping() -> None:
    for raw in np.linspace(-0.5, 4.5, 11):
        assert M.nb_mos_lqo_to_raw(M.raw_to_nb_mos_lqo(raw)) == pytest.approx(raw, abs=1e-9)
    # By hand: 0.999 + 4 / (1 + exp(-1.4945 * 3 + 4.6607)) = 0.999 + 4 / 2.19387 = 2.82226.
    assert M.raw_to_nb_mos_lqo(3.0) == pytest.approx(2.82226, abs=1e-5)
    assert M.nb_mos_lqo_to_raw(2.82226) == pytest.approx(3.0, abs=1e-4)


def test_nb_raw_is_clamped_to_the_p862_range() -> None:
    assert M.nb_mos_lqo_to_raw(0.5) == -0.5  # below the lower asymptote 0.999
    assert M.nb_mos_lqo_to_raw(4.9) == 4.5  # between the image of 4.5 and the asymptote 4.999
    assert M.nb_mos_lqo_to_raw(7.0) == 4.5
    assert math.isnan(M.nb_mos_lqo_to_raw(math.nan))


@pytest.mark.parametrize(("ref_zero", "reason"), [(False, "estimate is silent"), (True, "reference is silent")])
def test_silence_gives_nan_and_a_warning(ref_zero: bool, reason: str) -> None:
    x = speech_like()
    ref, est = (np.zeros_like(x), x) if ref_zero else (x, np.zeros_like(x))
    with pytest.warns(M.MetricWarning, match=reason):
        values = M.compute_metrics(ref, est)
    assert set(values) == set(M.DEFAULT_METRICS)
    assert all(math.isnan(v) for v in values.values())


def test_non_finite_samples_give_nan_and_a_warning() -> None:
    x = speech_like()
    est = x.copy()
    est[100] = np.nan
    with pytest.warns(M.MetricWarning, match="estimate contains NaN or infinite"):
        values = M.compute_metrics(x, est)
    assert all(math.isnan(v) for v in values.values())
    ref = x.copy()
    ref[-1] = np.inf
    with pytest.warns(M.MetricWarning, match="reference contains NaN or infinite"):
        assert math.isnan(M.compute_metrics(ref, x, ("si_sdr",))["si_sdr"])


def test_a_short_clip_gives_nan_only_for_pesq_and_estoi() -> None:
    x = speech_like()[:1600]  # 0.1 s
    y = x + noise_at_snr(x, 10.0, np.random.default_rng(0))
    with pytest.warns(M.MetricWarning) as record:
        values = M.compute_metrics(x, y)
    messages = " ".join(str(w.message) for w in record)
    assert "pesq_wb" in messages and "pesq_nb" in messages and "estoi" in messages
    assert "1/4 of a second" in messages and "30 non-silent frames" in messages
    for name in ("pesq_wb", "pesq_nb", "pesq_nb_raw", "estoi"):
        assert math.isnan(values[name])
    assert values["rmse"] == pytest.approx(M.rmse(x, y))
    assert values["si_sdr"] == pytest.approx(10.0, abs=1.0)


def test_single_metric_functions_raise_metric_error() -> None:
    x = speech_like()
    with pytest.raises(M.MetricError, match="silent"):
        M.rmse(x, np.zeros_like(x))
    with pytest.raises(M.MetricError, match="1/4 of a second"):
        M.pesq_wb(x[:1600], x[:1600])
    with pytest.raises(M.MetricError, match="constant"):
        M.si_sdr(np.ones(1000), x[:1000])
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(x, x, ("pesq",))


def test_evaluate_pairs_keeps_order_and_isolates_a_bad_pair() -> None:
    rng = np.random.default_rng(11)
    x = speech_like()
    good = [x + noise_at_snr(x, snr, rng) for snr in (0.0, 10.0, 20.0)]
    bad = good[1].copy()
    bad[50] = np.nan
    pairs = [(x, good[0]), (x, bad), (x, good[1]), (x, good[2])]
    with pytest.warns(M.MetricWarning, match="pair 1: .*NaN or infinite"):
        rows = M.evaluate_pairs(pairs, workers=2)
    assert all(math.isnan(v) for v in rows[1].values())
    for row, est in zip([rows[0], rows[2], rows[3]], good):
        assert row == pytest.approx(M.compute_metrics(x, est), rel=1e-12)  # BLAS threads: last-ulp noise
    assert rows[0]["si_sdr"] < rows[2]["si_sdr"] < rows[3]["si_sdr"]


def test_evaluate_pairs_reads_paths_and_survives_a_missing_file(tmp_path: Path) -> None:
    x = speech_like()
    y = x + noise_at_snr(x, 10.0, np.random.default_rng(4))
    sf.write(tmp_path / "ref.wav", x, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "est.wav", y, SAMPLE_RATE, subtype="FLOAT")
    missing = tmp_path / "missing.wav"
    pairs = [(tmp_path / "ref.wav", tmp_path / "est.wav"), (tmp_path / "ref.wav", missing)]
    with pytest.warns(M.MetricWarning, match="missing.wav"):
        rows = M.evaluate_pairs(pairs, metrics=("rmse", "si_sdr"), workers=1)
    expected = M.compute_metrics(x.astype(np.float32), y.astype(np.float32), ("rmse", "si_sdr"))
    assert rows[0] == pytest.approx(expected, rel=1e-12)
    assert math.isnan(rows[1]["rmse"]) and math.isnan(rows[1]["si_sdr"])


def test_median_ci_by_hand() -> None:
    # Finite values 1..10: median 5.5, quartiles 3.25 and 7.75 (linear interpolation),
    # half-width 1.57 * 4.5 / sqrt(10) = 7.065 / 3.162278 = 2.234149.
    median, half_width = M.median_ci([*range(1, 11), math.nan, math.inf])
    assert median == 5.5
    assert half_width == pytest.approx(2.234149, abs=1e-6)
    assert all(math.isnan(v) for v in M.median_ci([math.nan]))


def test_summary_counts_nan_and_table_names_each_pesq_variant() -> None:
    rows = [{"model": "A", "si_sdr": v, "pesq_nb_raw": 2.0, "pesq_nb": 2.5, "pesq_wb": 2.1} for v in range(1, 11)]
    rows += [
        {"model": "A", "si_sdr": math.nan, "pesq_nb_raw": math.nan, "pesq_nb": math.nan, "pesq_wb": math.nan},
        {"model": "B", "si_sdr": 4.0, "pesq_nb_raw": 3.0, "pesq_nb": 3.1, "pesq_wb": 3.2},
    ]
    summary = M.summarize_metrics(rows, group_by="model")
    assert [row["model"] for row in summary] == ["A", "B"]
    a = summary[0]["si_sdr"]
    assert (a.n_valid, a.n_nan, a.mean, a.median) == (10, 1, 5.5, 5.5)
    assert summary[0]["n"] == 11 and "rmse" not in summary[0]
    table = M.markdown_table(summary)
    header = table.splitlines()[0]
    assert "PESQ-NB (raw P.862)" in header and "PESQ-NB (MOS-LQO)" in header and "PESQ-WB (MOS-LQO)" in header
    assert "| A | 11 | 5.5 ± 2.2 (1 NaN) |" in table
    assert "| B | 1 | 4.0 ± 0.0 |" in table
    assert "| A | 11 | 5.5 (1 NaN) | 2.00 (1 NaN) |" in M.markdown_table(summary, statistic="mean")
