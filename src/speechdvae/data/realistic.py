"""A validation benchmark that resembles real use: noise from held-out sources, utterances of realistic length.

Settings chosen on `mixtures/valid` (1-3-s prompts, noise of the six training ambience types) did not
carry over to real recordings. This benchmark differs from it in the two ways that matter:

- Noise held out by source: everyday recordings (traffic, crowd, vehicle, rain) from Debian packages
  that the open corpus uses nowhere (see HELDOUT_NOISE), fetched with `apt-get download` +
  `dpkg-deb` (only the listed files are unpacked) and converted to 16 kHz FLAC under
  ROOT/noise/heldout/, described in ROOT/manifests/noise_heldout.jsonl.
- Realistic lengths: "long" utterances of 4-12 s join consecutive prompts (by file id) of one speaker,
  untrimmed, with a drawn 0.2-0.5-s pause between prompts filled with noise at the level of the
  preceding prompt's own noise floor; "short" utterances are single 1-3-s prompts like those
  of `mixtures/valid`. No prompt is used twice.

Speech comes from the validation splits only (held-out files of training speakers, and the unseen
speaker), half of each length condition from each split. Mixing is `speechdvae data mix`'s: BS.1770
loudness SNR, seeded plan, balanced so that every (noise kind, SNR, length) cell holds --per-cell
mixtures (the long condition's plan uses seed + 1). Output: OUT/noisy/, OUT/clean/, OUT/manifest.jsonl
(with `length`, `noise_type` = the kind, and `parts` = the prompt ids), plus the joined clean utterances
in OUT/speech/ and OUT/utterances.jsonl. Every step is idempotent: packages, conversions, joined
utterances and mixtures already done are reused, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, noise_floor_db, read_audio, write_audio
from .manifest import REQUIRED_FIELDS, read_manifest, sha256_file, write_manifest
from .mix import DEFAULT_SNRS, MANIFEST_NAME, MixError, file_stems, output_jobs, plan_mixtures, run_jobs
from .open_corpus import Package, PackageToolError, Source, audio_path, convert_package, fetch_package

VALID_SPLITS = ("valid", "valid_unseen")
LENGTHS = ("short", "long")
SHORT_SECONDS = (1.0, 3.0)
LONG_SECONDS = (4.0, 12.0)
GAP_SECONDS = (0.2, 0.5)
DEFAULT_PER_CELL = 4
HELDOUT_MANIFEST = "noise_heldout.jsonl"
UTTERANCES_NAME = "utterances.jsonl"

# package -> file in the package -> noise kind. Long recordings of real ambience, no music or speech.
HELDOUT_NOISE: dict[str, dict[str, str]] = {
    "redeclipse-data": {
        "usr/share/games/redeclipse/data/sounds/ambience/distant_cars.ogg": "traffic",
        "usr/share/games/redeclipse/data/sounds/ambience/morph/rain.ogg": "rain",
    },
    "scorched3d-data": {
        "usr/share/games/scorched3d/data/globalmods/apoc/data/wav/misc/citysounds.wav": "traffic",
        "usr/share/games/scorched3d/data/globalmods/apoc/data/wav/misc/cheeringloop.wav": "crowd",
        "usr/share/games/scorched3d/data/globalmods/none/data/wav/misc/rain.wav": "rain",
    },
    "supertuxkart-data": {
        "usr/share/games/supertuxkart/data/sfx/lenautile_restaurant.ogg": "crowd",
        "usr/share/games/supertuxkart/data/tracks/black_forest/steamLocomotive.ogg": "vehicle",
    },
    "torcs-data": {
        "usr/share/games/torcs/data/sound/road-ride.wav": "vehicle",
    },
    "flightgear-data-base": {
        "usr/share/games/flightgear/Aircraft/c172p/Sounds/engine.wav": "vehicle",
        "usr/share/games/flightgear/Sounds/rain.wav": "rain",
    },
    "megaglest-data": {
        "usr/share/games/megaglest/tilesets/autumn/sounds/rain.ogg": "rain",
    },
}


# ------------------------------------------------------------------------------- held-out noise


def heldout_package(name: str, files: dict[str, str]) -> Package:
    """A noise package of which only `files` (path in the package -> kind) are unpacked and used."""

    def lister(root: Path) -> Iterator[Source]:
        for member, kind in sorted(files.items()):
            path = root / member
            if not path.is_file():
                raise PackageToolError(f"{path} is missing: delete {root} to unpack {name} again")
            sid = f"heldout/{name}/{Path(member).stem}"
            yield Source(sid, str(path), "soundfile", "noise", sid, "none", "heldout", kind)

    return Package(name, lister, members=tuple(f"./{member}" for member in sorted(files)))


HELDOUT_PACKAGES = tuple(heldout_package(name, files) for name, files in HELDOUT_NOISE.items())


def fetch_heldout_noise(root: Path, workers: int = 1, packages: Sequence[Package] = HELDOUT_PACKAGES) -> list[dict]:
    """Fetch, convert and list the held-out noise under `root`; writes manifests/noise_heldout.jsonl."""
    records = []
    for pkg in packages:
        sources = list(pkg.lister(fetch_package(pkg, root)))
        entries = convert_package(pkg, sources, root, workers)
        for s in sources:
            entry = entries[s.id]
            if entry["status"] != "ok":
                raise PackageToolError(
                    f"{s.locator}: cannot convert ({entry['reason']}); delete "
                    f"{root / 'cache' / (pkg.name + '.jsonl')} to try again"
                )
            records.append(
                {
                    "id": s.id,
                    "path": str(audio_path(root, s)),
                    "duration": round(entry["duration"], 4),
                    "speaker": s.speaker,
                    "language": s.language,
                    "split": s.split,
                    "sha256": entry["sha256"],
                    "corpus": pkg.name,
                    "package": pkg.name,
                    "recording": s.speaker,
                    "noise_type": s.noise_type,
                    "noise_floor_db": entry["noise_floor_db"],
                }
            )
    write_manifest(root / "manifests" / HELDOUT_MANIFEST, records)
    return records


# ---------------------------------------------------------------------------------------- speech


def read_validation_speech(manifests: Sequence[str | Path]) -> list[dict]:
    """Records of the speech manifests; MixError unless every one is validation speech with a unique id."""
    records = [r for path in manifests for r in read_manifest(path, REQUIRED_FIELDS)]
    for r in records:
        if r["split"] not in VALID_SPLITS:
            raise MixError(
                f"{r['id']} belongs to split {r['split']!r}: the benchmark takes validation speech "
                f"only ({', '.join(VALID_SPLITS)})"
            )
    duplicates = sorted(i for i, c in Counter(r["id"] for r in records).items() if c > 1)
    if duplicates:
        raise MixError(f"duplicate speech ids: {', '.join(duplicates[:5])}")
    return records


def _samples(record: dict) -> int:
    return round(float(record["duration"]) * SAMPLE_RATE)


def _utterance(length: str, parts: list[dict], gaps: list[int]) -> dict:
    """One benchmark utterance made of `parts` (prompts of one speaker) separated by `gaps` (samples)."""
    first = parts[0]
    suffix = f"+{len(parts) - 1}" if len(parts) > 1 else ""
    return {
        "id": f"{length}/{first['id']}{suffix}",
        "length": length,
        "duration": (sum(_samples(p) for p in parts) + sum(gaps)) / SAMPLE_RATE,
        "speaker": first["speaker"],
        "language": first["language"],
        "split": first["split"],
        "parts": [p["id"] for p in parts],
        "part_paths": [p["path"] for p in parts],
        "part_sha256": [p["sha256"] for p in parts],
        "gaps": gaps,
    }


def joined_utterances(
    records: Sequence[dict],
    rng: np.random.Generator,
    seconds: tuple[float, float] = LONG_SECONDS,
    gap_seconds: tuple[float, float] = GAP_SECONDS,
) -> list[dict]:
    """Runs of consecutive prompts (by id) of one speaker, each joined to a drawn length within `seconds`.

    Runs never overlap; a run that cannot reach the minimum without passing the maximum is dropped.
    """
    by_speaker: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["id"]):
        by_speaker[(r["split"], r["speaker"], r["language"])].append(r)
    low, high = (round(s * SAMPLE_RATE) for s in seconds)
    out = []
    for key in sorted(by_speaker):
        prompts = by_speaker[key]
        i = 0
        while i < len(prompts):
            target = rng.uniform(low, high)
            parts, gaps, total = [prompts[i]], [], _samples(prompts[i])
            j = i + 1
            while j < len(prompts) and total < target:
                gap = round(rng.uniform(*gap_seconds) * SAMPLE_RATE)
                if total + gap + _samples(prompts[j]) > high:
                    break
                parts.append(prompts[j])
                gaps.append(gap)
                total += gap + _samples(prompts[j])
                j += 1
            if low <= total <= high:
                out.append(_utterance("long", parts, gaps))
            i = j
    return out


def single_utterances(records: Sequence[dict], seconds: tuple[float, float] = SHORT_SECONDS) -> list[dict]:
    """Single prompts lasting within `seconds`, as utterances of the short condition."""
    return [
        _utterance("short", [r], [])
        for r in sorted(records, key=lambda r: r["id"])
        if seconds[0] <= float(r["duration"]) <= seconds[1]
    ]


def choose(candidates: Sequence[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """n candidates without replacement, spread as evenly as possible over their speech splits."""
    by_split: dict[str, list[dict]] = defaultdict(list)
    for c in candidates:
        by_split[c["split"]].append(c)
    splits = sorted(by_split)
    if not splits:
        raise MixError("no speech to make utterances from")
    chosen = []
    for k, split in enumerate(splits):
        count = n // len(splits) + (k < n % len(splits))
        pool = by_split[split]
        if count > len(pool):
            length = candidates[0]["length"]
            raise MixError(
                f"only {len(pool)} {length} utterances can be made from split {split!r}, "
                f"{count} are needed: lower --per-cell"
            )
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]
    return sorted(chosen, key=lambda c: c["id"])


def select_utterances(records: Sequence[dict], n_per_length: int, seed: int) -> list[dict]:
    """n_per_length long and n_per_length short utterances, seeded; no prompt appears in two of them."""
    rng = np.random.default_rng(seed)
    long = choose(joined_utterances(records, rng), n_per_length, rng)
    used = {part for u in long for part in u["parts"]}
    short = choose([u for u in single_utterances(records) if u["parts"][0] not in used], n_per_length, rng)
    return short + long


def _gap_noise(part: np.ndarray, samples: int, key: str) -> np.ndarray:
    """A pause of `samples` filled with white noise at the noise floor of `part` (seeded by `key`)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    level = 10 ** (noise_floor_db(part) / 20) if np.any(part) else 0.0
    return (level * rng.standard_normal(samples)).astype(np.float32)


