"""`speechdvae eval`: analysis-resynthesis, enhancement, generation and the listening page, each report naming
the command that regenerates it."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from ..commands import enhance_command, generate_command, listen_command, resynth_command
from .options import (
    DATA_ROOT,
    add_inference_options,
    add_model_choice,
    add_progress,
    inference_request,
    models_from_args,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`eval resynth`, `eval enhance`, `eval generate` and `eval listen`."""
    evaluate = sub.add_parser(
        "eval",
        help="evaluate speech priors and write Markdown/CSV/PNG reports",
        description="Evaluate speech priors and write Markdown/CSV/PNG reports.",
    )
    eval_sub = evaluate.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    resynth = eval_sub.add_parser(
        "resynth",
        help="analysis-resynthesis (RMSE, SI-SDR, PESQ, ESTOI) of models on test speech",
        description="Analysis-resynthesis evaluation (HiT-DVAE paper Tables 1-2, SE paper Table I): each test "
        "utterance is encoded (z = posterior mean), decoded and resynthesised with its own phase; "
        "autoregressive models are decoded with the true past (GT) and with their own past (GEN).",
    )
    add_model_choice(resynth)
    resynth.add_argument("--manifest", required=True, metavar="MANIFEST", help="test speech manifest (JSONL)")
    resynth.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the report")
    resynth.add_argument("--limit", type=int, metavar="N", help="evaluate N utterances evenly spaced by id")
    resynth.add_argument(
        "--modes",
        nargs="+",
        choices=["GT", "GEN"],
        default=["GT", "GEN"],
        help="decoding modes of autoregressive models (default: both)",
    )
    resynth.add_argument("--sample", action="store_true", help="draw z from the posterior instead of its mean")
    resynth.add_argument("--seed", type=int, default=0, help="torch seed with --sample (default: 0)")
    resynth.add_argument("--no-oracle", action="store_true", help="leave out the exact-power oracle row")
    resynth.add_argument(
        "--segment",
        type=int,
        metavar="FRAMES",
        help="encode and decode each utterance FRAMES frames at a time, each run on its own, e.g. the sequence "
        "length a Transformer prior was trained on (default: whole utterances)",
    )
    resynth.add_argument("--workers", type=int, metavar="N", help="processes computing metrics (default: all cores)")
    add_progress(resynth)
    resynth.set_defaults(func=run_resynth)

    enhance = eval_sub.add_parser(
        "enhance",
        help="speech enhancement (SI-SDR, PESQ, ESTOI and improvements) of priors on noisy mixtures",
        description="Speech-enhancement evaluation (SE paper Table II, Figs. 4-5): each noisy mixture is divided by "
        "its peak and enhanced with every prior (by the VEM, or by Langevin posterior sampling with --inference "
        "langevin); the Wiener estimates and the mixtures themselves are scored against the clean references. "
        "Results are cached in OUTDIR, so an interrupted run continues where it stopped.",
    )
    add_model_choice(enhance)
    enhance.add_argument(
        "--manifest",
        required=True,
        metavar="MANIFEST",
        help="noisy mixture manifest (JSONL from `speechdvae data mix`: path, clean_path, noise_type, snr)",
    )
    enhance.add_argument(
        "-o", "--out", required=True, metavar="OUTDIR", help="output folder of the report and of the result cache"
    )
    enhance.add_argument(
        "--limit", type=int, metavar="N", help="evaluate N mixtures balanced over noise type x SNR, evenly spaced by id"
    )
    add_inference_options(enhance)
    enhance.add_argument(
        "--snapshots",
        type=int,
        nargs="+",
        default=[],
        metavar="K",
        help="also report every prior after each K VEM iterations below its own, from the same runs (identical to "
        "separate runs with --iterations K, and cached as them)",
    )
    enhance.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="mixtures enhanced together (default: 8; the results do not depend on it)",
    )
    enhance.add_argument(
        "--save-audio", action="store_true", help="also write the estimates to OUTDIR/audio/<model>/<id>.wav"
    )
    enhance.add_argument(
        "--workers", type=int, metavar="N", help="processes enhancing and scoring, one thread each (default: all cores)"
    )
    add_progress(enhance)
    enhance.set_defaults(func=run_enhance)

    generate = eval_sub.add_parser(
        "generate",
        help="generation (FD-DNSMOS) of priors: sampled 1.6-s clips against training speech",
        description="Generation evaluation (HiT-DVAE paper Table 3): each prior samples 1.6-s spectrograms, given a "
        "phase by Griffin-Lim; FD-DNSMOS is the Frechet distance between DNSMOS embeddings of these "
        "clips and of training-speech crops, mean and 95% CI over draws, with test speech (exact and "
        "Griffin-Lim phase) as reference rows. Needs `pip install 'speechdvae[dnsmos]'`. Results are "
        "cached in OUTDIR, so an interrupted run continues where it stopped.",
    )
    add_model_choice(generate)
    manifests = os.path.join(DATA_ROOT, "manifests")
    generate.add_argument(
        "--reference-manifest",
        default=os.path.join(manifests, "speech_train.jsonl"),
        metavar="MANIFEST",
        help="speech cropped into the reference set (default: %(default)s)",
    )
    generate.add_argument(
        "--test-manifest",
        default=os.path.join(manifests, "speech_test.jsonl"),
        metavar="MANIFEST",
        help="speech of the test rows (default: %(default)s)",
    )
    generate.add_argument("--no-test", action="store_true", help="leave out the two test-speech rows")
    for option, kind, metavar, help_text in (
        ("--samples", int, "N", "clips per draw (default: 512; the paper: 10240)"),
        ("--draws", int, "K", "independent draws per row (default: 5)"),
        ("--reference-samples", int, "N", "training crops in the reference set (default: 2048)"),
        ("--seed", int, "S", "root of every random stream (default: 0)"),
        ("--gl-iterations", int, "N", "Griffin-Lim iterations (default: 32)"),
        ("--gl-momentum", float, "M", "fast Griffin-Lim momentum, 0 for the original (default: 0.99)"),
    ):
        generate.add_argument(option, type=kind, metavar=metavar, help=help_text)
    generate.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the report and cache")
    add_progress(generate)
    generate.set_defaults(func=run_generate)

    listen = eval_sub.add_parser(
        "listen",
        help="a static listening page: test mixtures enhanced by every model, and generated samples",
        description="Write OUTDIR/index.html with audio players and spectrograms: COUNT noisy mixtures balanced over "
        "noise type x SNR (clean, noisy and every model's estimate, with SI-SDR, PESQ and ESTOI), then "
        "SAMPLES clips generated by each prior named with --generate (Griffin-Lim phase).",
    )
    add_model_choice(listen)
    listen.add_argument("--manifest", required=True, metavar="MANIFEST", help="noisy mixture manifest (JSONL)")
    listen.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the page")
    listen.add_argument("--count", type=int, default=4, metavar="N", help="mixtures on the page (default: 4)")
    listen.add_argument(
        "--generate",
        action="append",
        default=[],
        metavar="NAME",
        help="also play clips sampled from the prior labelled NAME (repeatable)",
    )
    listen.add_argument("--samples", type=int, default=2, metavar="N", help="generated clips per prior (default: 2)")
    add_inference_options(listen)
    add_progress(listen)
    listen.set_defaults(func=run_listen)


