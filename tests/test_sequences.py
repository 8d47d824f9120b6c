import numpy as np
import pytest
import torch
from conftest import tone_burst

from speechdvae import audio, stft
from speechdvae.data.manifest import write_manifest
from speechdvae.data.sequences import (
    WARP_BOUNDARY,
    SequenceDataset,
    SpectrogramCache,
    add_floor,
    at_speed,
    change_speed,
    floor_power,
    preprocess,
    warp_frequencies,
)


@pytest.fixture
def manifest(tmp_path):
    records = []
    for i, seconds in enumerate((1.0, 2.5, 0.2)):
        path = tmp_path / f"u{i}.flac"
        audio.write_audio(path, tone_burst(seconds=seconds, seed=i, floor=0.01), subtype="PCM_24")
        records.append({"id": f"u{i}", "path": str(path), "sha256": str(i)})
    (tmp_path / "bad.wav").write_bytes(b"junk")
    records.append({"id": "bad", "path": str(tmp_path / "bad.wav"), "sha256": "x"})
    write_manifest(tmp_path / "train.jsonl", records)
    return tmp_path / "train.jsonl"


def test_cache_holds_trimmed_normalised_spectrograms(manifest, tmp_path):
    with pytest.warns(UserWarning, match="skipped"):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    assert cache.ids == ["u0", "u1", "u2"] and "bad" in cache.skipped[0]
    x, _ = audio.read_audio(tmp_path / "u1.flac")
    expected = preprocess(x)
    # the stored frames are exactly the preprocessing of the file: trim + peak-normalise + power STFT
    start, end = audio.trim_bounds(x)
    direct = stft.power_spectrogram(torch.from_numpy(x[start:end] / np.abs(x[start:end]).max()).double())
    np.testing.assert_allclose(expected, direct.float().numpy(), rtol=1e-5, atol=1e-6)
    got = cache.frames[cache.offsets[1] : cache.offsets[1] + cache.lengths[1]]
    np.testing.assert_array_equal(got, expected)
    # a second instance reuses the cache without reading audio
    again = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    assert again.folder == cache.folder and np.array_equal(again.lengths, cache.lengths)