def write_utterances(utterances: Sequence[dict], out_dir: Path) -> list[dict]:
    """Point single prompts at their file and write joined ones to out_dir/speech/ (kept if unchanged)."""
    manifest = out_dir / UTTERANCES_NAME
    previous = {r["id"]: r for r in read_manifest(manifest)} if manifest.is_file() else {}
    stems = dict(zip((u["id"] for u in utterances), file_stems([u["id"] for u in utterances])))
    done = []
    for u in utterances:
        record = {k: v for k, v in u.items() if k != "part_paths"}
        if len(u["parts"]) == 1:
            done.append({**record, "path": u["part_paths"][0], "sha256": u["part_sha256"][0]})
            continue
        path = out_dir / "speech" / f"{stems[u['id']]}.flac"
        old = previous.get(u["id"])
        if (
            old is None
            or any(old.get(k) != u[k] for k in ("parts", "part_sha256", "gaps"))
            or not path.is_file()
            or sha256_file(path) != old.get("sha256")
        ):
            pieces = []
            for k, part_path in enumerate(u["part_paths"]):
                part = read_audio(part_path)[0]
                pieces.append(part)
                if k < len(u["gaps"]):
                    pieces.append(_gap_noise(part, u["gaps"][k], f"{u['id']}#{k}"))
            joined = np.concatenate(pieces)
            write_audio(path, joined)
            old = {"duration": len(joined) / SAMPLE_RATE}
        done.append({**record, "path": str(path), "duration": old["duration"], "sha256": sha256_file(path)})
    write_manifest(manifest, done)
    return done


