import os

import numpy as np
import pytest
import soundfile as sf
from conftest import tone_burst

from speechdvae import audio


def test_trim_keeps_the_active_span_on_the_hop_grid():
    x = tone_burst(lead=0.5, seconds=1.0, tail=0.5)
    start, end = audio.trim_bounds(x)
    on, off = 8000, 24000
    # librosa's rule keeps whole 512-sample frames (centred, 2048 long) around the burst
    assert on - 2048 <= start <= on and start % 512 == 0
    assert off <= end <= off + 2048
    assert np.allclose(audio.trim(x), x[start:end])


def test_trim_threshold_is_relative_to_the_peak_frame():
    quiet = tone_burst(lead=0.5, seconds=0.5, tail=0.0, amplitude=0.5)
    # a -40 dB tail is cut, a -20 dB tail is kept
    for level_db, kept in ((-40, False), (-20, True)):
        tail = 0.5 * 10 ** (level_db / 20) * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        x = np.concatenate([quiet, tail.astype(np.float32)])
        _, end = audio.trim_bounds(x)
        assert (end > len(quiet) + 8000) == kept


def test_trim_of_digital_silence_keeps_everything_like_librosa():
    # every frame equals the (zero) peak frame, so none is below it; peak_normalize then rejects it
    assert audio.trim_bounds(np.zeros(16000)) == (0, 16000)
    assert audio.trim_bounds(np.zeros(0)) == (0, 0)


def test_trim_matches_official_reference(official_dir):
    ref = np.load(official_dir / "reference" / "inputs.npz")
    for utt in ("utt1", "utt2"):
        assert audio.trim_bounds(ref[f"{utt}_wave_raw"]) == (int(ref[f"{utt}_trim_begin"]), int(ref[f"{utt}_trim_end"]))


def test_peak_normalize_and_silence_error():
    x = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    assert np.max(np.abs(audio.peak_normalize(x))) == pytest.approx(1.0)
    with pytest.raises(audio.AudioError):
        audio.peak_normalize(np.zeros(10))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_read_resamples_and_downmixes(tmp_path, sr):
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([left, left], axis=1)
    path = tmp_path / f"tone_{sr}.flac"
    sf.write(path, stereo, sr, subtype="PCM_24")
    x, original_sr = audio.read_audio(path)
    assert original_sr == sr and x.dtype == np.float32
    assert abs(len(x) - 16000) <= 1
    # the resampled tone is still a 300 Hz sine of amplitude 0.5
    ref = 0.5 * np.sin(2 * np.pi * 300 * np.arange(len(x)) / 16000)
    assert np.max(np.abs(x[400:-400] - ref[400:-400])) < 2e-3


def test_read_int_wav_and_ogg(tmp_path):
    x = (0.3 * np.sin(2 * np.pi * 500 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    sf.write(tmp_path / "a.ogg", x, 16000)
    wav, _ = audio.read_audio(tmp_path / "a.wav")
    ogg, _ = audio.read_audio(tmp_path / "a.ogg")
    assert np.max(np.abs(wav - x)) < 1e-4
    assert np.corrcoef(ogg[1000:15000], x[1000:15000])[0, 1] > 0.99


def test_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(audio.AudioError, match="bad.wav"):
        audio.read_audio(bad)
    with pytest.raises(audio.AudioError, match="missing.wav"):
        audio.read_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.read_audio(tmp_path / "empty.wav")


def test_write_never_clips_and_is_atomic(tmp_path):
    x = np.array([0.0, 2.0, -1.0, 0.5], dtype=np.float32)
    path = tmp_path / "out.wav"
    audio.write_audio(path, x)
    y, _ = sf.read(path, dtype="float32")
    assert np.max(np.abs(y)) <= 1.0 and y[1] == pytest.approx(y.max()) and y[2] == pytest.approx(-0.5, abs=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_noise_floor():
    clean = tone_burst(floor=0.0)
    noisy = tone_burst(floor=0.05)
    assert audio.noise_floor_db(clean) < -100
    assert -40 < audio.noise_floor_db(noisy) < -20
