"""Speech-enhancement speed: real-time factor (processing seconds per second of audio) of each prior under
the official VEM settings one utterance at a time (one process, one thread) and under the default settings,
batched, one at a time and over all cores.

    python benchmarks/bench_enhance.py --manifest data/open/mixtures/valid/manifest.jsonl --limit 8 \
        --model default=default --model RVAE=checkpoints/official/official-wsj-rvae

Every run is a full `eval enhance` (read, VEM, iSTFT, scoring) into a fresh temporary folder, so the median
SI-SDR of each setting comes with its time, and with the median over mixtures of its SI-SDR minus the first
setting's (the official one's) on the same mixture, ± 1.57·IQR/√n. `--iterations N` adds the default settings with
N iterations. `--profile vem langevin` instead shows where the time of each engine's default settings goes on the
first mixture (the phases labelled in `speechdvae.enhancement.vem` and `.langevin`), and `--past-cost` times
instead one E-step (forward and backward) of each autoregressive prior on the first mixture with each past:
generated frame by frame under autograd, generated in two passes (as the VEM does), estimated; `--finetune-cost`
times instead 10 VEM iterations (each prior's own settings otherwise) on the first mixture fine-tuning the whole
encoder and fine-tuning its heads only, in alternating rounds; `--precision-cost` the same in float32 and with the
prior's passes under bf16 autocast (`--precision bfloat16`).
`--files [PATH ...]` instead times `speechdvae enhance` (20-s chunks) on these recordings, or without paths on the
noisy files of the `--manifest` mixtures, with one worker and with `--cores` workers, which share the files and the
chunks of long ones, and checks that both write the same samples: the real-time factor users get, start-up included.
Each `--setting` is a set of `speechdvae enhance` inference options timed for every prior (default: the prior's own
settings); on mixtures the outputs are also scored against the clean references (median ΔSI-SDR and ΔESTOI over
the noisy input), so speed and quality come from one run. Prints Markdown tables.

    python benchmarks/bench_enhance.py --files ten-minutes.wav --model default=default
    python benchmarks/bench_enhance.py --files --manifest data/open/mixtures/valid_realistic/manifest.jsonl \
        --limit 24 --model default=default --setting= --setting='--iterations 30' --setting='--inference vem'
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechdvae import stft
from speechdvae.checkpoints import from_pretrained
from speechdvae.cli.options import add_inference_options, inference_request
from speechdvae.enhancement import vem
from speechdvae.enhancement.common import PRECISIONS, computes_bf16
from speechdvae.enhancement.enhancer import Inference, InferenceRequest, enhance_waves
from speechdvae.enhancement.files import collect_jobs, enhance_files
from speechdvae.errors import UserError
from speechdvae.evaluate.enhancement import UTTERANCES_NAME, evaluate_enhancement
from speechdvae.evaluate.metrics import estoi, median_ci, si_sdr
from speechdvae.evaluate.mixtures import balanced_subset, read_mixtures, read_pair
from speechdvae.models import DVAE


@dataclass(frozen=True)
class Setting:
    name: str
    inference: Inference
    batch_size: int
    workers: int


# Batches per process in the multi-process setting: enough for the workers to finish close together.
BATCHES_PER_PROCESS = 4


def settings(cores: int, limit: int, iterations: list[int]) -> list[Setting]:
    official, default = vem.VEMConfig.official(), InferenceRequest()  # default: each prior's own settings
    return [
        Setting("official, one at a time", official, 1, 1),
        Setting("default, one at a time", default, 1, 1),
        Setting(f"default, batches of {limit}", default, limit, 1),
        Setting(f"default, {cores} processes", default, math.ceil(limit / (BATCHES_PER_PROCESS * cores)), cores),
        *(
            Setting(
                f"default with {n} iterations, batches of {limit}",
                InferenceRequest(settings={"niter": n}),
                limit,
                1,
            )
            for n in iterations
        ),
    ]


def load(spec: str) -> tuple[str, DVAE]:
    label, _, path = spec.partition("=")
    path = path or label
    return label, from_pretrained(path, "cpu")


def timed_run(model: DVAE, records: list[dict], setting: Setting) -> tuple[float, dict, dict[str, float]]:
    """Wall time, summary row and SI-SDR of each mixture (by id) of one evaluation of `model` in a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = evaluate_enhancement(
            {"prior": model},
            records,
            out,
            inference=setting.inference,
            batch_size=setting.batch_size,
            workers=setting.workers,
            progress=False,
        )
        wall = time.perf_counter() - start
        with open(Path(out) / UTTERANCES_NAME, newline="") as f:
            scores = {row["id"]: float(row["si_sdr"] or "nan") for row in csv.DictReader(f) if row["model"] == "prior"}
        return wall, summary[1], scores


