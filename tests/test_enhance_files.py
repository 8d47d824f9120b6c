"""File-level enhancement: inputs (files, folders, manifests), output formats, rates and channels,
failures and resume, atomic writes, and the chunked processing of long files (exact joins, no seams,
bounded memory). Priors are tiny random models; the VEM runs a few iterations."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_model

import speechdvae
from speechdvae.audio import AudioError
from speechdvae.checkpoints import load_model, save_model
from speechdvae.cli import build_parser
from speechdvae.cli.options import inference_request
from speechdvae.enhancement import files
from speechdvae.enhancement.enhancer import Gains, InferenceRequest
from speechdvae.enhancement.files import (
    Chunking,
    CrossFader,
    EnhanceError,
    collect_jobs,
    enhance_file,
    enhance_files,
    overlapping_chunks,
)
from speechdvae.enhancement.langevin import LangevinConfig
from speechdvae.enhancement.vem import VEMConfig
from speechdvae.errors import SpeechDVAEError, UserError
from speechdvae.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = VEMConfig(niter=3, tol=0.0)
SR = 16000


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return build_model({"name": "vae", "z_dim": 4, "dense_x_z": [16]}).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_vae, tmp_path_factory) -> Path:
    return save_model(tiny_vae, tmp_path_factory.mktemp("prior") / "tiny-vae")


def tone_in_noise(seconds: float, sr: int = SR, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A slowly modulated tone in stationary white noise, peak below 0.5."""
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t))
    tone = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * t))
    return (tone + 0.03 * noise).astype(np.float32)


def hidden_files(root: Path) -> list[Path]:
    return list(root.rglob(".*"))


class UnitGains:
    """An enhancer whose gains are one: the pipeline must then give its input back."""

    network, prior, settings = None, None, None

    def gains(self, spectra, keys, progress=False):
        return Gains([torch.ones(s.shape) for s in spectra], [None] * len(spectra))


@pytest.fixture
def identity_gains():
    return UnitGains()