# ------------------------------------------------------------------------------------- the build


def build_benchmark(
    root: str | Path,
    out_dir: str | Path,
    speech_manifests: Sequence[str | Path] | None = None,
    per_cell: int = DEFAULT_PER_CELL,
    snrs: Sequence[float] = DEFAULT_SNRS,
    seed: int = 0,
    workers: int = 1,
    packages: Sequence[Package] = HELDOUT_PACKAGES,
) -> Path:
    """Fetch the held-out noise into `root`, make the utterances and mixtures in `out_dir`; returns the manifest."""
    root, out_dir = Path(root), Path(out_dir).resolve()
    if per_cell < 1:
        raise MixError(f"--per-cell must be at least 1, got {per_cell}")
    if not snrs:
        raise MixError("no SNRs given")
    manifests = speech_manifests or [root / "manifests" / f"speech_{split}.jsonl" for split in VALID_SPLITS]
    speech = read_validation_speech(manifests)
    noise = fetch_heldout_noise(root, workers, packages)
    kinds = sorted({r["noise_type"] for r in noise})
    n_per_length = per_cell * len(kinds) * len(snrs)
    utterances = write_utterances(select_utterances(speech, n_per_length, seed), out_dir)
    jobs = []
    for k, length in enumerate(LENGTHS):
        chosen = {u["id"]: u for u in utterances if u["length"] == length}
        plan = plan_mixtures(chosen.values(), noise, snrs, seed + k)
        jobs += output_jobs(
            [{**entry, "length": length, "parts": chosen[entry["id"]]["parts"]} for entry in plan], out_dir
        )
    return run_jobs(jobs, out_dir / MANIFEST_NAME, allow_loop=True)


def format_summary(records: Sequence[dict]) -> str:
    """Markdown table of the mixtures per noise kind and length, with their duration and speech splits."""
    lines = [
        "| length | noise kind | mixtures | SNRs (dB) | minutes | valid / valid_unseen |",
        "|---|---|---:|---|---:|---|",
    ]
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["length"], r["noise_type"])].append(r)
    for (length, kind), rs in sorted(cells.items()):
        snrs = Counter(r["snr"] for r in rs)
        splits = Counter(r["split"] for r in rs)
        lines.append(
            f"| {length} | {kind} | {len(rs)} | "
            + ", ".join(f"{s:g}: {c}" for s, c in sorted(snrs.items()))
            + f" | {sum(r['duration'] for r in rs) / 60:.1f} | {splits['valid']} / {splits['valid_unseen']} |"
        )
    return "\n".join(lines)
