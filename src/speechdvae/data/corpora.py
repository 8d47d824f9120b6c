"""Manifests for corpora that users own: WSJ0, VoiceBank-DEMAND, LibriSpeech and any folder of audio.

Each `scan_*` function walks a corpus root in its published layout and returns a `ScanResult`:
manifest records (see `speechdvae.data.manifest`, paths absolute, plus `corpus` and `sample_rate`)
and the files it had to skip, with the reason. Files are only listed, never converted: readers
resample to 16 kHz on the fly, and `materialize` writes a converted 16 kHz copy when one is wanted.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import soundfile as sf
from tqdm import tqdm

from ..atomic import write_text_atomic
from ..audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError, read_audio, write_audio
from .manifest import ManifestError, sha256_file, write_manifest

SPHERE_MAGIC = b"NIST_1A"
# SPHERE sample codings that libsndfile cannot decode.
COMPRESSED_SPHERE_CODINGS = ("shorten", "wavpack", "shortpack")
MAX_WARNED_FILES = 5


class CorpusError(ManifestError):
    """A corpus root that is missing, has no recognisable layout, or holds no readable audio."""


class Skipped(NamedTuple):
    """A file left out of a scan, and why."""

    path: str
    reason: str


class ScanResult(NamedTuple):
    """Manifest records of a scan and the files it skipped."""

    records: list[dict]
    skipped: list[Skipped]


# --------------------------------------------------------------------------------------------
# Shared helpers: walking, probing, record building
# --------------------------------------------------------------------------------------------


def sphere_coding(path: str | os.PathLike) -> str | None:
    """The `sample_coding` of a NIST SPHERE file ("pcm" when absent), or None if not SPHERE."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head.startswith(SPHERE_MAGIC):
        return None
    for line in head.decode("latin-1").splitlines():
        fields = line.split(None, 2)
        if fields and fields[0] == "end_head":
            break
        if len(fields) == 3 and fields[0] == "sample_coding":
            return fields[2].strip()
    return "pcm"