def test_non_overlapping_chunks_and_batches(manifest, tmp_path):
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    data = SequenceDataset(cache, seq_len=20)
    assert len(data) == int(sum(n // 20 for n in cache.lengths))
    seen = []
    for batch in data.batches(batch_size=3, shuffle=True, seed=1):
        assert batch.shape[1:] == (20, 513) and batch.dtype == torch.float32
        seen.append(batch)
    seqs = torch.cat(seen)
    assert seqs.shape[0] == len(data)
    # every chunk appears exactly once and equals the cached frames at its start
    expected = torch.stack([torch.from_numpy(np.array(cache.frames[s : s + 20])) for s in data.starts])
    order = [next(i for i in range(len(expected)) if torch.equal(expected[i], s)) for s in seqs]
    assert sorted(order) == list(range(len(data)))
    # the order depends only on (seed, epoch), and skipping batches resumes it
    again = list(data.batches(batch_size=3, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    resumed = list(data.batches(batch_size=3, seed=1, skip=2))
    assert all(torch.equal(a, b) for a, b in zip(seen[2:], resumed))
    assert not torch.equal(next(data.batches(batch_size=3, seed=1, epoch=1)), seen[0])


def test_random_crops_stay_inside_their_file(manifest, tmp_path):
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    data = SequenceDataset(cache, seq_len=20, random_crop=True)
    starts = data.sequence_starts(np.random.default_rng(0))
    files = data.stream_of  # without join_speakers, a stream is a file
    assert np.array_equal(data.rows, np.arange(len(cache.frames)))
    assert np.all(starts >= cache.offsets[files])
    assert np.all(starts + 20 <= cache.offsets[files] + cache.lengths[files])
    assert not np.array_equal(starts, data.starts)


def test_ddp_shards_are_disjoint_and_equal(manifest, tmp_path):
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    data = SequenceDataset(cache, seq_len=10)
    shards = [torch.cat(list(data.batches(4, seed=0, rank=r, world_size=2))) for r in range(2)]
    assert shards[0].shape[0] == shards[1].shape[0] == len(data) // 2
    assert not any(torch.equal(a, b) for a in shards[0] for b in shards[1])


def test_frequency_warp_moves_formants_and_keeps_the_band_edge():
    power = torch.rand(3, 4, 513)
    assert torch.equal(warp_frequencies(power, torch.ones(3)), power)
    knee = int(WARP_BOUNDARY * 512 * 0.9)
    peak = torch.zeros(2, 1, 513)
    peak[:, 0, 100] = 1.0  # below the knee: moves to alpha f
    warped = warp_frequencies(peak, torch.tensor([1.1, 0.9]))
    assert warped[0, 0].argmax() == 110 and warped[1, 0].argmax() == 90
    assert warped[0, 0, 110] == 1.0  # output bin 110 reads input bin 100 exactly
    edge = torch.zeros(2, 1, 513)
    edge[:, 0, 512] = 1.0  # the band edge stays
    assert torch.equal(warp_frequencies(edge, torch.tensor([1.1, 0.9]))[:, 0, 512], torch.ones(2))
    flat = torch.full((2, 5, 513), 3.0)  # interpolation keeps a flat spectrum flat, the map is monotonic
    assert torch.allclose(warp_frequencies(flat, torch.tensor([1.2, 0.8])), flat)
    ramp = torch.arange(513.0).expand(2, 1, 513)
    assert bool((warp_frequencies(ramp, torch.tensor([1.2, 0.8])).diff(dim=-1) > 0).all()) and knee > 100


def test_warped_batches_resume_and_leave_unwarped_data_alone(manifest, tmp_path):
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    plain = list(SequenceDataset(cache, seq_len=20).batches(batch_size=3, seed=1))
    data = SequenceDataset(cache, seq_len=20, warp=0.1)
    warped = list(data.batches(batch_size=3, seed=1))
    assert len(warped) == len(plain) and not any(torch.equal(a, b) for a, b in zip(warped, plain))
    assert all(torch.equal(a, b) for a, b in zip(warped[2:], data.batches(batch_size=3, seed=1, skip=2)))
    with pytest.raises(ValueError, match="warp"):
        SequenceDataset(cache, seq_len=20, warp=0.5)


def test_noise_floor_matches_white_noise_and_resumes(manifest, tmp_path):
    # the floor's level is that of white noise at floor_db dBFS through the project's STFT
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(160000, generator=generator, dtype=torch.float64) * 10 ** (-60 / 20)
    measured = float(stft.power_spectrogram(noise)[4:-4, 1:-1].mean())
    assert abs(measured / floor_power(-60.0) - 1) < 0.01
    floored = add_floor(torch.zeros(2000, 513), -60.0, torch.Generator().manual_seed(1))
    assert abs(float(floored.mean()) / floor_power(-60.0) - 1) < 0.01 and bool((floored > 0).all())
    # batches: the speech plus a floor, drawn anew each epoch, the same on resume
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    plain = list(SequenceDataset(cache, seq_len=20).batches(batch_size=3, seed=1))
    data = SequenceDataset(cache, seq_len=20, floor_db=-60.0)
    batches = list(data.batches(batch_size=3, seed=1))
    assert all(bool((b >= a).all()) and float((b > a).float().mean()) > 0.5 for a, b in zip(plain, batches))
    assert all(torch.equal(a, b) for a, b in zip(batches[2:], data.batches(batch_size=3, seed=1, skip=2)))
    assert not torch.equal(batches[0], next(data.batches(batch_size=3, seed=1, epoch=1)))


def test_joined_speakers_use_short_files_and_keep_speakers_apart(tmp_path):
    records = []
    for i, (seconds, speaker) in enumerate(((0.5, "a"), (0.4, "b"), (0.45, "a"), (1.0, "b"))):
        path = tmp_path / f"u{i}.flac"
        audio.write_audio(path, tone_burst(seconds=seconds, seed=i, floor=0.01), subtype="PCM_24")
        records.append({"id": f"u{i}", "path": str(path), "sha256": str(i), "speaker": speaker})
    write_manifest(tmp_path / "train.jsonl", records)
    cache = SpectrogramCache(tmp_path / "train.jsonl", tmp_path / "cache", show_progress=False)
    assert cache.speakers == ["a", "b", "a", "b"]
    seq_len = int(cache.lengths[[0, 2]].sum()) - 1  # longer than any file of speaker a, shorter than both
    assert seq_len > cache.lengths[[0, 2]].max()
    apart = SequenceDataset(cache, seq_len)
    joined = SequenceDataset(cache, seq_len, join_speakers=True)
    assert len(joined) > len(apart)
    # speaker a's stream is file u0 then file u2, speaker b's u1 then u3, each in manifest order
    order = np.concatenate([np.arange(cache.offsets[f], cache.offsets[f] + cache.lengths[f]) for f in (0, 2, 1, 3)])
    assert np.array_equal(joined.rows, order)
    first = joined.rows[joined.starts[0] + np.arange(seq_len)]
    assert set(first) <= set(order[: cache.lengths[[0, 2]].sum()])  # speaker a's frames only
    for batch in joined.batches(batch_size=len(joined), shuffle=False, seed=0):
        rows = [joined.rows[s + np.arange(seq_len)] for s in joined.starts]
        assert torch.equal(batch, torch.stack([torch.from_numpy(np.array(cache.frames[r])) for r in rows]))


def test_speed_perturbation_scales_time_and_pitch_and_keeps_speed_one(manifest, tmp_path):
    with pytest.warns(UserWarning):
        plain = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False)
    with pytest.warns(UserWarning):
        cache = SpectrogramCache(manifest, tmp_path / "cache", show_progress=False, speeds=(0.9, 1.0, 1.1))
    assert cache.folder != plain.folder
    assert cache.ids == [at_speed(i, s) for i in plain.ids for s in (0.9, 1.0, 1.1)]
    assert cache.ids[:3] == ["u0@0.9", "u0", "u0@1.1"] and cache.speakers[:3] == ["u0@0.9", "u0", "u0@1.1"]
    # speed 1 is the plain file, bit for bit
    row = cache.ids.index("u1")
    got = cache.frames[cache.offsets[row] : cache.offsets[row] + cache.lengths[row]]
    np.testing.assert_array_equal(got, plain.frames[plain.offsets[1] : plain.offsets[1] + plain.lengths[1]])
    # the 440-Hz burst lasts 1 / speed as long (after trimming) and sounds at 440 × speed Hz
    for speed in (0.9, 1.1):
        row = cache.ids.index(f"u1@{speed:g}")
        assert abs(cache.lengths[row] / plain.lengths[1] * speed - 1) < 0.02
        spec = cache.frames[cache.offsets[row] : cache.offsets[row] + cache.lengths[row]]
        peak_hz = float(np.argmax(spec.mean(axis=0))) * audio.SAMPLE_RATE / stft.N_FFT
        assert abs(peak_hz - 440 * speed) <= audio.SAMPLE_RATE / stft.N_FFT
    x = tone_burst(seconds=1.0)
    assert change_speed(x, 1.0) is x and abs(len(change_speed(x, 1.25)) * 1.25 - len(x)) <= 1
    with pytest.raises(ValueError, match="speeds"):
        SpectrogramCache(manifest, tmp_path / "cache", show_progress=False, speeds=(0.9, 0.9))