# -- resynthesis -------------------------------------------------------------------------------------


def run_resynth(args: argparse.Namespace) -> int:
    """`speechdvae eval resynth`."""
    from ..evaluate.resynthesis import MARKDOWN_NAME, evaluate_resynthesis, results_table

    oracle = not args.no_oracle
    given, models = models_from_args(args, "eval resynth")
    command = resynth_command(
        given,
        args.manifest,
        args.out,
        args.limit,
        args.modes,
        args.sample,
        args.seed,
        oracle,
        args.official,
        segment=args.segment,
    )
    summary = evaluate_resynthesis(
        models,
        args.manifest,
        args.out,
        args.limit,
        args.modes,
        args.workers,
        sample=args.sample,
        seed=args.seed,
        oracle=oracle,
        segment=args.segment,
        progress=not args.no_progress,
        command=command,
    )
    print(results_table(summary, "mean"))
    print(f"report: {Path(args.out) / MARKDOWN_NAME}")
    return 0


# -- enhancement -------------------------------------------------------------------------------------


def run_enhance(args: argparse.Namespace) -> int:
    """`speechdvae eval enhance`."""
    from ..evaluate.enhancement import MARKDOWN_NAME, evaluate_enhancement, scores_table

    config = inference_request(args)
    given, models = models_from_args(args, "eval enhance")
    command = enhance_command(
        given, args.manifest, args.out, args.limit, config, args.official, args.save_audio, args.snapshots
    )
    summary = evaluate_enhancement(
        models,
        args.manifest,
        args.out,
        args.limit,
        config,
        snapshots=args.snapshots,
        batch_size=args.batch_size,
        workers=args.workers,
        save_audio=args.save_audio,
        progress=not args.no_progress,
        command=command,
    )
    print(scores_table(summary))
    print(f"report: {Path(args.out) / MARKDOWN_NAME}")
    return 0


# -- generation --------------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    """`speechdvae eval generate`."""
    from ..evaluate.generation import MARKDOWN_NAME, GenerationSettings, evaluate_generation, results_table

    given_settings = {f.name: getattr(args, f.name) for f in fields(GenerationSettings)}
    settings = GenerationSettings(**{name: value for name, value in given_settings.items() if value is not None})
    test_manifest = None if args.no_test else args.test_manifest
    given, models = models_from_args(args, "eval generate")
    command = generate_command(given, args.reference_manifest, test_manifest, args.out, settings, args.official)
    summary = evaluate_generation(
        models,
        args.reference_manifest,
        test_manifest,
        args.out,
        settings,
        progress=not args.no_progress,
        command=command,
    )
    print(results_table(summary))
    print(f"report: {Path(args.out) / MARKDOWN_NAME}")
    return 0


# -- listening page ----------------------------------------------------------------------------------


def run_listen(args: argparse.Namespace) -> int:
    """`speechdvae eval listen`."""
    from ..evaluate.listen import build_listening_page

    config = inference_request(args)
    given, models = models_from_args(args, "eval listen")
    command = listen_command(
        given, args.official, args.manifest, args.out, args.count, args.generate, args.samples, config
    )
    page = build_listening_page(
        models,
        args.manifest,
        args.out,
        args.count,
        args.generate,
        args.samples,
        config,
        command,
        progress=not args.no_progress,
    )
    print(f"page: {page}")
    return 0
