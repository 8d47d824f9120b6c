import json
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import tone_burst
from G722 import G722

from speechdvae.data import open_corpus as oc
from speechdvae.data.manifest import read_manifest


def _write_g722(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    path.write_bytes(bytes(G722(16000, 64000).encode(pcm)))


def _write_ogg(path: Path, x: np.ndarray, sr: int = 44100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)


def _fake_tree(root: Path) -> None:
    """Unpacked trees of two speech packages, laid out like the real ones."""
    snd = root / "unpacked/asterisk-core-sounds-en-g722/usr/share/asterisk/sounds/en_US_f_Allison"
    for i in range(6):
        _write_g722(snd / f"prompt{i}.g722", tone_burst(seed=i))
    _write_g722(snd / "digits" / "1.g722", tone_burst(seed=9))
    _write_g722(snd / "silence" / "1.g722", np.zeros(8000))
    _write_g722(snd / "beep.g722", tone_burst(seed=10))  # a tone: not speech
    stamps = root / "unpacked/tuxpaint-stamps-default/usr/share/tuxpaint/stamps/animals"
    burst44 = tone_burst(sr=44100)
    for lang in ("fr", "ro", "el", "ru"):
        _write_ogg(stamps / f"cat_desc_{lang}.ogg", burst44)
    _write_ogg(stamps / "cat.ogg", burst44)  # a sound effect, not speech
    _write_ogg(stamps / "dog_desc_fr.ogg", tone_burst(sr=44100, floor=0.05))  # audible background noise
    (stamps / "bird_desc_fr.ogg").write_bytes(b"OggS but not really")  # undecodable


PACKAGES = tuple(p for p in oc.PACKAGES if p.name in ("asterisk-core-sounds-en-g722", "tuxpaint-stamps-default"))


def test_build_splits_rejects_and_is_idempotent(tmp_path):
    _fake_tree(tmp_path)
    stats = oc.build(tmp_path, workers=1, packages=PACKAGES)
    manifests = tmp_path / "manifests"
    speech = {
        split: read_manifest(manifests / f"speech_{split}.jsonl")
        for split in ("train", "valid", "valid_unseen", "test")
    }
    ids = {split: sorted(r["id"] for r in recs) for split, recs in speech.items()}
    # tuxpaint ro is test, el is the unseen-speaker validation set, ru and sound effects are unused
    assert ids["test"] == ["tuxpaint/animals/cat_desc_ro"]
    assert ids["valid_unseen"] == ["tuxpaint/animals/cat_desc_el"]
    together = sorted(r["id"] for r in read_manifest(manifests / "speech_valid_all.jsonl"))
    assert together == sorted(ids["valid"] + ids["valid_unseen"]) and ids["valid"]
    seen = ids["train"] + ids["valid"]
    assert "tuxpaint/animals/cat_desc_fr" in seen and not any("ru" in i.rsplit("_", 1)[-1] for i in seen)
    assert len([i for i in seen if i.startswith("asterisk")]) == 7  # silence/ excluded
    rejected = {r["id"]: r for r in read_manifest(manifests / "rejected.jsonl", required=("id",))}
    assert rejected["tuxpaint/animals/dog_desc_fr"]["status"] == "rejected"
    assert rejected["tuxpaint/animals/bird_desc_fr"]["status"] == "failed"
    assert rejected["asterisk-en/en_US_f_Allison/beep"]["reason"].startswith("not speech")
    assert stats["rejected"] == {"rejected": 2, "failed": 1}
    # every listed file exists, is 16 kHz mono FLAC and matches its checksum and duration
    for r in speech["train"] + speech["test"]:
        info = sf.info(r["path"])
        assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        assert r["speaker"] in ("asterisk/Allison", "tuxpaint-ro", "tuxpaint-fr")
    # a second run converts nothing and writes identical manifests
    flacs = sorted((tmp_path / "speech").rglob("*.flac"))
    mtimes = [p.stat().st_mtime_ns for p in flacs]
    before = {p.name: p.read_text() for p in manifests.glob("*.jsonl")}
    cache = {p.name: p.read_text() for p in (tmp_path / "cache").iterdir()}
    oc.build(tmp_path, workers=1, packages=PACKAGES)
    assert [p.stat().st_mtime_ns for p in flacs] == mtimes
    assert {p.name: p.read_text() for p in manifests.glob("*.jsonl")} == before
    assert {p.name: p.read_text() for p in (tmp_path / "cache").iterdir()} == cache


def test_noise_floor_limit_is_an_option_that_converts_nothing_anew(tmp_path):
    _fake_tree(tmp_path)
    oc.build(tmp_path, workers=1, packages=PACKAGES)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "speech").rglob("*.flac")}
    noisy = "tuxpaint/animals/dog_desc_fr"  # noise floor about -31 dBFS

    def seen() -> set[str]:
        manifests = [tmp_path / f"manifests/speech_{split}.jsonl" for split in ("train", "valid")]
        return {r["id"] for manifest in manifests for r in read_manifest(manifest)}

    assert noisy not in seen()
    stats = oc.build(tmp_path, workers=1, packages=PACKAGES, noise_floor_max_db=-25)
    assert noisy in seen() and stats["rejected"] == {"rejected": 1, "failed": 1} and stats["noise_floor_max_db"] == -25
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    stats = oc.build(tmp_path, workers=1, packages=PACKAGES, noise_floor_max_db=-35)
    assert noisy not in seen() and stats["rejected"] == {"rejected": 2, "failed": 1}
    reasons = {r["id"]: r["reason"] for r in read_manifest(tmp_path / "manifests/rejected.jsonl", required=("id",))}
    assert reasons[noisy].endswith("> -35 dBFS")
    assert "limit -35 dBFS" in oc.format_report(stats)


