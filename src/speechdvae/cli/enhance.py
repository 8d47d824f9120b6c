"""`speechdvae enhance` (noisy files in, enhanced files out) and `speechdvae demo` (the bundled example)."""

from __future__ import annotations

import argparse

from .options import add_inference_options, add_progress, inference_request


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`enhance` and `demo`."""
    enhance = sub.add_parser(
        "enhance",
        help="enhance noisy recordings with a DVAE speech prior (files, folders or manifests)",
        description="Enhance noisy speech with a DVAE speech prior and an NMF noise model (variational EM, or "
        "Langevin posterior sampling with --inference langevin). "
        "Inputs are audio files, folders (searched recursively; their structure is mirrored in "
        "OUTDIR) or JSONL manifests (written as OUTDIR/<id>). Each output keeps its input's sample "
        "rate, channel count (one Wiener gain, computed on the channel mix, applied to every "
        "channel), level and format (WAV, FLAC or Ogg; other formats become WAV); the prior models "
        "16 kHz speech, so content above 8 kHz is removed. Existing outputs are skipped, so an "
        "interrupted run resumes; files that cannot be enhanced are reported on stderr and in "
        "OUTDIR/failed.jsonl, and the exit status is then 1.",
    )
    enhance.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, folder or JSONL manifest")
    enhance.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (never an input folder)")
    enhance.add_argument(
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="shipped prior name or checkpoint folder (default: default)",
    )
    add_inference_options(enhance)
    enhance.add_argument(
        "--chunk-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="longer files are enhanced in chunks of S seconds overlapping by 1 s (default: 20)",
    )
    enhance.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="chunks of a long file enhanced together (default: 1; more uses more memory and is not faster on CPU)",
    )
    enhance.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda if available, else cpu)")
    enhance.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes of one thread each that share the chunks of all files, those of one long file included "
        "(default: one per core on CPU, 1 on a GPU)",
    )
    enhance.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads of the main process (default: 1 on CPU, the fastest for the VEM's "
        "small recurrent steps)",
    )
    enhance.add_argument("--overwrite", action="store_true", help="enhance again files whose output exists")
    enhance.add_argument(
        "--shard",
        metavar="I/N",
        help="process every N-th file starting at the I-th (0-based), to split a corpus across "
        "processes (default: RANK/WORLD_SIZE under torchrun, else all files)",
    )
    add_progress(enhance)
    enhance.set_defaults(func=run_enhance)

    demo = sub.add_parser(
        "demo",
        help="enhance the bundled noisy example and show the metrics and spectrograms",
        description="Enhance the bundled noisy example (open corpus test set) with the shipped prior, print "
        "SI-SDR, PESQ and ESTOI of the noisy and enhanced signals against the clean reference, and "
        "write OUTDIR/enhanced.wav, OUTDIR/spectrograms.png and OUTDIR/metrics.json.",
    )
    demo.add_argument(
        "-o", "--out", default="demo_output", metavar="OUTDIR", help="output folder (default: demo_output)"
    )
    demo.add_argument(
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="shipped prior name or checkpoint folder (default: default)",
    )
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: 1 on CPU)")
    add_progress(demo)
    demo.set_defaults(func=run_demo)


def run_enhance(args: argparse.Namespace) -> int:
    """`speechdvae enhance`; exit status 1 if any file failed."""
    from ..enhancement.files import default_workers, enhance_files, parse_shard, set_threads, worker_device

    config = inference_request(args)
    device = worker_device(args.device)
    set_threads(device, args.threads)
    report = enhance_files(
        args.inputs,
        args.out,
        args.model,
        config,
        args.chunk_seconds,
        args.batch_size,
        device,
        not args.no_progress,
        args.overwrite,
        parse_shard(args.shard),
        default_workers(device, args.workers),
    )
    print(report.summary())
    return 1 if report.failed else 0


def run_demo(args: argparse.Namespace) -> int:
    """`speechdvae demo`."""
    from ..demo import run_demo as demo
    from ..enhancement.files import set_threads

    set_threads(args.device, args.threads)
    demo(args.out, args.model, device=args.device, progress=not args.no_progress)
    return 0
