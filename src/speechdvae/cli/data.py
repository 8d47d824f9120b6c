"""`speechdvae data`: build the open corpus, list a corpus one owns, make noisy mixtures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`data open`, `data mix`, `data realistic` and `data scan`."""
    from ..data import corpora, mix, open_corpus, realistic

    data = sub.add_parser(
        "data",
        help="build corpora, manifests and noisy mixtures",
        description="Build corpora, manifests and noisy mixtures.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    build = data_sub.add_parser(
        "open",
        help="download and convert the open speech + noise corpus from Debian packages",
        description=open_corpus.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--root", required=True, type=Path, help="folder to build the corpus in")
    build.add_argument("--workers", type=int, default=None, help="conversion processes (default: all cores)")
    build.add_argument(
        "--noise-floor-max-db",
        type=float,
        default=open_corpus.NOISE_FLOOR_MAX_DB,
        metavar="DB",
        help=f"drop speech whose noise floor is above DB dBFS (default: {open_corpus.NOISE_FLOOR_MAX_DB:g})",
    )
    build.set_defaults(func=run_open)

    mixing = data_sub.add_parser(
        "mix",
        help="make noisy mixtures at BS.1770 loudness SNRs, or regenerate the official WSJ0-QUT set",
        description=mix.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mixing.add_argument("--speech", metavar="MANIFEST", help="speech manifest (JSONL)")
    mixing.add_argument("--noise", metavar="MANIFEST", help="noise manifest (JSONL, with noise_type)")
    mixing.add_argument(
        "--snrs",
        type=float,
        nargs="+",
        default=list(mix.DEFAULT_SNRS),
        metavar="DB",
        help="target SNRs in dB, BS.1770 loudness difference (default: -5 0 5)",
    )
    mixing.add_argument("--seed", type=int, default=0, help="seed of the mixing plan (default: 0)")
    mixing.add_argument("--limit", type=int, metavar="N", help="mix only the first N utterances by id")
    mixing.add_argument("--official", metavar="JSON", help="official list to regenerate (wsj_test.json)")
    mixing.add_argument("--clean-root", metavar="DIR", help="with --official: WSJ0 clean wav root")
    mixing.add_argument("--noise-root", metavar="DIR", help="with --official: folder of QUT-NOISE wav files")
    mixing.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder")
    mixing.set_defaults(func=run_mix)

    realistic_bench = data_sub.add_parser(
        "realistic",
        help="validation benchmark: held-out noise sources, 4-12-s and 1-3-s utterances",
        description=realistic.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    realistic_bench.add_argument(
        "--root",
        required=True,
        type=Path,
        help="open corpus folder: held-out noise is added to it, speech manifests are read from it",
    )
    realistic_bench.add_argument(
        "-o", "--out", type=Path, metavar="OUTDIR", help="output folder (default: ROOT/mixtures/valid_realistic)"
    )
    realistic_bench.add_argument(
        "--speech",
        nargs="+",
        metavar="MANIFEST",
        help="validation speech manifests (default: ROOT/manifests/speech_valid.jsonl and speech_valid_unseen.jsonl)",
    )
    realistic_bench.add_argument(
        "--per-cell",
        type=int,
        default=realistic.DEFAULT_PER_CELL,
        metavar="N",
        help=f"mixtures per (noise kind, SNR, length) cell (default: {realistic.DEFAULT_PER_CELL})",
    )
    realistic_bench.add_argument(
        "--snrs",
        type=float,
        nargs="+",
        default=list(mix.DEFAULT_SNRS),
        metavar="DB",
        help="target SNRs in dB, BS.1770 loudness difference (default: -5 0 5)",
    )
    realistic_bench.add_argument(
        "--seed", type=int, default=0, help="seed of the utterances and mixing plan (default: 0)"
    )
    realistic_bench.add_argument("--workers", type=int, default=1, help="noise conversion processes (default: 1)")
    realistic_bench.set_defaults(func=run_realistic)

    scan = data_sub.add_parser(
        "scan",
        help="list a corpus you own (wsj0, voicebank, librispeech, folder) into manifests",
        description="Scan a corpus folder in its published layout and write one JSONL manifest per split "
        "(noisy VoiceBank-DEMAND files go to <split>_noisy.jsonl).",
    )
    scan.add_argument("corpus", choices=sorted(corpora.CORPORA))
    scan.add_argument("root", help="corpus root folder")
    scan.add_argument("-o", "--output", required=True, metavar="MANIFEST_DIR")
    scan.add_argument("--split", default="test", help="folder: split of every file (default: test)")
    scan.add_argument("--language", default="und", help="folder: language code (default: und)")
    scan.add_argument("--subsets", nargs="+", metavar="SUBSET", help="librispeech: e.g. train-clean-100 dev-clean")
    scan.add_argument(
        "--train-set", choices=["28spk", "56spk"], help="voicebank: training set (default: 28spk if present)"
    )
    scan.add_argument(
        "--materialize", metavar="DIR", help="also write 16 kHz mono FLAC copies here and point the manifests at them"
    )
    scan.set_defaults(func=run_scan)


def run_open(args: argparse.Namespace) -> int:
    """`speechdvae data open`: Debian packages -> the open corpus and its manifests."""
    from ..data.open_corpus import build, format_report

    stats = build(args.root, workers=args.workers, noise_floor_max_db=args.noise_floor_max_db)
    print(format_report(stats))
    print(f"Manifests: {args.root / 'manifests'}")
    return 0


def run_mix(args: argparse.Namespace) -> int:
    """`speechdvae data mix`: speech + noise manifests (or the official list) -> noisy mixtures."""
    from ..data.manifest import read_manifest
    from ..data.mix import build_mixtures, mix_from_official

    official = args.official is not None
    needed = ("clean_root", "noise_root") if official else ("speech", "noise")
    absent = [f"--{name.replace('_', '-')}" for name in needed if getattr(args, name) is None]
    if absent:
        raise UserError(f"data mix{' --official' if official else ''} needs {' and '.join(absent)}")
    manifest = (
        mix_from_official(args.official, args.clean_root, args.noise_root, args.out)
        if official
        else build_mixtures(args.speech, args.noise, args.out, args.snrs, args.seed, args.limit)
    )
    print(f"{manifest}: {len(read_manifest(manifest))} mixtures")
    return 0


def run_realistic(args: argparse.Namespace) -> int:
    """`speechdvae data realistic`: held-out noise + joined validation utterances -> the realistic benchmark."""
    from ..data.manifest import read_manifest
    from ..data.realistic import build_benchmark, format_summary

    out = args.out or args.root / "mixtures" / "valid_realistic"
    manifest = build_benchmark(args.root, out, args.speech, args.per_cell, args.snrs, args.seed, args.workers)
    records = read_manifest(manifest)
    print(format_summary(records))
    print(f"{manifest}: {len(records)} mixtures, {sum(r['duration'] for r in records) / 60:.1f} minutes")
    return 0


def run_scan(args: argparse.Namespace) -> int:
    """`speechdvae data scan`: corpus folder -> one manifest per split."""
    from ..data import corpora
    from ..data.manifest import format_summary, summarize

    options = {
        "folder": {"split": args.split, "language": args.language},
        "librispeech": {"subsets": args.subsets},
        "voicebank": {"train_set": args.train_set},
    }.get(args.corpus, {})
    result = corpora.scan(args.corpus, args.root, **options)
    records = corpora.materialize(result.records, args.materialize) if args.materialize else result.records
    written = corpora.write_manifests(records, args.output, result.skipped)
    print(format_summary(summarize(records), title=f"{args.corpus} -> {', '.join(map(str, written.values()))}"))
    return 0