def mixed_folder(root: Path) -> Path:
    """Good files at three rates and formats plus three bad ones and a non-audio file."""
    folder = root / "noisy"
    (folder / "sub").mkdir(parents=True)
    left = tone_in_noise(1.5, 44100)
    sf.write(folder / "stereo44.wav", np.stack([left, 0.5 * left], axis=1), 44100)
    sf.write(folder / "sub" / "mono16.flac", tone_in_noise(1.0, SR, seed=1), SR)
    sf.write(folder / "phone8.ogg", tone_in_noise(1.2, 8000, freq=300, seed=2), 8000)
    sf.write(folder / "sub" / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(folder / "short.wav", tone_in_noise(0.01, SR), SR)
    (folder / "notaudio.wav").write_text("this is not audio\n")
    sf.write(folder / "nan.wav", np.where(np.arange(SR) == 100, np.nan, 0.1).astype(np.float32), SR, subtype="FLOAT")
    (folder / "readme.txt").write_text("ignored\n")
    return folder


GOOD = {"stereo44.wav": (44100, 2, "WAV"), "sub/mono16.flac": (SR, 1, "FLAC"), "phone8.ogg": (8000, 1, "OGG")}
BAD = {"sub/silent.wav": "silent", "short.wav": "too short", "notaudio.wav": "cannot read", "nan.wav": "NaN"}


def test_mixed_inputs_keep_rate_channels_and_format_and_failures_do_not_stop_the_run(tmp_path, tiny_vae):
    folder = mixed_folder(tmp_path)
    out = tmp_path / "enhanced"
    report = enhance_files([folder], out, tiny_vae, FAST, progress=False)

    assert sorted(p.relative_to(out).as_posix() for p in report.written) == sorted(GOOD)
    for name, (rate, channels, fmt) in GOOD.items():
        source, target = sf.info(folder / name), sf.info(out / name)
        assert (target.samplerate, target.channels, target.format) == (rate, channels, fmt)
        assert target.frames == source.frames
        y = sf.read(out / name, always_2d=True)[0]
        assert np.isfinite(y).all() and np.abs(y).max() > 0
    assert report.audio_seconds == pytest.approx(1.5 + 1.0 + 1.2)

    # one gain for every channel: the right channel stays half the left one
    y = sf.read(out / "stereo44.wav")[0]
    np.testing.assert_allclose(y[:, 1], 0.5 * y[:, 0], atol=2 / 32768)

    failed = {Path(f["input"]).relative_to(folder).as_posix(): f["error"] for f in report.failed}
    assert set(failed) == set(BAD)
    for name, reason in BAD.items():
        assert reason in failed[name] and name.split("/")[-1] in failed[name]
        assert not (out / name).exists()
    listed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert sorted(entry["input"] for entry in listed) == sorted(str(folder / name) for name in BAD)
    assert not (out / "readme.txt").exists() and not (out / "readme.wav").exists()
    assert hidden_files(out) == []


@pytest.mark.slow
def test_processes_write_the_same_outputs_and_report_the_same_failures(tmp_path, tiny_vae):
    folder = mixed_folder(tmp_path)
    one = enhance_files([folder], tmp_path / "one", tiny_vae, FAST, progress=False)
    two = enhance_files([folder], tmp_path / "two", tiny_vae, FAST, progress=False, workers=2)
    assert sorted(p.relative_to(tmp_path / "two").as_posix() for p in two.written) == sorted(GOOD)
    for name in GOOD:  # the decoded samples: an Ogg stream's header holds a random serial number
        np.testing.assert_array_equal(sf.read(tmp_path / "one" / name)[0], sf.read(tmp_path / "two" / name)[0])
    assert sorted(f["input"] for f in two.failed) == sorted(f["input"] for f in one.failed)
    assert two.audio_seconds == pytest.approx(one.audio_seconds)
    assert (tmp_path / "two" / "failed.jsonl").is_file() and hidden_files(tmp_path / "two") == []
    again = enhance_files([folder], tmp_path / "two", tiny_vae, FAST, progress=False, workers=2)
    assert len(again.skipped) == len(GOOD) and not again.written


class RecordingEnhancer:
    """A VEM enhancer that notes which process enhances each chunk (files KEY@PID in `log`) and fails the chunk
    `fail`; each call waits (at most a minute) until `processes` processes have started one, so that a run's
    chunks must be shared by that many."""

    def __init__(self, inner, log: Path, processes: int, fail: str) -> None:
        self.inner, self.log, self.processes, self.fail = inner, log, processes, fail
        self.network, self.prior, self.settings = inner.network, inner.prior, inner.settings

    def gains(self, spectra, keys, progress=False):
        for key in keys:
            (self.log / f"{key}@{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(self.processes_of("")) < self.processes and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.fail in keys:
            raise RuntimeError("simulated failure")
        return self.inner.gains(spectra, keys, progress)

    def processes_of(self, name: str) -> set[int]:
        """The processes that enhanced chunks of the file `name` (of any file if empty)."""
        return {int(p.name.split("@")[1]) for p in self.log.iterdir() if p.name.startswith(name)}


@pytest.mark.slow
def test_workers_share_the_chunks_of_long_files_and_write_what_one_process_writes(tmp_path, tiny_vae, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    stereo = tone_in_noise(10.0, 44100)
    sf.write(folder / "a.wav", np.stack([stereo, 0.5 * stereo], axis=1), 44100, subtype="FLOAT")  # 5 chunks of 3 s
    sf.write(folder / "b.flac", tone_in_noise(8.0, seed=1), SR)
    sf.write(folder / "broken.wav", tone_in_noise(9.0, seed=2), SR, subtype="FLOAT")  # its chunk 2 fails
    nan = tone_in_noise(7.0, seed=3)
    nan[5 * SR] = np.nan
    sf.write(folder / "nan.wav", nan, SR, subtype="FLOAT")
    enhancers = {}
    for workers in (1, 2):
        (tmp_path / f"log{workers}").mkdir()
        enhancer = RecordingEnhancer(tiny_vae.enhancer(FAST), tmp_path / f"log{workers}", workers, "broken.wav#2")
        monkeypatch.setattr(files, "load_enhancer", lambda *args, enhancer=enhancer: enhancer)
        out = tmp_path / f"out{workers}"
        report = enhance_files([folder], out, None, chunk_seconds=3.0, progress=False, workers=workers)
        assert sorted(p.name for p in report.written) == ["a.wav", "b.flac"]
        failed = {Path(f["input"]).name: f["error"] for f in report.failed}
        assert set(failed) == {"broken.wav", "nan.wav"}
        assert "simulated failure" in failed["broken.wav"] and "NaN" in failed["nan.wav"]
        assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.flac", "failed.jsonl"]
        enhancers[workers] = enhancer
    for name in ("a.wav", "b.flac"):
        np.testing.assert_array_equal(sf.read(tmp_path / "out1" / name)[0], sf.read(tmp_path / "out2" / name)[0])
    assert enhancers[1].processes_of("") == {os.getpid()}
    assert not enhancers[1].processes_of("broken.wav#3")  # a failed file is read no further
    assert len(enhancers[2].processes_of("a.wav")) == 2 and os.getpid() not in enhancers[2].processes_of("")


def enhance_args(inputs, out, model, *options: str) -> argparse.Namespace:
    """The namespace `speechdvae enhance` builds, with 2 VEM iterations."""
    return build_parser().parse_args(
        [
            "enhance",
            *map(str, inputs),
            "-o",
            str(out),
            "--model",
            str(model),
            "--iterations",
            "2",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--threads",
            "1",
            "--no-progress",
            *options,
        ]
    )


def run(args: argparse.Namespace) -> int:
    return args.func(args)


def test_command_exit_status_and_resume(tmp_path, tiny_checkpoint, capsys):
    folder = mixed_folder(tmp_path)
    out = folder / "enhanced"  # inside the input folder: never read back as input
    assert run(enhance_args([folder], out, tiny_checkpoint)) == 1
    first = capsys.readouterr()
    assert "enhanced 3 file(s)" in first.out and "FAILED 4 file(s)" in first.out
    assert first.err.count("speechdvae: failed:") == 4
    stamps = {name: (out / name).stat().st_mtime_ns for name in GOOD}

    assert run(enhance_args([folder], out, tiny_checkpoint)) == 1
    second = capsys.readouterr()
    assert "enhanced 0 file(s)" in second.out and "skipped 3 file(s)" in second.out
    assert {name: (out / name).stat().st_mtime_ns for name in GOOD} == stamps

    good_only = tmp_path / "good"
    good_only.mkdir()
    (folder / "phone8.ogg").rename(good_only / "phone8.ogg")
    assert run(enhance_args([good_only], tmp_path / "out2", tiny_checkpoint)) == 0
    assert not (tmp_path / "out2" / "failed.jsonl").exists()
    with pytest.raises(SpeechDVAEError, match="no such checkpoint"):
        run(enhance_args([good_only], tmp_path / "out3", tmp_path / "missing-model"))


def test_inference_options_of_both_commands_reach_the_engine():
    for command in (["enhance", "in.wav", "-o", "out"], ["eval", "enhance", "--manifest", "m", "-o", "out"]):
        parse = build_parser().parse_args
        assert inference_request(parse(command)) == InferenceRequest()  # each prior's own
        assert inference_request(parse([*command, "--official-settings"])) == InferenceRequest("vem", official=True)
        vem = ["--lr", "0.01", "--tol", "0", "--nmf-rank", "4", "--past", "estimate", "--seed", "3"]
        assert inference_request(parse([*command, "--iterations", "7", *vem])) == InferenceRequest(
            "vem", settings=dict(niter=7, lr=0.01, tol=0.0, nmf_rank=4, past="estimate", seed=3)
        )  # options of the VEM only choose the VEM
        official = inference_request(parse([*command, "--official-settings", "--iterations", "5"]))
        assert official.for_prior(tiny_model("vae")) == VEMConfig.official(niter=5)
        langevin = [*command, "--inference", "langevin"]
        assert inference_request(parse(langevin)) == InferenceRequest("langevin")
        tuned = inference_request(
            parse([*langevin, "--iterations", "40", "--step-size", "0.05", "--langevin-steps", "2", "--warmup", "5"])
        )
        assert tuned.for_prior(tiny_model("vae")) == LangevinConfig(niter=40, step_size=0.05, steps=2, warmup=5)
        assert inference_request(parse([*command, "--warmup", "5"])).engine == "langevin"
        shared = inference_request(parse([*command, "--wf-samples", "3", "--nmf-rank", "4", "--seed", "2"]))
        assert shared == InferenceRequest(settings=dict(wf_samples=3, nmf_rank=4, seed=2))  # either engine
    with pytest.raises(UserError, match="--lr, --warmup belong to different inference engines"):
        run(enhance_args(["in.wav"], "out", "m", "--lr", "0.1", "--warmup", "3"))
    with pytest.raises(UserError, match="VEM settings: VEMConfig.lr must be positive"):
        run(enhance_args(["in.wav"], "out", "m", "--lr", "0"))
    with pytest.raises(UserError, match="Langevin settings: LangevinConfig.step_size must be positive"):
        run(enhance_args(["in.wav"], "out", "m", "--inference", "langevin", "--step-size", "0"))
    with pytest.raises(UserError, match="--official-settings, --lr do not apply to --inference langevin"):
        run(enhance_args(["in.wav"], "out", "m", "--inference", "langevin", "--official-settings", "--lr", "0.1"))
    with pytest.raises(UserError, match="--step-size does not apply to --inference vem"):
        run(enhance_args(["in.wav"], "out", "m", "--inference", "vem", "--step-size", "0.1"))
    with pytest.raises(UserError, match="warmup must be in"):  # --step-size chooses Langevin, 2 iterations are few
        run(enhance_args(["in.wav"], "out", "m", "--step-size", "0.1"))


def test_shards_split_the_files_and_follow_torchrun(tmp_path, monkeypatch):
    for name in "abcde":
        sf.write(tmp_path / f"{name}.wav", tone_in_noise(0.1), SR)
    jobs = collect_jobs([tmp_path], tmp_path / "out")
    shards = [files.shard_jobs(jobs, (index, 2)) for index in range(2)]
    assert [[job.key for job in shard] for shard in shards] == [["a.wav", "c.wav", "e.wav"], ["b.wav", "d.wav"]]
    assert files.parse_shard("1/2") == (1, 2)
    with pytest.raises(EnhanceError, match="I/N"):
        files.parse_shard("two")
    with pytest.raises(EnhanceError, match="index < count"):
        files.shard_jobs(jobs, (2, 2))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert files.parse_shard(None) == (3, 4)
    assert files.worker_device(None) == "cuda:1" and files.worker_device("cpu") == "cpu"


def test_manifest_input_writes_outputs_under_ids(tmp_path, tiny_vae):
    audio = tmp_path / "corpus" / "audio"
    audio.mkdir(parents=True)
    sf.write(audio / "a.flac", tone_in_noise(0.6), SR)
    sf.write(audio / "b.wav", tone_in_noise(0.7, seed=3), SR)
    manifest = tmp_path / "corpus" / "test.jsonl"
    manifest.write_text(
        json.dumps({"id": "spk1/utt1", "path": "audio/a.flac"})
        + "\n"
        + json.dumps({"id": "spk2/utt2", "path": "audio/b.wav"})
        + "\n"
    )
    report = enhance_files([manifest], tmp_path / "out", tiny_vae, FAST, progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written) == [
        "spk1/utt1.flac",
        "spk2/utt2.wav",
    ]
    assert sf.info(tmp_path / "out" / "spk2" / "utt2.wav").frames == int(0.7 * SR)


def test_inputs_are_never_overwritten_and_clashing_outputs_are_refused(tmp_path):
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for sub in ("a", "b"):
        sf.write(folder / sub / "x.wav", tone_in_noise(0.2), SR)
    before = (folder / "a" / "x.wav").read_bytes()
    with pytest.raises(EnhanceError, match="would overwrite input files"):
        collect_jobs([folder], folder)
    with pytest.raises(EnhanceError, match="both be written"):
        collect_jobs([folder / "a" / "x.wav", folder / "b" / "x.wav"], tmp_path / "out")
    with pytest.raises(EnhanceError, match="no such file"):
        collect_jobs([tmp_path / "nothing.wav"], tmp_path / "out")
    for settings in ({"chunk_seconds": 1.5}, {"batch_size": 0}):  # 1.5 s: not longer than twice 1 s
        with pytest.raises(EnhanceError, match="chunk|batch size"):
            enhance_files([folder], tmp_path / "out", model=None, progress=False, **settings)
    with pytest.raises(EnhanceError, match="refusing to replace the input"):
        enhance_file(folder / "a" / "x.wav", folder / "a" / "x.wav", UnitGains())
    assert (folder / "a" / "x.wav").read_bytes() == before and not (tmp_path / "out").exists()
    jobs = collect_jobs([folder, folder / "a" / "x.wav"], tmp_path / "out")  # a file repeated at another place
    assert [job.key for job in jobs] == ["a/x.wav", "b/x.wav", "x.wav"]


def test_a_failure_mid_file_leaves_no_partial_output(tmp_path, tiny_vae, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "long.wav", tone_in_noise(8.0), SR)
    sf.write(folder / "short.wav", tone_in_noise(0.5), SR)
    calls = []
    real = files.enhance_chunks

    def failing(model, chunks, keys, *args, **kwargs):
        calls.append(keys)
        if keys[0] == "long.wav#1":
            raise RuntimeError("simulated failure")
        return real(model, chunks, keys, *args, **kwargs)

    monkeypatch.setattr(files, "enhance_chunks", failing)
    out = tmp_path / "out"
    report = enhance_files([folder], out, tiny_vae, FAST, chunk_seconds=3.0, progress=False)
    assert [keys[0] for keys in calls] == ["long.wav#0", "long.wav#1", "short.wav#0"]
    assert [f["error"] for f in report.failed] == [f"{folder / 'long.wav'}: simulated failure"]
    assert report.written == [out / "short.wav"]
    assert not (out / "long.wav").exists() and hidden_files(out) == []


# -- long files: chunks, joins, memory ---------------------------------------------------------------


@pytest.mark.parametrize("block", [700, 5000, 40000])
def test_overlapping_chunks_and_cross_fades_rebuild_the_stream(block):
    chunking = Chunking.from_seconds(2.0, 0.5)
    assert (chunking.length, chunking.overlap) == (32000, 7936)  # whole hops of 256 samples
    x = np.random.default_rng(0).standard_normal((100_001, 2)).astype(np.float32)
    chunks = list(overlapping_chunks((x[i : i + block] for i in range(0, len(x), block)), chunking))
    starts = [k * chunking.hop for k in range(len(chunks))]
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    for start, (chunk, _) in zip(starts, chunks):
        np.testing.assert_array_equal(chunk, x[start : start + chunking.length])
    assert starts[-1] + len(chunks[-1][0]) == len(x) and len(chunks[-1][0]) > chunking.overlap
    fader = CrossFader(chunking.overlap)
    joined = np.concatenate([fader.push(chunk, last) for chunk, last in chunks])
    np.testing.assert_allclose(joined, x, atol=1e-6)


def test_cross_fade_is_a_raised_cosine():
    fader = CrossFader(1000)
    first = fader.push(np.ones((3000, 1), np.float32), last=False)
    joined = np.concatenate([first, fader.push(np.zeros((3000, 1), np.float32), last=True)])[:, 0]
    ramp = joined[2000:3000]
    expected = np.cos(0.5 * np.pi * (np.arange(1000) + 0.5) / 1000) ** 2
    np.testing.assert_allclose(ramp, expected, atol=1e-6)
    assert joined[:2000].min() == 1 and joined[3000:].max() == 0


@pytest.mark.parametrize("rate,channels", [(SR, 1), (44100, 2)])
def test_chunked_pipeline_with_unit_gains_returns_the_input(tmp_path, identity_gains, rate, channels):
    x = tone_in_noise(7.0, rate, freq=1000.0)[:, None] * np.linspace(1.0, 0.5, channels)[None].astype(np.float32)
    sf.write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", identity_gains, chunk_seconds=2.0, batch_size=2)
    y = sf.read(tmp_path / "out.wav", always_2d=True)[0]
    assert y.shape == x.shape
    if rate == SR:  # at 16 kHz nothing is resampled: chunking and joining are exact
        np.testing.assert_allclose(y, x, atol=1e-5)
    else:  # the 16 kHz round trip keeps a 1 kHz tone; the noise above 8 kHz is removed
        t = np.arange(len(x)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 1000 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * t))
        inner = slice(rate // 10, -rate // 10)
        residual = y[inner] - tone[inner, None] * np.linspace(1.0, 0.5, channels)[None]
        in_band_noise = 0.03 * np.sqrt(8000 / 22050)  # the part of the white noise below 8 kHz
        assert np.sqrt(np.mean(residual**2)) < 1.2 * in_band_noise


def test_chunk_joins_are_seamless_and_match_the_whole_file(tmp_path, tiny_vae):
    """60 s of tone in stationary noise, enhanced in one piece and in 10-s chunks with 1-s overlaps."""
    x = tone_in_noise(60.0)
    sf.write(tmp_path / "long.wav", x, SR, subtype="FLOAT")
    enhancer = tiny_vae.enhancer(VEMConfig(niter=4, tol=0.0))
    enhance_file(tmp_path / "long.wav", tmp_path / "whole.wav", enhancer, chunk_seconds=61.0)
    enhance_file(tmp_path / "long.wav", tmp_path / "chunked.wav", enhancer, chunk_seconds=10.0)
    whole, chunked = (sf.read(tmp_path / f"{name}.wav", dtype="float64")[0] for name in ("whole", "chunked"))

    chunking = Chunking.from_seconds(10.0)
    seams = [k * chunking.hop for k in range(1, 7)]
    near = np.zeros(len(x), bool)
    for seam in seams:
        near[seam - 800 : seam + chunking.overlap + 800] = True
    error = chunked - whole

    def snr(mask):
        return 10 * np.log10(np.sum(whole[mask] ** 2) / np.sum(error[mask] ** 2))

    far_snr = snr(~near)
    assert far_snr > 10.0
    for seam in seams:
        window = np.zeros(len(x), bool)
        window[seam : seam + chunking.overlap] = True
        assert snr(window) > far_snr - 3.0
    jumps = np.abs(np.diff(chunked))
    assert jumps[near[1:]].max() <= 1.1 * jumps[~near[1:]].max()


def test_results_do_not_depend_on_how_chunks_are_grouped(tmp_path, tiny_vae):
    sf.write(tmp_path / "in.wav", tone_in_noise(9.0), SR, subtype="FLOAT")
    for batch in (1, 3):
        enhance_file(
            tmp_path / "in.wav",
            tmp_path / f"out{batch}.wav",
            tiny_vae.enhancer(FAST),
            chunk_seconds=3.0,
            batch_size=batch,
        )
    one, three = (sf.read(tmp_path / f"out{batch}.wav")[0] for batch in (1, 3))
    np.testing.assert_allclose(one, three, atol=1e-6)
    assert np.abs(one).max() > 1e-3


def test_digital_silence_inside_a_long_file_is_kept_silent(tmp_path, tiny_vae):
    x = np.concatenate([tone_in_noise(5.0), np.zeros(12 * SR, np.float32), tone_in_noise(5.0, seed=1)])
    sf.write(tmp_path / "gap.wav", x, SR, subtype="FLOAT")
    enhance_file(tmp_path / "gap.wav", tmp_path / "out.wav", tiny_vae.enhancer(FAST), chunk_seconds=4.0)
    y = sf.read(tmp_path / "out.wav")[0]
    assert len(y) == len(x) and np.isfinite(y).all()
    assert np.abs(y[8 * SR : 14 * SR]).max() == 0 and np.abs(y[: 4 * SR]).max() > 0


def test_memory_does_not_grow_with_the_file_length(tmp_path, identity_gains, monkeypatch):
    """Engine calls never exceed one group of chunks, and the arrays held at once (numpy allocations,
    traced) are the same for a 60-s file as for a 20-s one."""
    calls = []
    real = files.enhance_chunks

    def recording(model, chunks, *args, **kwargs):
        calls.append([len(chunk) for chunk in chunks])
        return real(model, chunks, *args, **kwargs)

    monkeypatch.setattr(files, "enhance_chunks", recording)
    peaks = {}
    for seconds in (20, 60):
        sf.write(tmp_path / f"{seconds}.wav", tone_in_noise(seconds, 44100), 44100)
        calls.clear()
        tracemalloc.start()
        enhance_file(
            tmp_path / f"{seconds}.wav", tmp_path / f"out{seconds}.wav", identity_gains, chunk_seconds=4.0, batch_size=2
        )
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        chunking = Chunking.from_seconds(4.0)
        assert max(map(len, calls)) == 2 and max(max(c) for c in calls) == chunking.length
        assert sum(map(len, calls)) == int(np.ceil((seconds * SR - chunking.overlap) / chunking.hop))
    whole_file = 60 * 44100 * 4
    assert peaks[60] < 1.2 * peaks[20] and peaks[60] < whole_file


@pytest.mark.slow
def test_a_killed_run_leaves_temporaries_that_the_next_run_removes(tmp_path, tiny_checkpoint):
    """SIGKILL in the middle of a folder leaves `.NAME.xxxxxxxx.wav` beside the outputs; the rerun removes it and
    gives the outputs of an uninterrupted run."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        sf.write(folder / f"f{i}.wav", tone_in_noise(2.0, seed=i), SR)
    argv = [
        sys.executable,
        "-m",
        "speechdvae",
        "enhance",
        str(folder),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(tiny_checkpoint),
        "--iterations",
        "40",
        "--workers",
        "1",
        "--no-progress",
    ]
    run = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    out, deadline = tmp_path / "out", time.monotonic() + 120
    while not (out.is_dir() and hidden_files(out)):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before writing anything"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    left = hidden_files(tmp_path / "out")
    assert left and all(re.fullmatch(r"\.f\d\.wav\.[a-z0-9_]{8}\.wav", p.name) for p in left)

    rerun = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert rerun.returncode == 0 and f"removed {len(left)} temporary file(s)" in rerun.stdout
    assert hidden_files(tmp_path / "out") == []
    whole = enhance_files(
        [folder], tmp_path / "whole", tiny_checkpoint, VEMConfig(niter=40), device="cpu", progress=False
    )
    assert len(whole.written) == 4
    for i in range(4):
        np.testing.assert_array_equal(
            sf.read(tmp_path / "out" / f"f{i}.wav")[0], sf.read(tmp_path / "whole" / f"f{i}.wav")[0]
        )


def test_the_one_call_api_keeps_shape_and_rate_and_matches_the_file_pipeline(tmp_path, tiny_checkpoint):
    stereo = np.stack([tone_in_noise(1.5, 44100), 0.5 * tone_in_noise(1.5, 44100)], axis=1)
    enhanced = speechdvae.enhance(stereo, 44100, model=tiny_checkpoint, device="cpu", niter=3, tol=0.0)
    assert enhanced.shape == stereo.shape and enhanced.dtype == np.float32
    sf.write(tmp_path / "in.wav", stereo, 44100, subtype="FLOAT")
    enhance_file(
        tmp_path / "in.wav", tmp_path / "out.wav", load_model(tiny_checkpoint, "cpu").enhancer(FAST), key="wave"
    )
    np.testing.assert_allclose(enhanced, sf.read(tmp_path / "out.wav", dtype="float32")[0], atol=1e-6)
    mono = speechdvae.enhance(stereo[:, 0], 44100, model=tiny_checkpoint, device="cpu", niter=3, tol=0.0)
    assert mono.shape == (len(stereo),) and np.abs(mono).max() > 0
    with pytest.raises(AudioError, match="silent"):
        speechdvae.enhance(np.zeros(SR), SR, model=tiny_checkpoint)
    with pytest.raises(ValueError, match="niter"):
        speechdvae.enhance(stereo, 44100, model=tiny_checkpoint, niter=0)