def probe(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header information of an audio file without decoding it; AudioError names the file."""
    try:
        coding = sphere_coding(path)
        if coding is not None and any(c in coding.lower() for c in COMPRESSED_SPHERE_CODINGS):
            raise AudioError(
                f"{path}: NIST SPHERE compressed with '{coding}', which soundfile cannot decode; "
                f"convert the corpus with sph2pipe (e.g. `sph2pipe -f wav IN.wv1 OUT.wav`, keeping "
                f"the folder layout) and scan the converted files"
            )
        info = sf.info(str(path))
    except AudioError:
        raise
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    if info.frames <= 0:
        raise AudioError(f"{path}: the file holds no samples")
    return info


def describe(path: Path, **fields: object) -> dict:
    """A manifest record for one audio file: probed duration and rate, sha256, and `fields`."""
    info = probe(path)
    return {
        **fields,
        "path": str(path),
        "duration": info.frames / info.samplerate,
        "sample_rate": int(info.samplerate),
        "sha256": sha256_file(path),
    }


def _require_dir(root: str | os.PathLike, corpus: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusError(f"{root}: {corpus} root folder not found")
    return root.resolve()


def _is_hidden(name: str) -> bool:
    """Dot files (AppleDouble `._x.wav`, temporary files) and macOS archive residue."""
    return name.startswith(".") or name == "__MACOSX"


def walk_dirs(root: Path) -> Iterator[Path]:
    """Every non-hidden folder under `root` (itself included), following links once, sorted."""
    seen: set[str] = set()
    for folder, subdirs, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not _is_hidden(d))
        yield Path(folder)


def audio_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Non-hidden files with an audio extension, sorted."""
    if recursive:
        candidates = (Path(d) / name for d in walk_dirs(folder) for name in os.listdir(d))
    else:
        candidates = folder.iterdir()
    return sorted(
        p for p in candidates if p.suffix.lower() in AUDIO_SUFFIXES and not _is_hidden(p.name) and p.is_file()
    )


def _collect(
    corpus: str, root: Path, candidates: Sequence[tuple[Path, dict]], skipped: Iterable[Skipped] = ()
) -> ScanResult:
    """Probe and hash every candidate, skipping unreadable files with a warning.

    Raises CorpusError when nothing at all could be listed, since an empty manifest is never
    what the user wanted.
    """
    skipped = list(skipped)
    records = []
    for path, fields in tqdm(candidates, desc=f"scanning {corpus}", unit="file", disable=None):
        try:
            records.append(describe(path, corpus=corpus, **fields))
        except (AudioError, OSError) as err:
            skipped.append(Skipped(str(path), str(err)))
    if not records:
        detail = f": {skipped[0].reason}" if skipped else ""
        raise CorpusError(f"{root}: no readable {corpus} audio found ({len(skipped)} file(s) skipped){detail}")
    if skipped:
        _warn_skipped(corpus, skipped)
    return ScanResult(records, skipped)


def _warn_skipped(corpus: str, skipped: list[Skipped]) -> None:
    shown = "\n".join(f"  {s.reason}" for s in skipped[:MAX_WARNED_FILES])
    more = f"\n  ... and {len(skipped) - MAX_WARNED_FILES} more" if len(skipped) > MAX_WARNED_FILES else ""
    warnings.warn(f"{corpus}: skipped {len(skipped)} file(s):\n{shown}{more}", stacklevel=4)


# --------------------------------------------------------------------------------------------
# WSJ0
# --------------------------------------------------------------------------------------------

WSJ0_SPLITS = {"si_tr_s": "train", "si_dt_05": "valid", "si_et_05": "test"}
SPHERE_SUFFIXES = frozenset({"sph", "nist", "wv1", "wv2"})


def _wsj0_variant(path: Path) -> tuple[str, int, int]:
    """(utterance id, microphone channel, rank) of a WSJ0 file; lower rank is preferred.

    `01aa0101.wv1` is channel 1 (Sennheiser), `.wv2` channel 2; a converted copy
    (`01aa0101.wav`, `01aa0101.wv1.flac`) counts as channel 1 unless its name says wv2, and is
    preferred over the SPHERE original, which on the LDC discs is shorten-compressed.
    """
    utt, *suffixes = path.name.lower().split(".")
    channel = 2 if "wv2" in suffixes else 1
    converted = suffixes[-1] not in SPHERE_SUFFIXES
    return utt, channel, 2 * (channel - 1) + (0 if converted else 1)


def scan_wsj0(root: str | os.PathLike) -> ScanResult:
    """WSJ0 (LDC93S6B): `<root>/.../wsj0/{si_tr_s,si_dt_05,si_et_05}/<speaker>/<utt>.wv1`.

    Any number of discs under `root` and upper-case names are accepted, as are copies converted
    to .wav/.flac. si_tr_s -> train, si_dt_05 -> valid, si_et_05 -> test; one file per utterance,
    channel 1 (the close-talking microphone) whenever it exists.
    """
    root = _require_dir(root, "WSJ0")
    split_dirs = [(d, WSJ0_SPLITS[d.name.lower()]) for d in walk_dirs(root) if d.name.lower() in WSJ0_SPLITS]
    if not split_dirs:
        raise CorpusError(
            f"{root}: no WSJ0 subset folder found; expected "
            f"<root>/wsj0/{{si_tr_s,si_dt_05,si_et_05}}/<speaker>/<utterance>.wv1"
        )
    best: dict[str, tuple[int, Path, str, int]] = {}
    for folder, split in split_dirs:
        for path in audio_files(folder):
            utt, channel, rank = _wsj0_variant(path)
            if utt not in best or rank < best[utt][0]:
                best[utt] = (rank, path, split, channel)
    candidates = [
        (path, {"id": utt, "speaker": utt[:3], "language": "en", "split": split, "channel": channel})
        for utt, (_, path, split, channel) in sorted(best.items())
    ]
    return _collect("wsj0", root, candidates)


# --------------------------------------------------------------------------------------------
# VoiceBank-DEMAND
# --------------------------------------------------------------------------------------------

VB_FOLDER = re.compile(r"(clean|noisy)_(trainset_28spk|trainset_56spk|testset)_wav", re.IGNORECASE)
VB_TRAIN_SETS = ("trainset_28spk", "trainset_56spk")
# Validation speakers taken from the 28-speaker training set, as in the HiT-DVAE paper.
VB_VALID_SPEAKERS = frozenset({"p226", "p287"})


def _voicebank_folders(root: Path) -> dict[tuple[str, str], Path]:
    """(condition, set) -> the folder holding its wav files, e.g. ("clean", "testset")."""
    found: dict[tuple[str, str], Path] = {}
    for folder in walk_dirs(root):
        match = VB_FOLDER.fullmatch(folder.name)
        if not match or not audio_files(folder, recursive=False):
            continue
        key = (match.group(1).lower(), match.group(2).lower())
        if key in found:
            raise CorpusError(
                f"{root}: two VoiceBank-DEMAND folders for {folder.name}: "
                f"{found[key]} and {folder}; point the root at one copy"
            )
        found[key] = folder
    return found


def _voicebank_split(subset: str, speaker: str) -> str:
    if subset == "testset":
        return "test"
    return "valid" if speaker in VB_VALID_SPEAKERS else "train"


def scan_voicebank(root: str | os.PathLike, train_set: str | None = None) -> ScanResult:
    """VoiceBank-DEMAND: `<root>/{clean,noisy}_{trainset_28spk,trainset_56spk,testset}_wav/p226_001.wav`.

    Clean records have `condition` "clean"; noisy ones have `condition` "noisy", id `<utt>_noisy`
    and `clean_path` pointing at the matching clean file. Training speakers p226 and p287 form
    the valid split. `train_set` ("28spk" or "56spk") picks the training set; by default the
    28-speaker set of the papers when present, otherwise the 56-speaker one. Files are 48 kHz.
    """
    root = _require_dir(root, "VoiceBank-DEMAND")
    folders = _voicebank_folders(root)
    if not folders:
        raise CorpusError(
            f"{root}: no VoiceBank-DEMAND folder found; expected "
            f"<root>/clean_trainset_28spk_wav, noisy_trainset_28spk_wav, "
            f"clean_testset_wav, noisy_testset_wav (or the _56spk_wav training sets)"
        )
    keep = {"testset", _voicebank_train_set(root, folders, train_set)}
    candidates: list[tuple[Path, dict]] = []
    skipped: list[Skipped] = []
    for (condition, subset), folder in sorted(folders.items()):
        if subset not in keep:
            continue
        clean_files = (
            {p.stem: p for p in audio_files(folders[("clean", subset)], recursive=False)}
            if ("clean", subset) in folders
            else {}
        )
        for path in audio_files(folder, recursive=False):
            utt = path.stem
            speaker = utt.split("_", 1)[0]
            fields = {
                "id": utt,
                "speaker": speaker,
                "language": "en",
                "split": _voicebank_split(subset, speaker),
                "subset": subset,
                "condition": condition,
            }
            if condition == "noisy":
                if utt not in clean_files:
                    skipped.append(
                        Skipped(str(path), f"{path}: no matching clean file {utt}{path.suffix} in clean_{subset}_wav")
                    )
                    continue
                fields.update(id=f"{utt}_noisy", clean_path=str(clean_files[utt]))
            candidates.append((path, fields))
    return _collect("voicebank", root, candidates, skipped)


def _voicebank_train_set(root: Path, folders: dict[tuple[str, str], Path], train_set: str | None) -> str | None:
    """The training set to list: the requested one, else 28spk when present, else 56spk."""
    present = {subset for _, subset in folders}
    if train_set is None:
        return next((s for s in VB_TRAIN_SETS if s in present), None)
    wanted = f"trainset_{train_set}"
    if wanted not in VB_TRAIN_SETS:
        raise CorpusError(f"unknown VoiceBank-DEMAND training set {train_set!r}; choose 28spk or 56spk")
    if wanted not in present:
        raise CorpusError(f"{root}: no clean_{wanted}_wav or noisy_{wanted}_wav folder")
    return wanted


# --------------------------------------------------------------------------------------------
# LibriSpeech
# --------------------------------------------------------------------------------------------

LIBRISPEECH_SUBSET = re.compile(r"(train|dev|test)-[\w-]+", re.IGNORECASE)
LIBRISPEECH_SPLITS = {"train": "train", "dev": "valid", "test": "test"}


def _librispeech_subsets(root: Path) -> list[Path]:
    """Subset folders (train-clean-100, dev-clean, ...) at, below, or under `LibriSpeech/` of root."""
    if LIBRISPEECH_SUBSET.fullmatch(root.name):
        return [root]
    bases = [root] + sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() == "librispeech")
    for base in bases:
        subsets = sorted(d for d in base.iterdir() if d.is_dir() and LIBRISPEECH_SUBSET.fullmatch(d.name))
        if subsets:
            return subsets
    raise CorpusError(
        f"{root}: no LibriSpeech subset folder found; expected "
        f"<root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac "
        f"with subsets such as train-clean-100, dev-clean, test-clean"
    )


