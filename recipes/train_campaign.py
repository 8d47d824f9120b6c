"""The training campaign to convergence: `paper`-size RNN priors and a `medium` LigHT-DVAE on the open corpus,
trained in stages that outlive a working day.

Every RNN prior follows the official DVAE configuration (Adam 1e-3, β 0.01, KL warm-up over 50 epochs, batches of
128 × 50 frames). An epoch of the open corpus is 54 steps (310 with speed perturbation), against about 880 for a
WSJ0 epoch, so the budget is counted in steps rather than epochs: the epoch budget is raised to 3000, and the
official patience of 30 WSJ0 epochs becomes PATIENCE_STEPS = 26,000 steps without a better validation loss, turned
into epochs from the lineage's last log (500 epochs before its first log). With the official 30 epochs, a stage
stopped after 1,600 steps without a better validation loss, while its training loss was still falling; with 500
epochs at 310 steps each, patience had grown to six times the official one.
The RNN priors read raw power, as in the official code: log-compressed input (`model.log_input=true`) lowers the
validation loss much faster but resynthesises speech worse (docs/training_diagnosis.md).

A prior is a lineage of stages NAME, NAME.2, NAME.3, ... A stage resumes exactly from its state in
RUNS_DIR (`--resume`); the state (optimiser included) is never committed, so on a machine without it the lineage
continues from its last committed model (PUBLISHED/NAME[.k]/model, written by `recipes/publish_runs.sh`) as the next
stage: same settings, a fresh optimiser, no second KL warm-up; a stage on a step schedule (LigHT-DVAE) goes on from
its predecessor's last logged step (`train.start_step`), so the schedule and its step budget are not started again.
A lineage whose last stage stopped early or used up its step budget is done, and so is one ended on its flat curve
(ENDED).
Settings that change along a lineage (LANES) take effect at the stage they name; to close a running stage early
and start the next one with them, publish it and delete its run folder's state.pt.

    python recipes/train_campaign.py [--runs runs/paper] [--published checkpoints/open-paper] [--data data/open] \
        [--only LINEAGE ...]

Lanes run side by side, one thread each; the runs of a lane one after the other. Logs: RUNS_DIR/STAGE.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EPOCHS = 3000  # the epoch budget of every stage; patience ends them (module docstring)
# lanes of (lineage, preset, {first stage: overrides from that stage on})
# The DKF's gradient norm is heavy-tailed (paper DKF at epoch 231, 40 training batches: median 3.2e3, 90th
# percentile 1.3e4, max 5.6e4) and its first stage blew up four times in 233 epochs (validation loss from 1114 to
# 1800 at epoch 233), each costing 20-40 epochs to recover: its later stages clip the global norm at 1e4.
# Stage 2 of the DKF gained 0.1 per epoch at its end (1028.6 at its epoch 80, 1026.0 at 104): stage 3 lowers the
# learning rate. A branch from the same model with frequency-warped sequences (`dkf-warp`, `train.warp=0.1`, same
# settings) reached 990.4 at its epoch 20, then its validation loss stayed at 1100-1220 while its training loss kept
# falling; it was stopped. Stage 3 showed jumps of the same size on some epochs: they came from one validation file
# that is not speech (removed from the corpus since; docs/training_diagnosis.md, section 6).
# From the stages that started after the corpus gained the fillets-ng dialogue, every prior trains with a white-noise
# floor at -60 dBFS (`train.floor_db`): 7 % of the training bins lie below -80 dBFS (codec holes, digital silence;
# 39 % in the Dutch dialogue), and a floor made the small DKF fit an unseen speaker's loud bins 11 % better and the
# held-out noise much worse (docs/training_diagnosis.md, section 7).
FLOOR = ["train.floor_db=-60"]
# Stage 4 of the DKF fitted held-out files of its training voices as well as the authors' WSJ0 DKF does, an unseen
# voice 1.4 times worse (docs/training_diagnosis.md, section 8): from stage 5 on it trains with speed perturbation
# (each file also at 0.9 and 1.1 times its speed, counted as voices of their own), the usual remedy for few voices.
# In 9 epochs it fitted the unseen voice 6.4 % better, where 48 epochs of stage 4 had gained 1.3 % (section 9): the
# RVAE takes it from its stage 3, the LigHT-DVAE from its first.
SPEEDS = ["train.speeds=[0.9,1.0,1.1]"]
# The validation loss of held-out files of the training voices kept falling while an unseen voice was fitted worse
# (the DKF's stage 5: validation 543.8 -> 529.4 from its epoch 8 to 28, unseen voice 665.3 -> 687.7;
# docs/training_diagnosis.md, section 10): from the stages that began after it, validation holds both
# (`speech_valid_all.jsonl`), so the best model is the one that fits known and unseen voices best together.
VALID_ALL = ["data.valid={data}/manifests/speech_valid_all.jsonl"]
# The RVAE's stage 5 (Adam at the official 1e-3) went 10 epochs without passing its epoch 15 (493.3) while its
# validation loss swung between 494.6 and 548.0 from one epoch to the next and its training loss fell by about 0.5
# per epoch: from its stage 6 it trains at 3e-4, as the DKF did from its stage 3.
SLOWER = ["train.lr=0.0003"]
# LigHT-DVAE follows its paper's schedule instead (AdamW, warm-up + cosine decay ending at max_steps) at the
# `medium` size of presets/light.yaml: the largest whose ~29,000 steps fit in a budget of 12 CPU-hours. Its
# stage ends with the schedule; it trains with the floor and the speeds from its first stage (`light-speeds`; the
# lineage `light-medium`, without the speeds, was stopped after 2,255 of its steps for it, checkpoints/open-paper).
# The LigHT-DVAE trained on 50-frame sequences fits frames past the 50th much worse (stage 3 at its epoch 6: 13.4 dB of
# resynthesis with the true past on utterances under 0.8 s, 0.5 dB on those over 2.4 s; docs/training_diagnosis.md,
# section 13): from its stage 4 it trains on the paper's 150 frames (2.4 s; WSJ0 setting) at the same frames per step
# (21 x 150 against 64 x 50), each speaker's files cut as one stream, since 70 % of the training files are shorter.
LONGER = ["train.seq_len=150", "train.batch_size=21", "train.join_speakers=true"]
# SRNN takes the RVAE's core when that lineage ends, at the `paper` size with the data settings the other
# priors reached (floor, speeds, known and unseen voices in validation), in the SE paper's two phases (its V-E). Stage
# 1 trains with teacher forcing (SRNN-TF, Adam 2e-3) for TEACHER_FORCED's 60 epochs (18,600 steps, about 21 WSJ0
# epochs; the paper trains it to convergence first, which would hold the core for days). From stage 2 it fine-tunes
# with scheduled sampling (SRNN-SS, Adam 1e-3): its own past fed back with probability 0.2, 0.4, ... 1, one step
# every 10 epochs (3,100 steps, 15,500 in all; the paper's 50 WSJ0 epochs per step would be 44,000 here), then on
# until its patience runs out; its best model is chosen in generation mode only, once the feedback is 1.
# Stage 1 ends on its epoch budget, not on its patience, so a later run of the campaign starts stage 2 once stage 1
# is published and its state deleted.
TEACHER_FORCED = ["train.epochs=60"]
SCHEDULED = [
    f"train.epochs={EPOCHS}",  # the campaign's own budget again
    "train.lr=0.001",
    "train.ss_start_epoch=0",
    "train.ss_step=0.2",
    "train.ss_epochs_per_step=10",
]
LANES: list[list[tuple[str, str, str, dict[int, list[str]]]]] = [
    [
        (
            "dkf",
            "dkf",
            "paper",
            {2: ["train.grad_clip=10000"], 3: SLOWER, 4: FLOOR, 5: SPEEDS, 6: VALID_ALL},
        )
    ],
    [
        ("rvae", "rvae", "paper", {2: FLOOR, 3: SPEEDS, 4: VALID_ALL, 6: SLOWER}),
        ("srnn", "srnn-tf", "paper", {1: FLOOR + SPEEDS + VALID_ALL + TEACHER_FORCED, 2: SCHEDULED}),
        ("vae", "vae", "paper", {2: FLOOR + VALID_ALL}),
    ],
    [("light-speeds", "light", "medium", {1: FLOOR + SPEEDS, 2: VALID_ALL, 4: LONGER})],
]
# Lineages ended on a flat learning curve before their patience ran out, with the stage they ended at. A stage that
# starts on a machine without its predecessor's state begins with a fresh optimiser and a fresh patience count, so
# the patience of a lineage that trains on leftover CPU never runs out. The DKF's stage 6 went 3,410 steps (12
# epochs) without passing its epoch 17 (576.8), its validation loss falling by 0.9 ± 0.7 per 1,000 steps over the
# stage; it resynthesises at 4.5 dB and its enhancement gets worse after 30 Langevin iterations
# (docs/training_diagnosis.md, section 11). The RVAE's stage 7 fell by 0.8 ± 0.2 per 1,000 steps over its 35 epochs
# and by 0.0 ± 0.8 over its last 17 (5,890 to 10,850 steps) while its training loss kept falling (0.6 ± 0.2), and
# its later epochs enhance as the shipped epoch does (section 12).
ENDED = {"dkf": 6, "rvae": 7}
PATIENCE_STEPS = 26_000
EPOCH_STEPS = 54  # an epoch of the open corpus without speed perturbation, until a log tells


def stage_name(lineage: str, k: int) -> str:
    return lineage if k == 1 else f"{lineage}.{k}"


def last_stage(folder: Path, lineage: str, marker: str) -> int:
    """The highest k whose stage folder in `folder` holds `marker` (0 if none); earlier stages may lack it (a
    finished stage's state can be deleted)."""
    stages = [1] + [
        int(p.name.rsplit(".", 1)[1]) for p in folder.glob(f"{lineage}.*") if p.name.rsplit(".", 1)[1].isdigit()
    ]
    return max((k for k in stages if (folder / stage_name(lineage, k) / marker).exists()), default=0)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def max_steps(run: Path) -> int | None:
    """The step budget of a published stage's schedule (None: no step schedule)."""
    config = json.loads((run / "model" / "config.json").read_text())
    return config["metadata"]["training"]["train"].get("max_steps")


def epoch_steps(run: Path) -> int | None:
    """Steps per epoch in a stage's log (None: fewer than two epochs logged)."""
    rows = log_rows(run) if (run / "log.jsonl").exists() else []
    if len(rows) < 2:
        return None
    return round((rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["epoch"] - rows[0]["epoch"]))


def patience_epochs(steps: int | None) -> int:
    """PATIENCE_STEPS in epochs of `steps` steps (EPOCH_STEPS when unknown), rounded up."""
    return -(-PATIENCE_STEPS // (steps or EPOCH_STEPS))


def finished(run: Path) -> bool:
    """Whether a published stage ended its lineage: its log shows PATIENCE_STEPS steps without improvement after its
    best epoch, or the step budget of its schedule (`max_steps`) used up."""
    rows, budget = log_rows(run), max_steps(run)
    best = next((r for r in reversed(rows) if r["best"]), rows[0])
    return rows[-1]["step"] - best["step"] >= PATIENCE_STEPS or (budget is not None and rows[-1]["step"] >= budget)


def stage_command(
    lineage: str, preset: str, size: str, overrides: dict[int, list[str]], runs: Path, published: Path, data: Path
) -> tuple[str, list[str]] | None:
    """The stage to run next for a lineage and its `speechdvae train` command; None when the lineage is done."""
    committed = last_stage(published, lineage, "model")
    running = last_stage(runs, lineage, "state.pt")
    if lineage in ENDED and committed >= ENDED[lineage]:
        return None
    if running and running >= committed:
        k, extra = running, ["--resume"]
    elif committed and finished(published / stage_name(lineage, committed)):
        return None
    else:
        k, extra = committed + 1, []
    name = stage_name(lineage, k)
    previous = published / stage_name(lineage, k - 1) if k > 1 else None
    steps = epoch_steps(runs / name) or (previous and epoch_steps(previous))
    settings = [f"train.epochs={EPOCHS}", f"train.early_stop_patience={patience_epochs(steps)}"] + [
        setting.format(data=data) for first, more in sorted(overrides.items()) if first <= k for setting in more
    ]
    if previous:  # a later stage starts from the previous one's committed model (the same settings when resumed)
        settings += [f"train.init_from={previous / 'model'}", "train.kl_warmup_epochs=0"]
        if max_steps(previous) is not None:  # and goes on with its learning-rate schedule and step budget
            settings.append(f"train.start_step={log_rows(previous)[-1]['step']}")
    command = [
        "speechdvae",
        "train",
        "--preset",
        preset,
        "--size",
        size,
        "--data-root",
        str(data),
        "-o",
        str(runs / name),
        "--no-progress",
        *extra,
    ]
    for setting in settings:
        command += ["--set", setting]
    return name, command


def run_lane(lane: list[tuple[str, str, str, dict[int, list[str]]]], args: argparse.Namespace) -> None:
    for lineage, preset, size, overrides in lane:
        stage = stage_command(lineage, preset, size, overrides, args.runs, args.published, args.data)
        if stage is None:
            print(f"{lineage}: finished, done", flush=True)
            continue
        name, command = stage
        print(f"{name}: {' '.join(command)}", flush=True)
        with open(args.runs / f"{name}.log", "a") as log:
            code = subprocess.call(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
        print(f"{name}: exit {code}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/paper"), help="run folders (default: runs/paper)")
    parser.add_argument(
        "--published",
        type=Path,
        default=Path("checkpoints/open-paper"),
        help="committed stages (default: checkpoints/open-paper)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/open"), help="open corpus (default: data/open)")
    parser.add_argument("--only", nargs="+", metavar="LINEAGE", help="run these lineages only (default: all)")
    args = parser.parse_args()
    lineages = {entry[0] for lane in LANES for entry in lane}
    if args.only and not set(args.only) <= lineages:
        parser.error(f"unknown lineage(s) {sorted(set(args.only) - lineages)}; known: {sorted(lineages)}")
    lanes = [[entry for entry in lane if not args.only or entry[0] in args.only] for lane in LANES]
    lanes = [lane for lane in lanes if lane]
    args.runs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(lanes)) as pool:
        list(pool.map(lambda lane: run_lane(lane, args), lanes))


if __name__ == "__main__":
    main()