# the phases labelled in `speechdvae.enhancement.vem` and `.langevin`
PHASES = {
    "vem": ("E-step forward", "E-step backward", "E-step Adam", "M-step draw of v_s", "M-step NMF and gains", "loss"),
    "langevin": ("Langevin forward", "Langevin backward", "Langevin warm-up decoding", "M-step NMF and gains", "loss"),
}


def profile(model: DVAE, record: dict, engine: str) -> dict[str, float]:
    """Share of the wall time of one run of `engine` with its default settings spent in each labelled phase (the
    rest: STFT, iSTFT and bookkeeping)."""
    noisy = read_pair(record)[0]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        enhance_waves(model.enhancer(InferenceRequest(engine)), [noisy], [record["id"]])
        wall = time.perf_counter() - start
    phases = PHASES[engine]
    totals = {event.key: event.cpu_time_total / 1e6 for event in prof.key_averages() if event.key in phases}
    shares = {phase: totals.get(phase, 0.0) / wall for phase in phases}
    return {**shares, "other": 1.0 - sum(shares.values())}


def estep_seconds(model: DVAE, power: torch.Tensor, past: str, repeats: int = 3) -> float:
    """Median wall time of one E-step forward and backward through `model` on `power` (1, T, F) with `past`:
    "one pass" (decode with feedback 1 under autograd), "two passes" (the VEM's generated past) or "estimate"
    (the VEM's estimated past, here the noisy power of the first iteration)."""
    utterance = vem.Utterance(model, power[0], 0, 0, "generated" if past == "two passes" else "estimate")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if past == "one pass":
            post = utterance.model.infer(power)
            dec = utterance.model.decode(post, None, feedback=1.0)
        else:
            dec = utterance.forward(1, True)[1]
        torch.autograd.grad(dec.y_logvar.sum() + dec.prior_logvar.sum(), utterance.params, allow_unused=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def vem_seconds(model: DVAE, X: torch.Tensor, name: str, values: tuple, rounds: int = 3, iterations: int = 10) -> dict:
    """Median wall time of `iterations` VEM iterations on X (T, F) (the prior's own settings otherwise) with each of
    `values` of the VEM setting `name`, in alternating rounds."""
    base = replace(InferenceRequest("vem").for_prior(model), niter=iterations)
    times: dict = {value: [] for value in values}
    for _ in range(rounds):
        for value in values:
            start = time.perf_counter()
            vem.enhance_spectrogram(model, X, replace(base, **{name: value}))
            times[value].append(time.perf_counter() - start)
    return {value: sorted(t)[len(t) // 2] for value, t in times.items()}


def files_run(
    model: DVAE, paths: list[str], cores: int, inference: Inference
) -> tuple[list[tuple[int, float]], list[np.ndarray]]:
    """(workers, wall time) of enhancing the files at `paths` with 1 and with `cores` workers into fresh folders, and
    the outputs in the order of `paths`; an error if the two runs wrote different samples."""
    walls, outputs = [], []
    with tempfile.TemporaryDirectory() as out:
        for run, workers in enumerate((1, cores)):
            folder = Path(out) / str(run)
            targets = {job.source: job.target for job in collect_jobs(paths, folder)}
            start = time.perf_counter()
            report = enhance_files(paths, folder, model, inference, progress=False, workers=workers)
            walls.append((workers, time.perf_counter() - start))
            if report.failed:
                raise SystemExit(report.failed[0]["error"])
            outputs.append([sf.read(targets[Path(path)])[0] for path in paths])
    for one, many in zip(*outputs):
        if not np.array_equal(one, many):
            raise SystemExit(f"{cores} workers wrote other samples than one")
    return walls, outputs[0]


SCORES = (si_sdr, estoi)


def references(records: list[dict]) -> list[tuple[np.ndarray, list[float]]]:
    """Each mixture's clean reference and the noisy input's scores against it (computed once for every run)."""
    pairs = [read_pair(record) for record in records]
    return [(clean, [metric(clean, noisy) for metric in SCORES]) for noisy, clean in pairs]


def improvements(refs: list[tuple[np.ndarray, list[float]]], outputs: list[np.ndarray]) -> tuple[float, float]:
    """Median over mixtures of the outputs' SI-SDR and ESTOI minus the noisy inputs', against the clean references
    (over the finite values: ESTOI is undefined on too little speech)."""
    gains = [
        [metric(clean, output) - before for metric, before in zip(SCORES, noisy)]
        for (clean, noisy), output in zip(refs, outputs)
    ]
    return tuple(float(np.nanmedian(column)) for column in zip(*gains))


def parse_setting(options: str) -> InferenceRequest:
    """The inference that `speechdvae enhance` options (e.g. "--inference vem --iterations 30") ask for."""
    parser = argparse.ArgumentParser(prog="--setting", add_help=False)
    add_inference_options(parser)
    return inference_request(parser.parse_args(shlex.split(options)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="mixtures to time (required unless --files PATH...)")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH|default")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--iterations",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also time the default settings with N iterations (repeatable)",
    )
    parser.add_argument(
        "--profile",
        nargs="+",
        choices=sorted(PHASES),
        metavar="ENGINE",
        help="only profile the phases of these engines (vem, langevin) with their default settings",
    )
    parser.add_argument("--past-cost", action="store_true", help="only time one E-step with each past")
    parser.add_argument("--finetune-cost", action="store_true", help="only time VEM iterations per fine-tuned part")
    parser.add_argument("--precision-cost", action="store_true", help="only time VEM iterations per precision")
    parser.add_argument(
        "--files",
        nargs="*",
        metavar="PATH",
        help="only time `speechdvae enhance` on these recordings (none: the mixtures' noisy files) on 1 and all cores",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="with --files: `speechdvae enhance` inference options to time, e.g. --setting='--inference vem' "
        "(repeatable; an empty one is the prior's own settings; default: only those)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.files or args.manifest):
        parser.error("give --manifest, or --files with recordings")
    if args.setting and args.files is None:
        parser.error("--setting goes with --files")
    try:
        requests = {options: parse_setting(options) for options in args.setting or [""]}
    except UserError as err:
        parser.error(str(err))
    records = balanced_subset(read_mixtures(args.manifest), args.limit) if args.manifest else []
    if args.files is not None:
        refs = [] if args.files else references(records)  # mixtures: score the outputs too
        paths = args.files or [r["path"] for r in records]
        what = f"`{paths[0]}`" if len(paths) == 1 else f"{len(paths)} recordings"
        seconds = sum(sf.info(path).duration for path in paths)
        print(f"`speechdvae enhance` on {what} ({seconds:.1f} s of audio), torch {torch.__version__}\n")
        quality = " median ΔSI-SDR (dB) | median ΔESTOI |" if refs else ""
        print(f"| prior | options | engine, iterations | RTF, 1 core | RTF, {args.cores} cores | speed-up |{quality}")
        print("|---|---|---|---:|---:|---:|" + "---:|" * (2 * bool(refs)))
        for spec in args.model:
            label, model = load(spec)
            for options, request in requests.items():
                config = request.for_prior(model)
                walls, outputs = files_run(model, paths, args.cores, request)
                (_, one), (_, many) = walls
                shown = f"`{options}`" if options else "its own"
                row = (
                    f"| {label} | {shown} | {config.engine}, {config.niter} | {one / seconds:.2f} | "
                    f"{many / seconds:.2f} | {one / many:.2f}x |"
                )
                if refs:
                    si_sdr_gain, estoi_gain = improvements(refs, outputs)
                    row += f" {si_sdr_gain:+.2f} | {estoi_gain:+.3f} |"
                print(row, flush=True)
        return
    seconds = sum(len(read_pair(r)[0]) for r in records) / 16000
    print(
        f"{len(records)} mixtures of `{args.manifest}` ({seconds:.1f} s of audio), {args.cores} cores, "
        f"torch {torch.__version__}\n"
    )
    if args.profile:
        for engine in args.profile:
            print(f"\n| prior ({engine}) | " + " | ".join(PHASES[engine]) + " | other |")
            print("|---|" + "---:|" * (len(PHASES[engine]) + 1))
            for spec in args.model:
                label, model = load(spec)
                shares = profile(model, records[0], engine)
                print(f"| {label} | " + " | ".join(f"{100 * share:.0f} %" for share in shares.values()) + " |")
        return
    if args.past_cost:
        power = stft.power_spectrogram(torch.from_numpy(read_pair(records[0])[0]))[None]
        print(f"One E-step (forward + backward) on the first mixture ({power.shape[1]} frames), median of 3:\n")
        print("| prior | generated, one pass (s) | generated, two passes (s) | estimate (s) | one pass / two passes |")
        print("|---|---:|---:|---:|---:|")
        for spec in args.model:
            label, model = load(spec)
            if model.autoregressive:
                one, two, est = (estep_seconds(model, power, past) for past in ("one pass", "two passes", "estimate"))
                print(f"| {label} | {one:.3f} | {two:.3f} | {est:.3f} | {one / two:.2f} |", flush=True)
        return
    if args.precision_cost:
        X = stft.stft(torch.from_numpy(read_pair(records[0])[0]))
        native = "with" if computes_bf16(torch.device("cpu")) else "without"
        print(
            f"10 VEM iterations on the first mixture ({X.shape[0]} frames), CPU {native} bf16 arithmetic, median of "
            "3 alternating rounds:\n"
        )
        print("| prior | float32 (s) | bf16 autocast (s) | bf16 / float32 |")
        print("|---|---:|---:|---:|")
        for spec in args.model:
            label, model = load(spec)
            walls = vem_seconds(model, X, "precision", PRECISIONS)
            print(
                f"| {label} | {walls['float32']:.2f} | {walls['bfloat16']:.2f} | "
                f"{walls['bfloat16'] / walls['float32']:.2f} |",
                flush=True,
            )
        return
    if args.finetune_cost:
        X = stft.stft(torch.from_numpy(read_pair(records[0])[0]))
        print(f"10 VEM iterations on the first mixture ({X.shape[0]} frames), median of 3 alternating rounds:\n")
        print("| prior | tuned parameters, encoder | heads | encoder (s) | heads (s) | heads / encoder |")
        print("|---|---:|---:|---:|---:|---:|")
        for spec in args.model:
            label, model = load(spec)
            counts = [sum(p.numel() for p in vem.tuned_parameters(model, part)) for part in vem.FINETUNE]
            walls = vem_seconds(model, X, "finetune", vem.FINETUNE)
            print(
                f"| {label} | {counts[0]:,} | {counts[1]:,} | {walls['encoder']:.2f} | {walls['heads']:.2f} | "
                f"{walls['heads'] / walls['encoder']:.2f} |",
                flush=True,
            )
        return
    print(
        "| prior | setting | wall time (s) | RTF | speed-up | median SI-SDR (dB) | median paired Δ (dB) | "
        "mean iterations |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.model:
        label, model = load(spec)
        reference = None
        for setting in settings(args.cores, len(records), args.iterations):
            wall, row, scores = timed_run(model, records, setting)
            reference = reference or (wall, scores)
            delta, half_width = median_ci(scores[i] - reference[1][i] for i in scores)
            print(
                f"| {label} | {setting.name} | {wall:.1f} | {wall / seconds:.1f} | {reference[0] / wall:.1f}x | "
                f"{row['si_sdr'].median:.2f} | {delta:+.2f} ± {half_width:.2f} | {row['mean_iterations']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