def scan_librispeech(root: str | os.PathLike, subsets: Sequence[str] | None = None) -> ScanResult:
    """LibriSpeech: `<root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`.

    `root` may also be the LibriSpeech folder or one subset folder. train-* -> train,
    dev-* -> valid, test-* -> test; `subsets` (e.g. ["train-clean-100"]) restricts the scan.
    """
    root = _require_dir(root, "LibriSpeech")
    folders = _librispeech_subsets(root)
    if subsets is not None:
        wanted = {s.lower() for s in subsets}
        missing = wanted - {f.name.lower() for f in folders}
        if missing:
            raise CorpusError(f"{root}: LibriSpeech subset(s) not found: {', '.join(sorted(missing))}")
        folders = [f for f in folders if f.name.lower() in wanted]
    candidates: list[tuple[Path, dict]] = []
    skipped: list[Skipped] = []
    for folder in folders:
        subset = folder.name.lower()
        split = LIBRISPEECH_SPLITS[subset.split("-", 1)[0]]
        for path in audio_files(folder):
            parts = path.relative_to(folder).parts
            if len(parts) != 3:
                skipped.append(Skipped(str(path), f"{path}: not in a <speaker>/<chapter>/ folder of {folder}"))
                continue
            candidates.append(
                (
                    path,
                    {
                        "id": path.stem,
                        "speaker": parts[0],
                        "chapter": parts[1],
                        "language": "en",
                        "split": split,
                        "subset": subset,
                    },
                )
            )
    return _collect("librispeech", root, candidates, skipped)


