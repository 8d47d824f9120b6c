"""JSONL manifests: one JSON object per line describing one audio file.

Every record has at least `id`, `path`, `duration` (seconds), `speaker`, `language`, `split`
and `sha256`; corpora add their own fields (noise type, SNR, ...). Paths are stored relative to
the manifest's folder, so a corpus folder can be moved, and are returned absolute on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_path
from ..errors import SpeechDVAEError

REQUIRED_FIELDS = ("id", "path", "duration", "speaker", "language", "split", "sha256")
PATH_FIELDS = ("path", "clean_path", "noise_path")


class ManifestError(SpeechDVAEError, ValueError):
    """A manifest that is missing, malformed, or lacks required fields."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike, required: Iterable[str] = ("id", "path")) -> list[dict]:
    """Read a JSONL manifest; path fields come back absolute. Raises ManifestError with the line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({err})") from err
            missing = [k for k in required if k not in record]
            if missing:
                raise ManifestError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            for key in PATH_FIELDS:
                if key in record and record[key] is not None:
                    record[key] = str((base / record[key]).resolve()) if not os.path.isabs(record[key]) else record[key]
            records.append(record)
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically, storing path fields relative to the manifest's folder."""
    path = Path(path)
    base = path.parent.resolve()
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for record in records:
            out = dict(record)
            for key in PATH_FIELDS:
                if key in out and out[key] is not None:
                    out[key] = os.path.relpath(Path(out[key]).resolve(), base)
            f.write(json.dumps(out, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def summarize(records: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Hours, utterances and distinct speakers per split."""
    stats: dict[str, dict] = defaultdict(lambda: {"hours": 0.0, "utterances": 0, "speakers": set()})
    for r in records:
        s = stats[r.get("split", "all")]
        s["hours"] += float(r.get("duration", 0.0)) / 3600.0
        s["utterances"] += 1
        s["speakers"].add(r.get("speaker", "?"))
    return {
        k: {"hours": v["hours"], "utterances": v["utterances"], "speakers": len(v["speakers"])}
        for k, v in sorted(stats.items())
    }


def format_summary(stats: dict[str, dict[str, float]], title: str = "") -> str:
    """A small Markdown table of `summarize` output."""
    lines = [f"{title}" if title else "", "| split | hours | utterances | speakers |", "|---|---:|---:|---:|"]
    for split, s in stats.items():
        lines.append(f"| {split} | {s['hours']:.2f} | {s['utterances']} | {s['speakers']} |")
    return "\n".join(line for line in lines if line) + "\n"
