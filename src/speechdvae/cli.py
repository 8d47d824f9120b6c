"""The `speechdvae` command line: one sub-command per job, each a thin layer over the library."""
from __future__ import annotations

import argparse
import os
import sys


class UserError(Exception):
    """An error the user can fix (bad path, bad option): printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechdvae",
        description="Dynamical VAEs for speech: build corpora, train speech priors, evaluate them "
                    "and enhance noisy speech.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="build corpora, manifests and noisy mixtures",
                          description="Build corpora, manifests and noisy mixtures.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    from .data import open_corpus
    open_corpus.add_arguments(data_sub.add_parser(
        "open", help="download and convert the open speech + noise corpus from Debian packages",
        description=open_corpus.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    from .data import mix
    mix.add_arguments(data_sub.add_parser(
        "mix", help="make noisy mixtures at BS.1770 loudness SNRs, or regenerate the official WSJ0-QUT set",
        description=mix.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    from .data import realistic
    realistic.add_arguments(data_sub.add_parser(
        "realistic", help="validation benchmark: held-out noise sources, 4-12-s and 1-3-s utterances",
        description=realistic.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    from .data import corpora
    scan = data_sub.add_parser(
        "scan", help="list a corpus you own (wsj0, voicebank, librispeech, folder) into manifests",
        description="Scan a corpus folder in its published layout and write one JSONL manifest per split "
                    "(noisy VoiceBank-DEMAND files go to <split>_noisy.jsonl).")
    scan.add_argument("corpus", choices=sorted(corpora.CORPORA))
    scan.add_argument("root", help="corpus root folder")
    scan.add_argument("-o", "--output", required=True, metavar="MANIFEST_DIR")
    scan.add_argument("--split", default="test", help="folder: split of every file (default: test)")
    scan.add_argument("--language", default="und", help="folder: language code (default: und)")
    scan.add_argument("--subsets", nargs="+", metavar="SUBSET", help="librispeech: e.g. train-clean-100 dev-clean")
    scan.add_argument("--train-set", choices=["28spk", "56spk"],
                      help="voicebank: training set (default: 28spk if present)")
    scan.add_argument("--materialize", metavar="DIR",
                      help="also write 16 kHz mono FLAC copies here and point the manifests at them")
    scan.set_defaults(func=_data_scan)
    official = sub.add_parser(
        "import-official", help="convert the original authors' DVAE-SE checkpoints into speechdvae checkpoints",
        description="Convert every trained_models/<tag>/*_final_epochNNN.pt (with its config.ini) of the official "
                    "DVAE-SE release (GPL-3.0) into a speechdvae checkpoint folder OUT/official-<tag>.")
    official.add_argument("source", help="folder holding trained_models/ (or trained_models/ itself)")
    official.add_argument("-o", "--out", required=True, help="folder for the converted checkpoints")
    official.set_defaults(func=_import_official)

    enhance = sub.add_parser(
        "enhance", help="enhance noisy recordings with a DVAE speech prior (files, folders or manifests)",
        description="Enhance noisy speech with a DVAE speech prior and an NMF noise model (variational EM). "
                    "Inputs are audio files, folders (searched recursively; their structure is mirrored in "
                    "OUTDIR) or JSONL manifests (written as OUTDIR/<id>). Each output keeps its input's sample "
                    "rate, channel count (one Wiener gain, computed on the channel mix, applied to every "
                    "channel), level and format (WAV, FLAC or Ogg; other formats become WAV); the prior models "
                    "16 kHz speech, so content above 8 kHz is removed. Existing outputs are skipped, so an "
                    "interrupted run resumes; files that cannot be enhanced are reported on stderr and in "
                    "OUTDIR/failed.jsonl, and the exit status is then 1.")
    enhance.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, folder or JSONL manifest")
    enhance.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (never an input folder)")
    enhance.add_argument("--model", default="default", metavar="NAME|PATH",
                         help="shipped prior name or checkpoint folder (default: default)")
    _add_vem_options(enhance)
    enhance.add_argument("--chunk-seconds", type=float, default=20.0, metavar="S",
                         help="longer files are enhanced in chunks of S seconds overlapping by 1 s (default: 20)")
    enhance.add_argument("--batch-size", type=int, default=1, metavar="N",
                         help="chunks of a long file enhanced together (default: 1; more uses more memory and is "
                              "not faster on CPU)")
    enhance.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda if available, else cpu)")
    enhance.add_argument("--workers", type=int, metavar="N",
                         help="files enhanced at a time, in processes of one thread each (default: one per core on "
                              "CPU, 1 on a GPU)")
    enhance.add_argument("--threads", type=int, metavar="N",
                         help="torch CPU threads of the main process (default: 1 on CPU, the fastest for the VEM's "
                              "small recurrent steps)")
    enhance.add_argument("--overwrite", action="store_true", help="enhance again files whose output exists")
    enhance.add_argument("--shard", metavar="I/N",
                         help="process every N-th file starting at the I-th (0-based), to split a corpus across "
                              "processes (default: RANK/WORLD_SIZE under torchrun, else all files)")
    enhance.add_argument("--no-progress", action="store_true", help="no progress bar")
    enhance.set_defaults(func=_lazy("speechdvae.enhance.files"))

    demo = sub.add_parser(
        "demo", help="enhance the bundled noisy example and show the metrics and spectrograms",
        description="Enhance the bundled noisy example (open corpus test set) with the shipped prior, print "
                    "SI-SDR, PESQ and ESTOI of the noisy and enhanced signals against the clean reference, and "
                    "write OUTDIR/enhanced.wav, OUTDIR/spectrograms.png and OUTDIR/metrics.json.")
    demo.add_argument("-o", "--out", default="demo_output", metavar="OUTDIR", help="output folder (default: demo_output)")
    demo.add_argument("--model", default="default", metavar="NAME|PATH",
                      help="shipped prior name or checkpoint folder (default: default)")
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: 1 on CPU)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_lazy("speechdvae.demo"))

    evaluate = sub.add_parser("eval", help="evaluate speech priors and write Markdown/CSV/PNG reports",
                              description="Evaluate speech priors and write Markdown/CSV/PNG reports.")
    eval_sub = evaluate.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    resynth = eval_sub.add_parser(
        "resynth", help="analysis-resynthesis (RMSE, SI-SDR, PESQ, ESTOI) of models on test speech",
        description="Analysis-resynthesis evaluation (HiT-DVAE paper Tables 1-2, SE paper Table I): each test "
                    "utterance is encoded (z = posterior mean), decoded and resynthesised with its own phase; "
                    "autoregressive models are decoded with the true past (GT) and with their own past (GEN).")
    _add_model_choice(resynth)
    resynth.add_argument("--manifest", required=True, metavar="MANIFEST", help="test speech manifest (JSONL)")
    resynth.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the report")
    resynth.add_argument("--limit", type=int, metavar="N", help="evaluate N utterances evenly spaced by id")
    resynth.add_argument("--modes", nargs="+", choices=["GT", "GEN"], default=["GT", "GEN"],
                         help="decoding modes of autoregressive models (default: both)")
    resynth.add_argument("--sample", action="store_true", help="draw z from the posterior instead of its mean")
    resynth.add_argument("--seed", type=int, default=0, help="torch seed with --sample (default: 0)")
    resynth.add_argument("--no-oracle", action="store_true", help="leave out the exact-power oracle row")
    resynth.add_argument("--workers", type=int, metavar="N", help="processes computing metrics (default: all cores)")
    resynth.add_argument("--no-progress", action="store_true", help="no progress bar")
    resynth.set_defaults(func=_lazy("speechdvae.evaluate.resynthesis"))

    enhance_eval = eval_sub.add_parser(
        "enhance", help="speech enhancement (SI-SDR, PESQ, ESTOI and improvements) of priors on noisy mixtures",
        description="Speech-enhancement evaluation (SE paper Table II, Figs. 4-5): each noisy mixture is divided by "
                    "its peak and enhanced by the VEM with every prior; the Wiener estimates and the mixtures "
                    "themselves are scored against the clean references. Results are cached in OUTDIR, so an "
                    "interrupted run continues where it stopped.")
    _add_model_choice(enhance_eval)
    enhance_eval.add_argument("--manifest", required=True, metavar="MANIFEST",
                              help="noisy mixture manifest (JSONL from `speechdvae data mix`: path, clean_path, "
                                   "noise_type, snr)")
    enhance_eval.add_argument("-o", "--out", required=True, metavar="OUTDIR",
                              help="output folder of the report and of the result cache")
    enhance_eval.add_argument("--limit", type=int, metavar="N",
                              help="evaluate N mixtures balanced over noise type x SNR, evenly spaced by id")
    _add_vem_options(enhance_eval)
    enhance_eval.add_argument("--batch-size", type=int, default=8, metavar="N",
                              help="mixtures enhanced together (default: 8; the results do not depend on it)")
    enhance_eval.add_argument("--save-audio", action="store_true",
                              help="also write the estimates to OUTDIR/audio/<model>/<id>.wav")
    enhance_eval.add_argument("--workers", type=int, metavar="N",
                              help="processes enhancing and scoring, one thread each (default: all cores)")
    enhance_eval.add_argument("--no-progress", action="store_true", help="no progress bar")
    enhance_eval.set_defaults(func=_lazy("speechdvae.evaluate.enhancement"))

    generate = eval_sub.add_parser(
        "generate", help="generation (FD-DNSMOS) of priors: sampled 1.6-s clips against training speech",
        description="Generation evaluation (HiT-DVAE paper Table 3): each prior samples 1.6-s spectrograms, given a "
                    "phase by Griffin-Lim; FD-DNSMOS is the Frechet distance between DNSMOS embeddings of these "
                    "clips and of training-speech crops, mean and 95% CI over draws, with test speech (exact and "
                    "Griffin-Lim phase) as reference rows. Needs `pip install 'speechdvae[dnsmos]'`. Results are "
                    "cached in OUTDIR, so an interrupted run continues where it stopped.")
    _add_model_choice(generate)
    manifests = os.path.join(os.environ.get("SPEECHDVAE_DATA", "data/open"), "manifests")
    generate.add_argument("--reference-manifest", default=os.path.join(manifests, "speech_train.jsonl"),
                          metavar="MANIFEST", help="speech cropped into the reference set (default: %(default)s)")
    generate.add_argument("--test-manifest", default=os.path.join(manifests, "speech_test.jsonl"),
                          metavar="MANIFEST", help="speech of the test rows (default: %(default)s)")
    generate.add_argument("--no-test", action="store_true", help="leave out the two test-speech rows")
    for option, kind, metavar, help_text in (
            ("--samples", int, "N", "clips per draw (default: 512; the paper: 10240)"),
            ("--draws", int, "K", "independent draws per row (default: 5)"),
            ("--reference-samples", int, "N", "training crops in the reference set (default: 2048)"),
            ("--seed", int, "S", "root of every random stream (default: 0)"),
            ("--gl-iterations", int, "N", "Griffin-Lim iterations (default: 32)"),
            ("--gl-momentum", float, "M", "fast Griffin-Lim momentum, 0 for the original (default: 0.99)")):
        generate.add_argument(option, type=kind, metavar=metavar, help=help_text)
    generate.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the report and cache")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate.set_defaults(func=_lazy("speechdvae.evaluate.generation"))

    listen = eval_sub.add_parser(
        "listen", help="a static listening page: test mixtures enhanced by every model, and generated samples",
        description="Write OUTDIR/index.html with audio players and spectrograms: COUNT noisy mixtures balanced over "
                    "noise type x SNR (clean, noisy and every model's estimate, with SI-SDR, PESQ and ESTOI), then "
                    "SAMPLES clips generated by each prior named with --generate (Griffin-Lim phase).")
    _add_model_choice(listen)
    listen.add_argument("--manifest", required=True, metavar="MANIFEST", help="noisy mixture manifest (JSONL)")
    listen.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder of the page")
    listen.add_argument("--count", type=int, default=4, metavar="N", help="mixtures on the page (default: 4)")
    listen.add_argument("--generate", action="append", default=[], metavar="NAME",
                        help="also play clips sampled from the prior labelled NAME (repeatable)")
    listen.add_argument("--samples", type=int, default=2, metavar="N",
                        help="generated clips per prior (default: 2)")
    _add_vem_options(listen)
    listen.add_argument("--no-progress", action="store_true", help="no progress bar")
    listen.set_defaults(func=_lazy("speechdvae.evaluate.listen"))

    train = sub.add_parser(
        "train", help="train a speech prior from a preset or a config file",
        description="Train a speech prior. Data come from --data-root (the open corpus layout: "
                    "manifests/speech_{train,valid}.jsonl) or explicit --train/--valid manifests. "
                    "Runs resume exactly with --resume; under `torchrun --nproc_per_node N` training is distributed.")
    train.add_argument("--preset", help="preset name (e.g. vae, dkf, rvae, rvae-causal, srnn-tf, srnn-ss)")
    train.add_argument("--size", default="small", choices=["small", "paper"], help="preset size (default: small)")
    train.add_argument("--config", help="a YAML file with model/train/data sections, instead of a preset")
    train.add_argument("--data-root", default=os.environ.get("SPEECHDVAE_DATA", "data/open"),
                       help="corpus folder built by `speechdvae data open` (default: $SPEECHDVAE_DATA or data/open)")
    train.add_argument("--train", help="training manifest (overrides --data-root)")
    train.add_argument("--valid", help="validation manifest (overrides --data-root)")
    train.add_argument("--cache", help="spectrogram cache folder (default: DATA_ROOT/cache/spectrograms)")
    train.add_argument("-o", "--out", required=True, help="run folder (state, logs, best model)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=5e-4 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    baseline = sub.add_parser("baseline", help="the supervised baseline: an Open-Unmix-style mask estimator",
                              description="The supervised baseline of the SE paper (UMX retrain).")
    baseline_sub = baseline.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    train_baseline = baseline_sub.add_parser(
        "train", help="train the mask estimator on noisy/clean pairs mixed on the fly",
        description="Train the mask estimator on clean training speech mixed on the fly with training noise "
                    "(-5 to 5 dB), choosing the best step on the validation mixtures; the best model is exported "
                    "to RUN_DIR/model, usable by `eval enhance --model` and `enhance --model`. Runs resume exactly "
                    "with --resume.")
    train_baseline.add_argument("-o", "--out", required=True, metavar="RUN_DIR", help="run folder (state, logs, model)")
    train_baseline.add_argument("--data-root", default=os.environ.get("SPEECHDVAE_DATA", "data/open"),
                                help="corpus folder with manifests/{speech,noise}_train.jsonl and "
                                     "mixtures/valid/manifest.jsonl (default: $SPEECHDVAE_DATA or data/open)")
    train_baseline.add_argument("--steps", type=int, metavar="N", help="training steps (default: 2000)")
    train_baseline.add_argument("--batch-size", type=int, metavar="N", help="crops per step (default: 16)")
    train_baseline.add_argument("--hidden-size", type=int, metavar="N", help="hidden size (default: 128)")
    train_baseline.add_argument("--lr", type=float, help="Adam learning rate (default: 1e-3)")
    train_baseline.add_argument("--valid-every", type=int, metavar="N", help="steps between validations (default: 100)")
    train_baseline.add_argument("--valid-limit", type=int, metavar="N",
                                help="validate on N mixtures balanced over noise type x SNR (default: all)")
    train_baseline.add_argument("--seed", type=int, help="seed of the weights and of the mixing (default: 0)")
    train_baseline.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    train_baseline.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    train_baseline.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: 1 on CPU)")
    train_baseline.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_baseline.set_defaults(func=_lazy("speechdvae.train_umx"))
    return parser


def _import_official(args: argparse.Namespace) -> int:
    """`speechdvae import-official`: official .pt + config.ini -> our checkpoint folders."""
    from .checkpoints import CheckpointError
    from .official import OfficialImportError, import_official
    try:
        paths = import_official(args.source, args.out)
    except (OfficialImportError, CheckpointError) as err:
        raise UserError(str(err)) from err
    for path in paths:
        print(path)
    return 0


def _train(args: argparse.Namespace) -> int:
    """`speechdvae train`: resolve and check the configuration, then train."""
    from pathlib import Path

    from .train import ConfigError, Trainer, resolve_config
    root = Path(args.data_root)
    try:
        config = resolve_config(args.preset, args.size,
                                args.train or str(root / "manifests" / "speech_train.jsonl"),
                                args.valid or str(root / "manifests" / "speech_valid.jsonl"),
                                args.cache or str(root / "cache" / "spectrograms"), args.overrides, args.config)
        trainer = Trainer(config, args.out, resume=args.resume, progress=not args.no_progress)
    except ConfigError as err:
        raise UserError(str(err)) from err
    model_dir = trainer.train()
    print(f"best model (epoch {trainer.best_epoch}, validation loss {trainer.best_loss:.4f}): {model_dir}")
    return 0


def _data_scan(args: argparse.Namespace) -> int:
    """`speechdvae data scan`: corpus folder -> one manifest per split."""
    from .audio import AudioError
    from .data import corpora
    from .data.manifest import format_summary, summarize
    options = {"folder": {"split": args.split, "language": args.language},
               "librispeech": {"subsets": args.subsets},
               "voicebank": {"train_set": args.train_set}}.get(args.corpus, {})
    try:
        result = corpora.scan(args.corpus, args.root, **options)
        records = corpora.materialize(result.records, args.materialize) if args.materialize else result.records
        written = corpora.write_manifests(records, args.output, result.skipped)
    except (corpora.CorpusError, AudioError) as err:
        raise UserError(str(err)) from err
    print(format_summary(summarize(records), title=f"{args.corpus} -> {', '.join(map(str, written.values()))}"))
    return 0


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    """The options naming the models an evaluation compares (shared by every `eval` task)."""
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="checkpoint folder to evaluate, labelled NAME in the tables (repeatable)")
    parser.add_argument("--official", metavar="DIR",
                        help="also evaluate the official DVAE-SE checkpoints in DIR (WSJ0 and VoiceBank)")
    parser.add_argument("--official-cache", default="checkpoints/official", metavar="DIR",
                        help="where the official checkpoints are imported, unless already there "
                             "(default: checkpoints/official; GPL-3.0, keep them out of your own releases)")


def _add_vem_options(parser: argparse.ArgumentParser) -> None:
    """The VEM settings options (shared by `enhance` and `eval enhance`); unset ones keep the default
    settings, listed in the README."""
    group = parser.add_argument_group("VEM settings (unset: the default settings)")
    group.add_argument("--official-settings", action="store_true",
                       help="start from the official settings (300 iterations at lr 1e-3, no early stop, "
                            "generated past) instead of the default ones")
    group.add_argument("--iterations", type=int, metavar="N", help="maximum number of VEM iterations")
    group.add_argument("--lr", type=float, help="Adam learning rate of the E-step")
    group.add_argument("--tol", type=float, help="relative loss change that stops an utterance early (0: never)")
    group.add_argument("--nmf-rank", type=int, metavar="K", help="rank of the NMF noise model")
    group.add_argument("--past", choices=("generated", "estimate"),
                       help="past speech read by autoregressive priors: their own generated past (eq. 31) or the "
                            "current clean-power estimate (decodes all frames at once)")
    group.add_argument("--seed", type=int, help="root of every utterance's random streams")


def _lazy(module: str):
    """The `run(args)` of `module`, imported only when the sub-command runs (keeps --help fast)."""
    def run(args: argparse.Namespace) -> int:
        import importlib
        return importlib.import_module(module).run(args)
    return run


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"speechdvae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechdvae: interrupted", file=sys.stderr)
        return 130