def test_resumes_after_an_interruption(tmp_path):
    _fake_tree(tmp_path)
    oc.build(tmp_path, workers=1, packages=PACKAGES[:1])
    log = tmp_path / "cache" / f"{PACKAGES[0].name}.jsonl"
    lines = log.read_text().splitlines()
    lost = {json.loads(line)["id"] for line in lines[-2:]}
    # simulate a kill while writing: the last two entries are lost, one of them half-written
    log.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "speech").rglob("*.flac")}
    oc.build(tmp_path, workers=1, packages=PACKAGES[:1])
    redone = {
        str(p.relative_to(tmp_path / "speech").with_suffix("")) for p, t in mtimes.items() if p.stat().st_mtime_ns != t
    }
    assert redone == lost
    assert (
        len(read_manifest(tmp_path / "manifests/speech_train.jsonl"))
        + len(read_manifest(tmp_path / "manifests/speech_valid.jsonl"))
        == len(lines) - 1
    )  # all but the beep


def test_noise_split_is_by_recording():
    sources = [
        oc.Source(f"n/{g}_{i}", "x", "soundfile", "noise", f"n/{g}", "none", "", t)
        for t, groups in (("fire", ["fa", "fb", "fc", "fd"]), ("wind", ["wa", "wb"]))
        for g in groups
        for i in range(3)
    ]
    out, notes = oc.split_noise_by_recording(sources)
    assert {s.noise_type for s in out} == {"fire"} and "wind" in notes[0]
    split_of_group = {}
    for s in out:
        assert split_of_group.setdefault(s.speaker, s.split) == s.split  # a recording never straddles splits
    assert sorted(split_of_group.values()) == ["test", "train", "train", "valid"]


def test_recording_groups():
    assert oc.recording_group("fire03") == "fire"
    assert oc.recording_group("amb_farm_12") == "amb_farm"
    assert oc.recording_group("day_temperate_gen_01") == "day_temperate_gen"
    assert oc.recording_group("alien-device") == "alien-device"


def test_g722_decoding_matches_the_reference_decoder(official_dir, tmp_path):
    # the reference wav was decoded from the same prompt with ffmpeg
    ref, sr = sf.read(official_dir / "reference/audio/conf-getpin.wav", dtype="int16")
    encoded = tmp_path / "conf.g722"
    _write_g722(encoded, ref.astype(np.float32) / 32768)
    x, rate = oc.decode(oc.Source("a", str(encoded), "g722", "speech", "s", "en", "train"))
    assert rate == 16000 and len(x) == len(ref)
    # one encode/decode round trip of G.722: the same signal after the codec's short QMF delay
    lags = range(0, 64)
    corr = [np.corrcoef(x[lag:], ref[: len(ref) - lag])[0, 1] for lag in lags]
    assert max(corr) > 0.98 and int(np.argmax(corr)) < 40


def test_fillets_dialogue_speakers_are_characters(tmp_path):
    base = tmp_path / "usr/share/games/fillets-ng/sound"
    for rel in (
        "airplane/cs/let-m-oko.ogg",
        "airplane/cs/let-v-oko.ogg",
        "airplane/cs/let-m.ogg",
        "airplane/nl/x-m-a.ogg",
    ):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"")
    (base / "share").mkdir()
    (base / "share/splash.ogg").write_bytes(b"")  # a sound effect, not dialogue
    sources = list(oc._fillets("cs")(tmp_path))
    assert sorted((s.id, s.speaker, s.language) for s in sources) == [
        ("fillets-cs/airplane/cs/let-m", "fillets-cs/other", "cs"),
        ("fillets-cs/airplane/cs/let-m-oko", "fillets-cs/m", "cs"),
        ("fillets-cs/airplane/cs/let-v-oko", "fillets-cs/v", "cs"),
    ]
    assert {s.split for s in sources} <= {"train", "valid"} and {s.kind for s in sources} == {"speech"}


def test_non_speech_prompts_leave_training_and_validation_but_not_test():
    """The test split stays as published, so that its planned mixtures and the numbers reported on them hold."""
    entry = {"noise_floor_db": -80.0}
    for split, rejected in (("train", True), ("valid", True), ("test", False)):
        beep = oc.Source("asterisk-fr/fr_CA_f_June/beeperr", "x", "g722", "speech", "asterisk/June", "fr", split)
        assert (oc.speech_rejection(beep, entry, -45.0) is not None) == rejected
    prompt = oc.Source(
        "asterisk-en/en_US_f_Allison/beeps-two", "x", "g722", "speech", "asterisk/Allison", "en", "train"
    )
    assert oc.speech_rejection(prompt, entry, -45.0) is None