# --------------------------------------------------------------------------------------------
# Any folder
# --------------------------------------------------------------------------------------------


def scan_folder(root: str | os.PathLike, split: str = "test", language: str = "und") -> ScanResult:
    """Every audio file under `root`: id = relative path without extension, speaker = parent folder."""
    root = _require_dir(root, "audio")
    files = audio_files(root)
    if not files:
        raise CorpusError(f"{root}: no audio files found (extensions {', '.join(sorted(AUDIO_SUFFIXES))})")
    candidates: list[tuple[Path, dict]] = []
    skipped: list[Skipped] = []
    taken: dict[str, Path] = {}
    for path in files:
        utt = path.relative_to(root).with_suffix("").as_posix()
        if utt in taken:
            skipped.append(Skipped(str(path), f"{path}: same id {utt!r} as {taken[utt]}"))
            continue
        taken[utt] = path
        candidates.append((path, {"id": utt, "speaker": path.parent.name, "language": language, "split": split}))
    return _collect("folder", root, candidates, skipped)


# --------------------------------------------------------------------------------------------
# Registry, manifests, converted copies
# --------------------------------------------------------------------------------------------

CORPORA: dict[str, Callable[..., ScanResult]] = {
    "wsj0": scan_wsj0,
    "voicebank": scan_voicebank,
    "librispeech": scan_librispeech,
    "folder": scan_folder,
}


def scan(corpus: str, root: str | os.PathLike, **options: object) -> ScanResult:
    """Scan `root` with the loader registered as `corpus` (see CORPORA)."""
    if corpus not in CORPORA:
        raise CorpusError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    return CORPORA[corpus](root, **options)


def manifest_name(record: dict) -> str:
    """The manifest a record belongs in: its split, with `_noisy` for noisy records of paired corpora."""
    return f"{record['split']}_noisy" if record.get("clean_path") else record["split"]


def write_manifests(
    records: Iterable[dict], out_dir: str | os.PathLike, skipped: Sequence[Skipped] = ()
) -> dict[str, Path]:
    """Write `<out_dir>/<manifest_name>.jsonl` per group of records, and `skipped.tsv` if any file was skipped.

    Returns manifest name -> path written.
    """
    out_dir = Path(out_dir)
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[manifest_name(record)].append(record)
    written = {}
    for name, group in sorted(groups.items()):
        written[name] = out_dir / f"{name}.jsonl"
        write_manifest(written[name], group)
    if skipped:
        write_text_atomic(out_dir / "skipped.tsv", "".join(f"{s.path}\t{s.reason}\n" for s in skipped))
    return written


def materialized_path(source: str | os.PathLike, out_dir: Path) -> Path:
    """Where `materialize` puts the copy of `source`: `<out_dir>/<source folder name>/<stem>.flac`."""
    source = Path(source)
    return out_dir / source.parent.name / f"{source.stem}.flac"


def materialize(records: Iterable[dict], out_dir: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> list[dict]:
    """Write mono FLAC copies at `sample_rate` of every record's `path` and `clean_path`.

    Copies are written atomically, and a copy already present is kept, so an interrupted run
    resumes. Returns the records pointing at the copies, with duration, rate and sha256 updated.
    """
    out_dir = Path(out_dir).resolve()
    records = list(records)
    targets: dict[str, Path] = {}
    owners: dict[Path, str] = {}
    for record in records:
        for key in ("path", "clean_path"):
            if record.get(key):
                source = str(record[key])
                target = materialized_path(source, out_dir)
                if owners.setdefault(target, source) != source:
                    raise CorpusError(f"{source} and {owners[target]} would both be copied to {target}")
                targets[source] = target
    for source, target in tqdm(targets.items(), desc="converting", unit="file", disable=None):
        if not target.exists():
            signal, _ = read_audio(source, sample_rate)
            write_audio(target, signal, sample_rate)
    converted = []
    for record in records:
        target = targets[str(record["path"])]
        new = {**record, **describe(target)}
        if record.get("clean_path"):
            new["clean_path"] = str(targets[str(record["clean_path"])])
        converted.append(new)
    return converted
